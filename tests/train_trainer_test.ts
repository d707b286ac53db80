/**
 * The training step on the cpu backend with tiny nets: L1 falls on a fixed batch, Adam matches
 * torch.optim.Adam, the gan stage moves every G and D parameter with finite losses, and a run resumed
 * from a checkpoint takes exactly the steps an uninterrupted run takes.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { PerceptualLoss } from "../core/losses/perceptual_loss.ts";
import { randomVgg19Weights } from "../core/vgg19_arch.ts";
import { Adam } from "../train/adam.ts";
import type { TrainConfig } from "../train/config.ts";
import { decodeCheckpoint } from "../train/checkpoint.ts";
import { makeBatch } from "../train/data.ts";
import { Trainer } from "../train/trainer.ts";
import { testImage, TINY } from "./train_helpers.ts";

await initBackend("cpu");

const IMAGES = [testImage(1), testImage(2)];

function ganPerceptual(): PerceptualLoss {
  return PerceptualLoss.fromWeights(randomVgg19Weights("conv2_2", 3), { layerWeights: { conv2_2: 1 } });
}

Deno.test("a few dozen psnr steps lower the L1 of a fixed batch", async () => {
  const cfg = { ...TINY, lrG: 2e-3 };
  const t = Trainer.create(cfg);
  const batch = makeBatch(IMAGES, cfg, 0);
  const losses: number[] = [];
  for (let i = 0; i < 30; i++) losses.push((await t.trainStep(batch)).l_pix);
  t.dispose();
  const first = losses[0], last = Math.min(...losses.slice(-3));
  assert.ok(last < 0.6 * first, `L1 ${first} → ${last}: did not fall by 40%`);
});

Deno.test("Adam matches torch.optim.Adam (lr 1e-2, betas 0.9/0.99)", () => {
  const p = tf.variable(tf.tensor1d([0.5, -1, 2, 0]));
  const adam = new Adam(new Map([["p", p]]), { betas: [0.9, 0.99] });
  const grads = [[0.1, -0.2, 0.3, 0], [0.05, 0.4, -0.3, 1e-3], [-0.2, 0.1, 0, 2]];
  // torch 1.13, float64: parameters after each step
  const torch = [
    [0.490000001, -0.9900000005, 1.990000000333, 0.0],
    [0.480665522165, -0.993656077518, 1.990526316105, -0.007424493149],
    [0.482723765688, -0.997815323772, 1.990934085476, -0.013786755538],
  ];
  grads.forEach((g, i) => {
    const gt = tf.tensor1d(g);
    adam.step(new Map([["p", gt]]), 1e-2);
    gt.dispose();
    const got = p.dataSync();
    torch[i].forEach((v, j) =>
      assert.ok(Math.abs(got[j] - v) < 1e-6, `step ${i + 1} [${j}]: ${got[j]} vs ${v}`)
    );
  });
  const m = adam.m.get("p")!.dataSync(), v = adam.v.get("p")!.dataSync();
  [-0.0074, 0.0298, -0.0027, 0.20009].forEach((x, j) => assert.ok(Math.abs(m[j] - x) < 1e-7));
  [0.00052276, 0.00207604, 0.00177309, 0.0400000099].forEach((x, j) => assert.ok(Math.abs(v[j] - x) < 1e-8));
  assert.equal(adam.t, 3);
  adam.dispose();
  p.dispose();
});

Deno.test("a gan step has finite losses and moves every parameter of G and D", async () => {
  const cfg: TrainConfig = { ...TINY, stage: "gan", scheduler: "multistep" };
  const t = Trainer.create(cfg, { perceptual: ganPerceptual() });
  const before = (m: Map<string, tf.Variable>) => new Map([...m].map(([k, v]) => [k, v.dataSync().slice()]));
  const g0 = before(t.g.params), d0 = before(t.d!.params);
  const l = await t.trainStep(makeBatch(IMAGES, cfg, 0));
  for (const k of ["l_pix", "l_percep", "l_gan", "l_d_real", "l_d_fake"]) {
    assert.ok(Number.isFinite(l[k]) && l[k] > 0, `${k} = ${l[k]}`);
  }
  for (const [name, params, old] of [["G", t.g.params, g0], ["D", t.d!.params, d0]] as const) {
    for (const [k, v] of params) {
      const now = v.dataSync();
      assert.ok(now.some((x, i) => x !== old.get(k)![i]), `${name} ${k} did not move (zero gradient?)`);
    }
  }
  t.dispose();
});

async function resumeMatches(cfg: TrainConfig, perceptual?: () => PerceptualLoss) {
  const batches = [0, 1, 2, 3, 4].map((s) => makeBatch(IMAGES, cfg, s));
  const a = Trainer.create(cfg, { perceptual: perceptual?.() });
  for (const b of batches.slice(0, 3)) await a.trainStep(b);
  const bytes = await a.checkpoint();
  const tail = [await a.trainStep(batches[3]), await a.trainStep(batches[4])];
  const emaA = await a.ema.stateDict();
  a.dispose();

  const b = Trainer.create(cfg, { checkpoint: decodeCheckpoint(bytes), perceptual: perceptual?.() });
  assert.equal(b.step, 3);
  const again = [await b.trainStep(batches[3]), await b.trainStep(batches[4])];
  const emaB = await b.ema.stateDict();
  b.dispose();
  assert.deepEqual(again, tail, "the resumed run's losses differ");
  for (const [k, t] of emaA) assert.deepEqual(emaB.get(k)!.data, t.data, `EMA ${k} differs after resuming`);
}

Deno.test("resuming a psnr run from a checkpoint gives exactly the uninterrupted run's next losses", async () => {
  await resumeMatches(TINY);
});

Deno.test("resuming a gan run (G, D, both Adams, EMA) gives exactly the uninterrupted run's next losses", async () => {
  await resumeMatches({ ...TINY, stage: "gan", scheduler: "multistep" }, ganPerceptual);
});

Deno.test("G's gradients of a batch equal the sum of its images' gradients (catches per-batch kernel bugs)", () => {
  // tfjs-cpu 4.22's ResizeNearestNeighborGrad mixes up batch items; this is what found it
  const cfg = TINY;
  const t = Trainer.create(cfg);
  const b = makeBatch(IMAGES, cfg, 0);
  const lq = tf.tensor4d(b.lq, [2, 4, 4, 3]), gt = tf.tensor4d(b.gt, [2, 16, 16, 3]);
  const vars = [...t.g.params.values()];
  const grad = (x: tf.Tensor4D, y: tf.Tensor) => {
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.abs(tf.sub(t.g.apply(x), y))) as tf.Scalar,
      vars,
    );
    value.dispose();
    return grads;
  };
  const whole = grad(lq, gt);
  const parts = [0, 1].map((i) => grad(tf.slice(lq, i, 1), tf.slice(gt, i, 1)));
  for (const v of vars) {
    const w = whole[v.name].dataSync(), a = parts[0][v.name].dataSync(), c = parts[1][v.name].dataSync();
    const scale = Math.max(...w.map(Math.abs)) + 1e-6;
    const worst = Math.max(...w.map((x, i) => Math.abs(x - a[i] - c[i])));
    assert.ok(
      worst / scale < 1e-4,
      `${v.name}: batch gradient differs from the per-image sum by ${worst / scale}`,
    );
  }
  tf.dispose([lq, gt, whole, ...parts.map((p) => Object.values(p)).flat()]);
  t.dispose();
});

Deno.test("the perceptual loss's gradient of a batch is the mean of its images' gradients", () => {
  const p = ganPerceptual();
  const sr = tf.randomUniform([2, 16, 16, 3], 0, 1, "float32", 7) as tf.Tensor4D;
  const hr = tf.randomUniform([2, 16, 16, 3], 0, 1, "float32", 8) as tf.Tensor4D;
  const g = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.grad((x: tf.Tensor) => p.apply(x as tf.Tensor4D, b))(a);
  const whole = g(sr, hr).dataSync();
  const parts = [0, 1].map((i) => g(tf.slice(sr, i, 1), tf.slice(hr, i, 1)).dataSync());
  const half = whole.length / 2;
  const scale = Math.max(...whole.map(Math.abs));
  assert.ok(scale > 0, "zero gradient through the perceptual loss");
  const worst = Math.max(...whole.map((x, i) => Math.abs(x - parts[i < half ? 0 : 1][i % half] / 2)));
  assert.ok(worst / scale < 1e-4, `differs by ${worst / scale}`);
  p.dispose();
});
