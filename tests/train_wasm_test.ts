/**
 * The psnr stage on the CPU kernels (the Trainer on tfjs's wasm backend runs
 * core/kernels/wasm_train_plan.ts): the same losses as tfjs's autodiff on the cpu backend, an exact
 * resume from a checkpoint, a clear refusal of what wasm cannot train, and validation on the CPU
 * kernels.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { decodeCheckpoint } from "../train/checkpoint.ts";
import { PRESETS, validateConfig } from "../train/config.ts";
import { runTraining, validate, wasmGanHeapMiB } from "../train/train.ts";
import { makeValPairs } from "../train/data.ts";
import { ESRGAN_X4, RRDBNet } from "../core/rrdbnet_arch.ts";
import { cpuPlannable, Trainer } from "../train/trainer.ts";
import {
  assertSameGanLosses,
  ganLosses,
  pixelLosses,
  testBatches,
  testImage,
  TINY,
} from "./train_helpers.ts";

await initBackend("cpu");
await initBackend("wasm", { threads: 2 });

Deno.test("wasm: planned psnr steps give the cpu backend's autodiff losses; a run resumes exactly", async () => {
  const cfg = { ...TINY, lrG: 2e-3, emaDecay: 0.5 };
  const batches = testBatches(cfg, 4);
  const run = (t: Trainer, from: number, to: number) => pixelLosses(t, batches, from, to);
  await tf.setBackend("cpu");
  const auto = Trainer.create({ ...cfg, plannedStep: false });
  assert.equal(auto.planned, false);
  const want = await run(auto, 0, 4);
  const autoEma = await auto.ema.stateDict();
  auto.dispose();

  await tf.setBackend("wasm");
  try {
    const planned = Trainer.create(cfg);
    assert.equal(planned.planned, true);
    const first = await run(planned, 0, 2);
    const ckpt = decodeCheckpoint(await planned.checkpoint());
    const rest = await run(planned, 2, 4);
    planned.sync();
    const ema = await planned.ema.stateDict();
    planned.dispose();
    [...first, ...rest].forEach((l, i) =>
      assert.ok(Math.abs(l - want[i]) <= 1e-4 * want[i], `step ${i}: planned ${l}, autodiff ${want[i]}`)
    );
    // the EMA written back from the plan is autodiff's
    for (const [k, t] of autoEma) {
      const got = ema.get(k)!.data;
      const worst = Math.max(...t.data.map((v, i) => Math.abs(v - got[i])));
      assert.ok(worst <= 1e-4 * (Math.max(...t.data.map(Math.abs)) + 1e-6), `EMA ${k}: off by ${worst}`);
    }

    const resumed = Trainer.create(cfg, { checkpoint: ckpt });
    assert.equal(resumed.step, 2);
    const again = await run(resumed, 2, 4);
    resumed.dispose();
    assert.deepEqual(again, rest, "resumed planned run");
  } finally {
    await tf.setBackend("cpu");
  }
});

Deno.test("wasm: the unplanned step and odd patch sides are refused with the reason; the gan stage plans", () => {
  assert.equal(cpuPlannable(TINY), true);
  assert.equal(cpuPlannable({ ...TINY, gtSize: 24 }), false, "LR side 6");
  assert.equal(cpuPlannable({ ...TINY, scale: 2, gtSize: 16 }), false);
  assert.equal(cpuPlannable({ ...TINY, stage: "gan" }), true);
  assert.throws(
    () => validateConfig({ ...TINY, backend: "wasm", plannedStep: false }, "x"),
    /use cpu or webgpu/,
  );
});

Deno.test("wasm: a gan batch beyond tfjs-wasm's 4 GiB is refused before any work, naming a batch that fits", async () => {
  await tf.setBackend("wasm"); // the tests before may have left cpu on
  const gan = PRESETS.gan;
  assert.equal(gan.batchSize, 16);
  // the fit's own data points: batch 4 and 8 ran (2.1 and 3.3 GiB), 16 ran out of memory
  assert.ok(wasmGanHeapMiB({ ...gan, batchSize: 8 }) < 0.95 * 4096);
  const outDir = `${await Deno.makeTempDir()}/never`;
  await assert.rejects(
    runTraining({ config: gan, dataDir: "/nonexistent", outDir, codec: undefined! }),
    /memory stops at 4 GiB: batch 16 at gtSize 128 would need about 5\.7 GiB; use --batch-size 9 or less/,
  );
  await assert.rejects(
    runTraining({ config: { ...gan, gtSize: 512 }, dataDir: "/nonexistent", outDir, codec: undefined! }),
    /use a smaller --gt-size/,
  );
  assert.equal(await Deno.stat(outDir).then(() => true, () => false), false, "nothing written");
});

Deno.test("wasm: planned gan steps (G, and the convs of D and VGG as tfjs-wasm ops, on the CPU kernels) give the cpu backend's losses", async () => {
  await tf.setBackend("cpu");
  const want = await ganLosses(false);
  await tf.setBackend("wasm");
  try {
    assertSameGanLosses(await ganLosses(true), want);
  } finally {
    await tf.setBackend("cpu");
  }
});

Deno.test("wasm: validation runs the net on the CPU kernels, each image as one patch: the cpu backend's scores", async () => {
  const net = new RRDBNet({ ...ESRGAN_X4, numFeat: 16, numBlock: 2, numGrowCh: 8 }, { seed: 5 });
  // LR of 12x10: sides that are no multiple of 4
  const pairs = makeValPairs([testImage(2), testImage(3)], { scale: 4, crop: 0 });
  try {
    await tf.setBackend("cpu");
    const want = await validate(net, pairs, {});
    await tf.setBackend("wasm");
    const before = tf.memory().numTensors;
    const apply = net.apply;
    net.apply = () => {
      throw new Error("validation ran the net through tfjs's ops on wasm");
    };
    const got = await validate(net, pairs, {}).finally(() => net.apply = apply);
    assert.ok(Math.abs(got.psnr - want.psnr) < 0.01, `PSNR ${got.psnr} against ${want.psnr}`);
    assert.ok(Math.abs(got.ssim - want.ssim) < 1e-4, `SSIM ${got.ssim} against ${want.ssim}`);
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
  } finally {
    net.dispose();
    await tf.setBackend("cpu");
  }
});
