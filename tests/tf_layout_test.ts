import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { countElements, oihwToHwio, readStateDict, tfToTorch, torchToTf } from "../core/tf_layout.ts";

await tf.setBackend("cpu");

Deno.test("torchToTf/tfToTorch: conv OIHW ↔ HWIO, linear transposed, vectors kept; round trip exact", async () => {
  const conv = tf.tensor(Array.from({ length: 2 * 3 * 3 * 3 }, (_, i) => i), [2, 3, 3, 3]); // O=2 I=3
  const hwio = torchToTf(conv);
  assert.deepEqual(hwio.shape, [3, 3, 3, 2]);
  // weight[o=1, i=2, h=0, w=1] sits at [h, w, i, o]
  assert.equal((await hwio.array() as number[][][][])[0][1][2][1], 1 * 27 + 2 * 9 + 0 * 3 + 1);
  const lin = tf.tensor([[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(torchToTf(lin).shape, [3, 2]);
  assert.deepEqual(torchToTf(tf.tensor([1, 2])).shape, [2]);
  assert.deepEqual(await tfToTorch(hwio).data(), await conv.data());
  tf.dispose([conv, hwio, lin]);
});

Deno.test("oihwToHwio: the host transpose is torchToTf's, for 3x3, 4x4 and 1x1 filters", async () => {
  for (const shape of [[5, 3, 3, 3], [2, 7, 4, 4], [4, 6, 1, 1]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({ length: n }, (_, i) => i * 0.5 - 3);
    const want = torchToTf(tf.tensor(data, shape));
    assert.deepEqual(oihwToHwio(data, shape), await want.data(), `[${shape}]`);
    want.dispose();
  }
});

Deno.test("readStateDict keeps order and PyTorch layout; countElements sums sizes; nothing leaks", async () => {
  const before = tf.memory().numTensors;
  const w = tf.zeros([3, 3, 4, 8]), b = tf.ones([8]);
  const sd = await readStateDict([["conv.weight", w], ["conv.bias", b]]);
  assert.deepEqual([...sd.keys()], ["conv.weight", "conv.bias"]);
  assert.deepEqual(sd.get("conv.weight")!.shape, [8, 4, 3, 3]);
  assert.equal(sd.get("conv.bias")!.data[7], 1);
  assert.equal(countElements([w, b]), 3 * 3 * 4 * 8 + 8);
  tf.dispose([w, b]);
  assert.equal(tf.memory().numTensors, before);
});
