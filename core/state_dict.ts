/**
 * A framework-neutral state dict: tensor name → shape and float32 values, in PyTorch's layout
 * (convolution weights OIHW), so names and shapes map one to one onto BasicSR checkpoints.
 * @module
 */

/** One tensor of a state dict, always float32 in memory. */
export interface TensorData {
  shape: number[];
  data: Float32Array;
}

/** Tensor name → tensor, in insertion order. */
export type StateDict = Map<string, TensorData>;

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws unless `a` and `b` hold the same names with the same shapes. */
export function assertSameLayout(a: StateDict, b: StateDict): void {
  const missing = [...a.keys()].filter((k) => !b.has(k));
  const extra = [...b.keys()].filter((k) => !a.has(k));
  if (missing.length || extra.length) {
    throw new Error(
      `state dicts differ: missing [${missing.slice(0, 5).join(", ")}], unexpected [${
        extra.slice(0, 5).join(", ")
      }]`,
    );
  }
  for (const [k, t] of a) {
    const u = b.get(k)!;
    if (t.shape.join(",") !== u.shape.join(",")) {
      throw new Error(`${k}: shape [${t.shape}] vs [${u.shape}]`);
    }
  }
}
