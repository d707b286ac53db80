/**
 * Moving weights between PyTorch's layout (state dicts, files) and TF's (tfjs variables): convs
 * OIHW ↔ HWIO, linear [out, in] ↔ [in, out]; vectors as they are. Shared by the architectures.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { numel, type StateDict } from "./state_dict.ts";

/** A PyTorch-layout tensor in TF layout (a new tensor). */
export function torchToTf(t: tf.Tensor): tf.Tensor {
  if (t.rank === 4) return tf.transpose(t, [2, 3, 1, 0]);
  if (t.rank === 2) return tf.transpose(t);
  return t.clone();
}

/** A TF-layout tensor in PyTorch layout (a new tensor). */
export function tfToTorch(t: tf.Tensor): tf.Tensor {
  if (t.rank === 4) return tf.transpose(t, [3, 2, 0, 1]);
  if (t.rank === 2) return tf.transpose(t);
  return t.clone();
}

/**
 * A PyTorch conv weight (OIHW) in TF layout (HWIO), on the host, into `out` if given: for consumers
 * that never need a tfjs tensor of it (the CPU kernels, VGG's weights before they are uploaded).
 */
export function oihwToHwio(
  data: Float32Array,
  shape: readonly number[],
  out = new Float32Array(data.length),
): Float32Array {
  const [cout, cin, kh, kw] = shape, taps = kh * kw;
  for (let o = 0; o < cout; o++) {
    for (let i = 0; i < cin; i++) {
      for (let t = 0; t < taps; t++) out[(t * cin + i) * cout + o] = data[(o * cin + i) * taps + t];
    }
  }
  return out;
}

/** Reads TF-layout tensors, in the given order, into a PyTorch-layout state dict. */
export async function readStateDict(entries: Iterable<[string, tf.Tensor]>): Promise<StateDict> {
  const sd: StateDict = new Map();
  for (const [name, v] of entries) {
    const t = tfToTorch(v);
    sd.set(name, { shape: t.shape, data: (await t.data()) as Float32Array });
    t.dispose();
  }
  return sd;
}

/** Total number of elements of some tensors. */
export function countElements(tensors: Iterable<tf.Tensor>): number {
  let n = 0;
  for (const t of tensors) n += numel(t.shape);
  return n;
}
