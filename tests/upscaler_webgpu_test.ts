/**
 * The Upscaler on webgpu, where patches run through cached prepared forwards of our kernels
 * (core/kernels/webgpu_plan.ts): equal to tfjs's ops on the same backend, untiled and tiled
 * (non-square edge tiles), rebuilt when the net's weights change, no tensor leaks. Mesa llvmpipe
 * serves on CPU-only machines; skipped, saying why, without an adapter.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { inferRRDBNetConfig, RRDBNet } from "../core/rrdbnet_arch.ts";
import { DEFAULT_TILE, DEFAULT_TILE_PAD, Upscaler } from "../core/upscaler.ts";
import { importWeights } from "../core/import/mod.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import { featherWeights, planTiles, TileBlender } from "../core/tile.ts";
import type { PlanCache } from "../core/plan_cache.ts";
import { TileBlenderWebGPU } from "../core/kernels/webgpu_tile_blend.ts";
import { bindGroupFault } from "./webgpu_setup.ts";

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

/**
 * An upscaler whose largest map takes 1 KiB per input pixel (16 channels at 4x), and a zero image a
 * little past the largest square patch the device's bindings hold (`fits` pixels a side).
 */
function tooLarge(device: GPUDevice) {
  const net = new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 16, numBlock: 1, numGrowCh: 4 }, {
    seed: 3,
  });
  const fits = Math.floor(Math.sqrt(device.limits.maxStorageBufferBindingSize / 1024));
  const up = new Upscaler(net);
  up.winograd = 0; // one plan: "auto" would go on with the variant that can be made
  return { up, big: tf.zeros([1, fits + 8, fits + 8, 3]) as tf.Tensor4D, fits };
}

async function maxDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
  const v = (await d.data())[0];
  d.dispose();
  return v;
}

Deno.test({
  name: "webgpu upscaler: an input past the device's binding limit is cut into tiles on the host",
  ignore,
  fn: async () => {
    // tfjs's slice binds its whole input: a 2048x5478 image on llvmpipe's 128 MiB limit read all
    // zeros (WebGPU's validation error goes to no scope). The limit is lowered here to stay small.
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    const up = new Upscaler(tinyNet(5));
    up.gpuBlend = false; // blended on the host both times: what differs is only how tiles are cut
    const x = tf.randomUniform([1, 20, 14, 3], 0, 1, "float32", 8) as tf.Tensor4D;
    const tiles = { tile: 8, tilePad: 3 };
    try {
      const want = await up.upscaleTensor(x, tiles);
      const real = device.limits;
      const lowered: Record<string, number> = {};
      for (const k in real) lowered[k] = real[k as keyof GPUSupportedLimits] as number;
      lowered.maxStorageBufferBindingSize = 4 * x.size - 4;
      Object.defineProperty(device, "limits", { configurable: true, value: lowered });
      let got: tf.Tensor4D;
      try {
        const profile = await tf.profile(async () => {
          got = await up.upscaleTensor(x, tiles);
        });
        const whole = profile.kernels.filter((k) => k.inputShapes.some((s) => s?.join() === x.shape.join()));
        assert.deepEqual(whole.map((k) => k.name), [], "kernels that bound the whole input");
      } finally {
        Object.defineProperty(device, "limits", { configurable: true, value: real });
      }
      assert.equal(await maxDiff(got!, want), 0);
      tf.dispose([want, got!]);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});

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
  name:
    "webgpu upscaler: tiles queued while the previous one is read back blend to the patches run one by one",
  ignore,
  fn: async () => {
    const up = new Upscaler(tinyNet(5));
    // 3 x 3 tiles of 4 with pad 2: four patch shapes (6x5, 6x8, 8x5, 8x8), most shared by several tiles
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 6) as tf.Tensor4D;
    try {
      const before = tf.memory().numTensors;
      const rows = planTiles(12, 4, 2), cols = planTiles(10, 4, 2);
      const blender = new TileBlender({ batch: 1, width: 40, height: 48, channels: 3 });
      for (const [i, r] of rows.entries()) {
        for (const [j, c] of cols.entries()) {
          const part = tf.slice(x, [0, r.inStart, c.inStart, 0], [
            1,
            r.inEnd - r.inStart,
            c.inEnd - c.inStart,
            3,
          ]);
          const y = await up.upscaleTensor(part as tf.Tensor4D, { tile: 0 });
          blender.add(await y.data() as Float32Array, {
            y0: r.inStart * 4,
            x0: c.inStart * 4,
            wy: featherWeights(rows, i, 4),
            wx: featherWeights(cols, j, 4),
          });
          tf.dispose([part, y]);
        }
      }
      const ref = tf.tensor4d(blender.result(), [1, 48, 40, 3]);
      const seen: number[] = [];
      const t = await up.upscaleTensor(x, { tile: 4, tilePad: 2, onProgress: (done) => seen.push(done) });
      assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      assert.ok(await maxDiff(t, ref) < 1e-6, "tiled vs patch by patch");
      tf.dispose([ref, t]);

      // aborted after the third tile, while the fourth is already on the GPU: nothing leaks
      const controller = new AbortController();
      const calls: number[] = [];
      await assert.rejects(
        up.upscaleTensor(x, {
          tile: 4,
          tilePad: 2,
          signal: controller.signal,
          onProgress: (done) => {
            calls.push(done);
            if (done === 3) controller.abort();
          },
        }),
        { name: "AbortError" },
      );
      assert.deepEqual(calls, [0, 1, 2, 3]);
      assert.equal(tf.memory().numTensors, before);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  name:
    "webgpu upscaler: tiles blended on the GPU equal the host's blending (x2 net's padded patches, a batch of 2, images too)",
  ignore,
  fn: async () => {
    const net = new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 2, numFeat: 8, numBlock: 1, numGrowCh: 4 }, {
      seed: 4,
    });
    const up = new Upscaler(net);
    // odd sides: the x2 net's pixel-unshuffle pads each patch, whose output is cropped as it is blended
    const x = tf.randomUniform([2, 13, 11, 3], 0, 1, "float32", 2) as tf.Tensor4D;
    const prepare = TileBlenderWebGPU.prototype.prepare;
    let onGPU = 0;
    TileBlenderWebGPU.prototype.prepare = function (...args) {
      onGPU++;
      return prepare.apply(this, args);
    };
    try {
      const before = tf.memory().numTensors;
      up.gpuBlend = false;
      const host = await up.upscaleTensor(x, { tile: 4, tilePad: 3 });
      assert.equal(onGPU, 0);
      up.gpuBlend = true;
      const seen: number[] = [];
      const gpu = await up.upscaleTensor(x, { tile: 4, tilePad: 3, onProgress: (done) => seen.push(done) });
      assert.equal(onGPU, 12, "4 x 3 tiles blended on the GPU");
      assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      assert.deepEqual(gpu.shape, [2, 26, 22, 3]);
      const d = await maxDiff(gpu, host);
      assert.ok(d < 1e-6, `GPU vs host blending: ${d}`);
      tf.dispose([host, gpu]);

      // direct convolutions set by hand (no timing to size batches by): the first tile is waited for,
      // then batches of about 200 ms by its time; 7 x 6 tiles take several batches here
      up.winograd = 0;
      up.gpuBlend = false;
      const host2 = await up.upscaleTensor(x, { tile: 2, tilePad: 3 });
      up.gpuBlend = true;
      seen.length = 0;
      const gpu2 = await up.upscaleTensor(x, { tile: 2, tilePad: 3, onProgress: (done) => seen.push(done) });
      assert.deepEqual(seen, Array.from({ length: 43 }, (_, i) => i));
      const d2 = await maxDiff(gpu2, host2);
      assert.ok(d2 < 1e-6, `GPU vs host blending, 42 tiles: ${d2}`);
      tf.dispose([host2, gpu2]);
      // aborted at the first batch's end: the rest is never submitted
      const controller = new AbortController();
      const calls: number[] = [];
      const counted = onGPU;
      await assert.rejects(
        up.upscaleTensor(x, {
          tile: 2,
          tilePad: 3,
          signal: controller.signal,
          onProgress: (done) => (calls.push(done), done === 1 && controller.abort()),
        }),
        { name: "AbortError" },
      );
      assert.deepEqual(calls, [0, 1]);
      assert.ok(onGPU - counted < 42, `${onGPU - counted} of 42 tiles submitted before the abort`);
      onGPU = counted;
      up.winograd = "auto";
      assert.equal(tf.memory().numTensors, before);

      // through upscale(): RGBA bytes in and out, one read-back
      const img = {
        width: 11,
        height: 13,
        data: Uint8ClampedArray.from({ length: 11 * 13 * 4 }, (_, i) => (i % 4 === 3 ? 255 : (i * 37) % 256)),
      };
      const viaGpu = await up.upscale(img, { tile: 5, tilePad: 2 });
      up.gpuBlend = false;
      const viaHost = await up.upscale(img, { tile: 5, tilePad: 2 });
      const off = viaGpu.data.reduce((m, v, i) => Math.max(m, Math.abs(v - viaHost.data[i])), 0);
      assert.ok(off <= 1, `upscale(): ${off} levels apart`);
      assert.equal(onGPU, 12 + 42 + 9);
    } finally {
      TileBlenderWebGPU.prototype.prepare = prepare;
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
      const f32Choice = up.convChoice; // winograd "auto" (the default) chose per precision
      assert.equal(f32Choice?.precision, "f32");
      up.precision = "f16";
      const half = await up.upscaleTensor(x, { tile: 0 });
      const d = await maxDiff(half, ref);
      // a different plan ran (f16 rounding shows), and stayed close
      assert.ok(d > 0 && d < 5e-3, `f16 vs f32: max difference ${d}`);
      assert.deepEqual(up.convChoice?.timings.map((t) => t.winograd), [0, 4], "f16 chose anew");
      up.precision = "f32";
      const again = await up.upscaleTensor(x, { tile: 0 });
      assert.equal(up.convChoice, f32Choice, "back to f32: f32's choice, not a new timing");
      assert.equal(await maxDiff(again, ref), 0, "back to f32: the f32 plan");
      tf.dispose([ref, half, again]);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  name: "webgpu upscaler: a patch too large for the GPU, or a plan WebGPU rejects, fails saying so",
  ignore,
  fn: async () => {
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    const { up, big, fits } = tooLarge(device);
    const x = tf.randomUniform([1, 6, 5, 3], 0, 1, "float32", 8) as tf.Tensor4D;
    const fault = bindGroupFault(device);
    try {
      const before = tf.memory().numTensors;
      await assert.rejects(
        up.upscaleTensor(big, { tile: 0 }),
        new RegExp(`patch is too large for this GPU .*twice its pad at most ${fits} pixels`),
      );
      assert.equal(tf.memory().numTensors, before);

      // one bind group made invalid while a plan is prepared: WebGPU's error surfaces, the plan goes
      fault.arm();
      await assert.rejects(
        up.upscaleTensor(x, { tile: 0 }),
        /WebGPU rejected the work preparing the forward/,
      );
      // the same through tiles (6x5 in tiles of 3, pad 1), the next one queued while the first is read
      fault.arm();
      await assert.rejects(
        up.upscaleTensor(x, { tile: 3, tilePad: 1 }),
        /WebGPU rejected the work preparing the forward of a 4x4 patch/,
      );
      // the largest patch's plan (made first, 5x5) rejected, then the first tile's (4x4) made fine:
      // the first's verdict is not lost when the second is made
      const x7 = tf.randomUniform([1, 7, 7, 3], 0, 1, "float32", 9) as tf.Tensor4D;
      fault.arm();
      await assert.rejects(
        up.upscaleTensor(x7, { tile: 3, tilePad: 1 }),
        /WebGPU rejected the work preparing the forward of a 5x5 patch/,
      ).finally(() => x7.dispose());
      fault.restore();
      const ref = tf.tidy(() => tf.clipByValue(up.net.apply(x), 0, 1));
      const y = await up.upscaleTensor(x, { tile: 0 });
      assert.ok(await maxDiff(y, ref) < 1e-5, "a new plan, made without the fault");
      tf.dispose([y, ref]);
      assert.equal(tf.memory().numTensors, before);
    } finally {
      fault.restore();
      tf.dispose([big, x]);
      up.dispose();
    }
  },
});

Deno.test({
  name:
    "webgpu upscaler: winograd auto times direct and Winograd on an inner patch, keeps the faster, gives its output",
  ignore,
  fn: async () => {
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    const auto = new Upscaler(tinyNet(7));
    auto.winograd = "auto";
    const fixed = new Upscaler(tinyNet(7));
    try {
      const before = tf.memory().numTensors;
      const y = await auto.upscaleTensor(x, { tile: 6, tilePad: 4 });
      const choice = auto.convChoice!;
      const side = (n: number) => Math.max(...planTiles(n, 6, 4).map((t) => t.inEnd - t.inStart));
      assert.deepEqual(choice.shape, [1, side(12), side(10), 3]);
      const [direct, winograd] = choice.timings;
      assert.deepEqual([direct.winograd, winograd.winograd], [0, 4]);
      assert.ok(direct.ms! > 0 && winograd.ms! > 0, JSON.stringify(choice.timings));
      assert.equal(choice.winograd, direct.ms! <= winograd.ms! ? 0 : 4);
      // every patch ran with the chosen convolutions: as an upscaler set to them by hand
      fixed.winograd = choice.winograd;
      const want = await fixed.upscaleTensor(x, { tile: 6, tilePad: 4 });
      assert.equal(await maxDiff(y, want), 0);
      tf.dispose([y, want]);
      assert.equal(tf.memory().numTensors, before);
      // in half precision too the Winograd variant is F(4x4), with f16 storage
      if ((tf.backend() as unknown as { device: GPUDevice }).device.features.has("shader-f16")) {
        const half = new Upscaler(tinyNet(7));
        [half.winograd, half.precision] = ["auto", "f16"];
        tf.dispose(await half.upscaleTensor(x, { tile: 0 }));
        assert.deepEqual(half.convChoice!.timings.map((t) => t.winograd), [0, 4]);
        assert.ok(half.convChoice!.timings.every((t) => t.ms! > 0));
        half.dispose();
      }
    } finally {
      x.dispose();
      auto.dispose();
      fixed.dispose();
    }
  },
});

Deno.test({
  name: "webgpu upscaler: winograd auto drops a variant WebGPU rejects, and fails saying so when none fits",
  ignore,
  fn: async () => {
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    const x = tf.randomUniform([1, 6, 5, 3], 0, 1, "float32", 8) as tf.Tensor4D;
    const up = new Upscaler(tinyNet(5));
    up.winograd = "auto";
    const fault = bindGroupFault(device);
    try {
      // the first plan made (direct) gets one invalid bind group: it drops out, Winograd runs
      fault.arm();
      const y = await up.upscaleTensor(x, { tile: 3, tilePad: 1 });
      fault.restore();
      const [direct, winograd] = up.convChoice!.timings;
      assert.match(direct.error ?? "", /./, "the direct plan's error is kept");
      assert.equal(direct.ms, undefined);
      assert.ok(winograd.ms! > 0);
      assert.equal(up.convChoice!.winograd, 4);
      // every patch shape (four) ran as Winograd: as an upscaler set to it by hand
      const fixed = new Upscaler(tinyNet(5));
      fixed.winograd = 4;
      const want = await fixed.upscaleTensor(x, { tile: 3, tilePad: 1 });
      fixed.dispose();
      assert.equal(await maxDiff(y, want), 0);
      tf.dispose([y, want]);

      // a patch no variant can hold: the direct plan's error, said as for a fixed choice
      const { up: wide, big, fits } = tooLarge(device);
      wide.winograd = "auto";
      try {
        await assert.rejects(
          wide.upscaleTensor(big, { tile: 0 }),
          new RegExp(`patch is too large for this GPU .*twice its pad at most ${fits} pixels`),
        );
        assert.equal(wide.convChoice, undefined);
      } finally {
        big.dispose();
        wide.dispose();
      }
    } finally {
      fault.restore();
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  name:
    "webgpu upscaler: tta through the planned forwards is equivariant (transposed tiles get plans of their own)",
  ignore,
  fn: async () => {
    const up = new Upscaler(tinyNet(9));
    const x = tf.randomUniform([1, 10, 7, 3], 0, 1, "float32", 4) as tf.Tensor4D;
    try {
      const before = tf.memory().numTensors;
      // 10x7 in tiles of 4, pad 1: patch shapes 5x5, 5x6, 6x5, 6x6, 5x4, 6x4 and their transposes
      const y = await up.upscaleTensor(x, { tile: 4, tilePad: 1, tta: true });
      const xt = tf.transpose(x, [0, 2, 1, 3]);
      const yt = await up.upscaleTensor(xt, { tile: 0, tta: true });
      const whole = await up.upscaleTensor(x, { tile: 0, tta: true });
      const back = tf.transpose(yt, [0, 2, 1, 3]);
      assert.ok(await maxDiff(back, whole) < 1e-5, "transposing the input transposes the output");
      assert.ok(await maxDiff(y, whole) < 0.1, "tiled near untiled");
      tf.dispose([y, xt, yt, whole, back]);
      assert.equal(tf.memory().numTensors, before);
    } finally {
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  name: "webgpu upscaler: an x8 net's default tile keeps a full-resolution map within one storage binding",
  ignore,
  fn: async () => {
    const sd = await importWeights(new URL("fixtures/esrgan_x8.pth", import.meta.url).pathname);
    const up = new Upscaler(new RRDBNet(inferRRDBNetConfig(sd), { weights: sd }));
    try {
      const { device } = tf.backend() as unknown as { device: GPUDevice };
      const limit = device.limits.maxStorageBufferBindingSize;
      const tile = up.defaultTile;
      const patch = tile + 2 * DEFAULT_TILE_PAD;
      assert.ok(tile >= 8 && tile <= DEFAULT_TILE / 2, `tile ${tile}`);
      assert.ok((patch * 8) ** 2 * up.config.numFeat * 4 <= limit, `tile ${tile}: over ${limit} bytes`);
      const x = tf.randomUniform([1, tile + 5, 9, 3]) as tf.Tensor4D;
      const y = await up.upscaleTensor(x);
      assert.deepEqual(y.shape, [1, (tile + 5) * 8, 72, 3]);
      tf.dispose([x, y]);
    } finally {
      up.dispose();
    }
  },
});

Deno.test({
  name: "webgpu upscaler from a model file: its net is made on first use and its plan once, as a net's",
  ignore,
  fn: async () => {
    const net = tinyNet(11);
    const bytes = encodeModelFile(await net.stateDict(), { dtype: "fp32" });
    const eager = new Upscaler(net), lazy = Upscaler.fromBytes(bytes);
    eager.winograd = lazy.winograd = 0;
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 4) as tf.Tensor4D;
    try {
      const want = await eager.upscaleTensor(x, { tile: 0 });
      const got = await lazy.upscaleTensor(x, { tile: 0 });
      assert.equal(await maxDiff(got, want), 0);
      const plans = (lazy as unknown as { gpuPlans: PlanCache }).gpuPlans;
      const made = plans.kept;
      assert.equal(made.length, 1);
      const again = await lazy.upscaleTensor(x, { tile: 0 });
      assert.deepEqual(plans.kept, made, "the same plan, not one made again");
      tf.dispose([want, got, again]);
    } finally {
      x.dispose();
      eager.dispose();
      lazy.dispose();
    }
  },
});
