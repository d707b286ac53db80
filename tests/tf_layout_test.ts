import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { countElements, readStateDict, tfToTorch, torchToTf } from "../core/tf_layout.ts";

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
