import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { chunkedChannelConcat } from "../core/channel_concat.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";

await initBackend("wasm", { threads: 2 });

Deno.test("chunkedChannelConcat equals tf.concat at every growth step (batch 2, non-square)", () => {
  for (const [n, h, w, c, g] of [[2, 5, 7, 64, 32], [1, 3, 4, 6, 2], [1, 2, 2, 4, 4]]) {
    tf.tidy(() => {
      const x = tf.randomUniform([n, h, w, c], -1, 1, "float32", 1) as tf.Tensor4D;
      const feats = [x];
      const cat = chunkedChannelConcat(x, feats, g);
      assert.equal(cat(), x);
      for (let k = 1; k <= 4; k++) {
        feats.push(tf.randomUniform([n, h, w, g], -1, 1, "float32", 1 + k) as tf.Tensor4D);
        const got = cat();
        const want = tf.concat(feats, 3);
        assert.deepEqual(got.shape, want.shape);
        assert.deepEqual(got.dataSync(), want.dataSync());
      }
    });
  }
});

Deno.test("chunkedChannelConcat refuses channels that are not whole chunks, and wrong features", () => {
  tf.tidy(() => {
    const x = tf.zeros([1, 2, 2, 6]) as tf.Tensor4D;
    assert.throws(() => chunkedChannelConcat(x, [x], 4), /not chunks of 4/);
    const feats = [x, tf.zeros([1, 2, 2, 3]) as tf.Tensor4D];
    assert.throws(() => chunkedChannelConcat(x, feats, 2)(), /feature 1 has shape/);
  });
});

Deno.test("RRDBNet on wasm: the inference path (chunked concats) matches the unfused ops within 1e-5", () => {
  const config = { numInCh: 3, numOutCh: 3, scale: 4 as const, numFeat: 64, numBlock: 2, numGrowCh: 32 };
  const infer = new RRDBNet(config, { seed: 3 });
  const ops = new RRDBNet(config, { seed: 3, trainable: true });
  const before = tf.memory().numTensors;
  try {
    tf.tidy(() => {
      const x = tf.randomUniform([2, 6, 5, 3], 0, 1, "float32", 7) as tf.Tensor4D;
      const got = infer.apply(x).dataSync();
      const want = ops.apply(x).dataSync();
      assert.equal(got.length, 2 * 24 * 20 * 3);
      let max = 0;
      for (let i = 0; i < got.length; i++) max = Math.max(max, Math.abs(got[i] - want[i]));
      assert.ok(max < 1e-5, `max |difference| ${max}`);
    });
    assert.equal(tf.memory().numTensors, before);
  } finally {
    infer.dispose();
    ops.dispose();
  }
});
