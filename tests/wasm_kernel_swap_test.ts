/**
 * core/kernels/wasm_kernel_swap.ts: a kernel of ours replaces tfjs-wasm's, hands back the calls it
 * declines to the kernel it replaced, and restore() puts the original back.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { WasmKernelSwap } from "../core/kernels/wasm_kernel_swap.ts";

await initBackend("wasm", { threads: 1 });

Deno.test("WasmKernelSwap: ours serves what it takes, the replaced kernel the rest; restore puts it back", () => {
  const original = tf.getKernel("Neg", "wasm");
  const swap = new WasmKernelSwap();
  let served = 0;
  // ours takes 1-D tensors only, and answers with ones to be told apart
  swap.install({
    Neg: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      if (x.shape.length !== 1) return null;
      const b = backend as {
        makeOutput(s: number[], d: string): tf.TensorInfo;
        typedArrayFromHeap(i: tf.TensorInfo): Float32Array;
      };
      const out = b.makeOutput(x.shape, "float32");
      b.typedArrayFromHeap(out).fill(1);
      return out;
    },
  }, () => served++);
  try {
    assert.ok(swap.active);
    assert.deepEqual(Array.from(tf.neg(tf.tensor1d([2, 3])).dataSync()), [1, 1]);
    assert.deepEqual(Array.from(tf.neg(tf.tensor2d([[2, 3]])).dataSync()), [-2, -3]);
    assert.equal(served, 1);
    // a second install of a replaced name changes nothing
    swap.install({ Neg: () => null });
    assert.deepEqual(Array.from(tf.neg(tf.tensor1d([2])).dataSync()), [1]);
  } finally {
    swap.restore();
  }
  assert.equal(swap.active, false);
  assert.equal(tf.getKernel("Neg", "wasm"), original);
  assert.deepEqual(Array.from(tf.neg(tf.tensor1d([2, 3])).dataSync()), [-2, -3]);
});
