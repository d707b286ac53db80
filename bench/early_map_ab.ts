/**
 * What reading back early (core/kernels/webgpu_map.ts) saves, in one process: a planned forward, a
 * tiled GPU upscale and a planned training step (batch 2 at the forward's size) of a small random
 * RRDBNet, with early and awaited reads alternated run by run (medians). A software adapter's time varies with the load: alternating shares it out, where
 * the bench's processes (`+latemap`) would each see a different load.
 *
 *     deno run -A bench/early_map_ab.ts [--size 8] [--runs 21] [--upscale 24] [--tile 8] [--blocks 1]
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { parseArgs } from "node:util";
import { ESRGAN_X4, RRDBNet } from "../core/rrdbnet_arch.ts";
import { RRDBNetPlanWebGPU } from "../core/kernels/webgpu_plan.ts";
import { mapStats, setEarlyMap } from "../core/kernels/webgpu_map.ts";
import { Upscaler } from "../core/upscaler.ts";
import { RRDBNetTrainPlanWebGPU } from "../core/kernels/webgpu_train_plan.ts";
import { Adam } from "../train/adam.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "8" },
    runs: { type: "string", default: "21" },
    upscale: { type: "string", default: "24" },
    tile: { type: "string", default: "8" },
    blocks: { type: "string", default: "1" },
  },
});
const [size, runs, upSize, tile, blocks] = [
  values.size,
  values.runs,
  values.upscale,
  values.tile,
  values.blocks,
]
  .map(Number);
if (!(await tf.setBackend("webgpu"))) throw new Error("early_map_ab: no WebGPU adapter");
const net = new RRDBNet({ ...ESRGAN_X4, numBlock: blocks, numFeat: 16, numGrowCh: 8 });
const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];

/** Medians of `runs` timed calls of `run` with early and with awaited reads, after two of each to warm up. */
async function ab(run: () => Promise<unknown>): Promise<{ early: number; awaited: number }> {
  const times = { early: [] as number[], awaited: [] as number[] };
  for (let r = -2; r < runs; r++) {
    for (const mode of ["early", "awaited"] as const) {
      setEarlyMap(mode === "early");
      const t0 = performance.now();
      await run();
      if (r >= 0) times[mode].push(performance.now() - t0);
    }
  }
  setEarlyMap(true);
  return { early: median(times.early), awaited: median(times.awaited) };
}

const fmt = (m: { early: number; awaited: number }) =>
  `early ${m.early.toFixed(1)} ms, awaited ${m.awaited.toFixed(1)} ms`;
const x = tf.randomUniform([1, size, size, 3], 0, 1, "float32", 1) as tf.Tensor4D;
const plan = new RRDBNetPlanWebGPU(net, x.shape, { winograd: 4 });
console.log(`forward 1x${size}x${size} (${blocks} block, nf 16, gc 8): ${fmt(await ab(() => plan.read(x)))}`);
plan.dispose();

const up = new Upscaler(net);
up.winograd = 4;
const image = tf.randomUniform([1, upSize, upSize, 3], 0, 1, "float32", 2) as tf.Tensor4D;
const upscale = async () => (await up.upscaleTensor(image, { tile, tilePad: 4 })).dispose();
console.log(`upscale ${upSize}x${upSize} in ${tile}x${tile} tiles: ${fmt(await ab(upscale))}`);
up.dispose();

const trainNet = new RRDBNet({ ...ESRGAN_X4, numBlock: blocks, numFeat: 16, numGrowCh: 8 }, {
  trainable: true,
});
const adam = new Adam(trainNet.params, { betas: [0.9, 0.99] });
const train = new RRDBNetTrainPlanWebGPU(trainNet, {
  batch: 2,
  lqSize: size,
  ema: trainNet.params,
  adam,
  emaDecay: 0.999,
  winograd: 4,
});
const batch = {
  lq: Float32Array.from({ length: 2 * size * size * 3 }, (_, i) => (i % 97) / 97),
  gt: Float32Array.from({ length: 2 * 16 * size * size * 3 }, (_, i) => (i % 89) / 89),
};
console.log(`train step 2x${size}x${size}: ${fmt(await ab(() => train.step(batch, 1e-4)))}`);
console.log(`medians of ${runs}; reads taken early ${mapStats.early}, awaited ${mapStats.awaited}`);
