/**
 * The Upscaler on webgpu, where patches run through cached prepared forwards of our kernels
 * (core/kernels/webgpu_plan.ts): equal to tfjs's ops on the same backend, untiled and tiled
 * (non-square edge tiles), rebuilt when the net's weights change, no tensor leaks. Mesa llvmpipe
 * serves on CPU-only machines; skipped, saying why, without an adapter.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { Upscaler } from "../core/upscaler.ts";

const probe = await probeWebGPU();
const ignore = !probe.adapter;
if (ignore) console.warn(`skipping the webgpu upscaler tests: ${probe.why}`);
else await initBackend("webgpu");

function tinyNet(seed: number): RRDBNet {
  const net = new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 2, numGrowCh: 4 }, {
    seed,
  });
  // BasicSR's 0.1 init leaves the body near identity: scale it up so that every path matters
  tf.tidy(() => {
    for (const [k, v] of net.params) if (k.startsWith("body.")) v.assign(tf.mul(v, 8));
  });
  return net;
}

async function maxDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
  const v = (await d.data())[0];
  d.dispose();
  return v;
}

Deno.test({
  name: "webgpu upscaler: planned patches equal tfjs's ops, tiled and untiled; new weights, new plan",
  ignore,
  fn: async () => {
    assert.equal(tf.getBackend(), "webgpu");
    const up = new Upscaler(tinyNet(7));
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    try {
      const before = tf.memory().numTensors;
      const ref = tf.tidy(() => tf.clipByValue(up.net.apply(x), 0, 1));
      const y = await up.upscaleTensor(x, { tile: 0 });
      assert.ok(await maxDiff(y, ref) < 1e-5, "untiled");
      // 12x10 in tiles of 6 with pad 4: patches of 10x10, 10x6, 6x10, 6x6 (four plans)
      const t = await up.upscaleTensor(x, { tile: 6, tilePad: 4 });
      assert.ok(await maxDiff(t, ref) < 0.1, "tiled");
      tf.dispose([y, ref, t]);

      // new weights: the cached plan must not keep computing with the old ones
      const w = up.net.params.get("conv_last.weight")!;
      const flipped = tf.mul(w, -1);
      w.assign(flipped);
      flipped.dispose();
      const ref2 = tf.tidy(() => tf.clipByValue(up.net.apply(x), 0, 1));
      const y2 = await up.upscaleTensor(x, { tile: 0 });
      assert.ok(await maxDiff(y2, ref2) < 1e-5, "after the weights changed");
      // Winograd plans (cached apart from the direct ones)
      up.winograd = 4;
      const y3 = await up.upscaleTensor(x, { tile: 0 });
      assert.ok(await maxDiff(y3, ref2) < 1e-5, "winograd 4");
      up.winograd = 0;
      tf.dispose([y2, ref2, y3]);
      assert.equal(tf.memory().numTensors, before);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  name: "webgpu upscaler: precision f16 runs half-precision plans, within f16 rounding of f32",
  ignore: ignore || !(tf.backend() as unknown as { device: GPUDevice }).device.features.has("shader-f16"),
  fn: async () => {
    const up = new Upscaler(tinyNet(9));
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 4) as tf.Tensor4D;
    try {
      const ref = await up.upscaleTensor(x, { tile: 0 });
      up.precision = "f16";
      const half = await up.upscaleTensor(x, { tile: 0 });
      const d = await maxDiff(half, ref);
      // a different plan ran (f16 rounding shows), and stayed close
      assert.ok(d > 0 && d < 5e-3, `f16 vs f32: max difference ${d}`);
      up.precision = "f32";
      const again = await up.upscaleTensor(x, { tile: 0 });
      assert.equal(await maxDiff(again, ref), 0, "back to f32: the f32 plan");
      tf.dispose([ref, half, again]);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});
