/**
 * The training step on the webgpu backend (Mesa llvmpipe on CPU-only machines): L1 falls on a fixed
 * batch, G's batch gradients equal the per-image sums, the planned step (one prepared pass) gives
 * tfjs autodiff's losses and resumes exactly. Skipped, saying why, without an adapter.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { customKernelStats } from "../core/kernels/register.ts";
import { makeBatch } from "../train/data.ts";
import { Trainer } from "../train/trainer.ts";
import { imageIoCodec } from "../train/codecs.ts";
import { decodeCheckpoint, readCheckpoint } from "../train/checkpoint.ts";
import { checkpointPath, runTraining } from "../train/train.ts";
import { encodeImage } from "../core/image_io.ts";
import {
  assertSameGanLosses,
  ganLosses,
  pixelLosses,
  testBatches,
  testImage,
  TINY,
} from "./train_helpers.ts";

const probe = await probeWebGPU();
const ignore = !probe.adapter;
if (ignore) console.warn(`skipping the webgpu training tests: ${probe.why}`);
else await initBackend("webgpu");

Deno.test({
  name: "webgpu: a dozen psnr steps lower the L1 of a fixed batch",
  ignore,
  fn: async () => {
    assert.equal(tf.getBackend(), "webgpu");
    const cfg = { ...TINY, lrG: 2e-3 };
    const t = Trainer.create(cfg);
    const batch = makeBatch([testImage(1), testImage(2)], cfg, 0);
    const losses: number[] = [];
    for (let i = 0; i < 12; i++) losses.push((await t.trainStep(batch)).l_pix);
    t.dispose();
    assert.ok(Math.min(...losses.slice(-3)) < 0.8 * losses[0], `L1 ${losses[0]} → ${losses.at(-1)}`);
  },
});

Deno.test({
  name: "webgpu: G's batch gradients equal the sum of per-image gradients",
  ignore,
  fn: async () => {
    const t = Trainer.create(TINY);
    const b = makeBatch([testImage(1), testImage(2)], TINY, 0);
    const lq = tf.tensor4d(b.lq, [2, 4, 4, 3]), gt = tf.tensor4d(b.gt, [2, 16, 16, 3]);
    const vars = [...t.g.params.values()];
    const grad = (x: tf.Tensor4D, y: tf.Tensor) =>
      tf.variableGrads(() => tf.sum(tf.abs(tf.sub(t.g.apply(x), y))) as tf.Scalar, vars).grads;
    const whole = grad(lq, gt);
    const parts = [0, 1].map((i) => grad(tf.slice(lq, i, 1), tf.slice(gt, i, 1)));
    for (const v of vars) {
      const [w, a, c] = await Promise.all([
        whole[v.name].data(),
        parts[0][v.name].data(),
        parts[1][v.name].data(),
      ]);
      const scale = Math.max(...w.map(Math.abs)) + 1e-6;
      const worst = Math.max(...w.map((x, i) => Math.abs(x - a[i] - c[i])));
      assert.ok(worst / scale < 1e-3, `${v.name}: off by ${worst / scale}`);
    }
    t.dispose();
  },
});

Deno.test({
  name: "webgpu: planned psnr steps give autodiff's losses; a planned run resumes exactly",
  ignore,
  fn: async () => {
    const cfg = { ...TINY, lrG: 2e-3, emaDecay: 0.5 };
    const batches = testBatches(cfg, 4);
    const run = (t: Trainer, from: number, to: number) => pixelLosses(t, batches, from, to);
    const auto = Trainer.create({ ...cfg, plannedStep: false });
    assert.equal(auto.planned, false);
    const want = await run(auto, 0, 4);
    auto.dispose();

    const planned = Trainer.create(cfg);
    assert.equal(planned.planned, true);
    const first = await run(planned, 0, 2);
    const ckpt = decodeCheckpoint(await planned.checkpoint());
    // winograd "auto" (the default) chose by timing: the checkpoint keeps the choice, so that the
    // resumed run computes as this one did (a new timing could choose the other)
    assert.equal(cfg.winograd, "auto");
    assert.deepEqual(ckpt.convChoice, planned.convChoice);
    assert.deepEqual(ckpt.convChoice!.shape, [cfg.batchSize, cfg.gtSize / 4, cfg.gtSize / 4, 3]);
    const rest = await run(planned, 2, 4);
    planned.dispose();
    [...first, ...rest].forEach((l, i) =>
      assert.ok(Math.abs(l - want[i]) <= 1e-4 * want[i], `step ${i}: planned ${l}, autodiff ${want[i]}`)
    );

    const resumed = Trainer.create(cfg, { checkpoint: ckpt });
    assert.equal(resumed.step, 2);
    assert.deepEqual(resumed.convChoice, ckpt.convChoice);
    const again = await run(resumed, 2, 4);
    const ema = await resumed.ema.stateDict();
    resumed.dispose();
    assert.deepEqual(again, rest, "resumed planned run");
    // the EMA (decay 0.5 here) followed G: not the initial weights
    const init = Trainer.create(cfg);
    const initEma = await init.ema.stateDict();
    init.dispose();
    const k = "conv_last.weight";
    assert.ok(ema.get(k)!.data.some((v, i) => v !== initEma.get(k)!.data[i]), "the EMA never moved");
  },
});

Deno.test({
  name:
    "webgpu: planned gan steps (G planned; perceptual/RaGAN/D tfjs ops on our 3x3 kernels) give autodiff's losses",
  ignore,
  fn: async () => {
    customKernelStats({ reset: true });
    const planned = await ganLosses(true);
    const ours = customKernelStats({ reset: true });
    const autodiff = await ganLosses(false);
    const stock = customKernelStats({ reset: true });
    // the perceptual and D terms' 3x3 convolutions ran on our kernels, forward and input gradient
    assert.ok((ours.custom.FusedConv2D ?? 0) + (ours.custom.Conv2D ?? 0) > 0, JSON.stringify(ours));
    assert.ok((ours.custom.Conv2DBackpropInput ?? 0) > 0, JSON.stringify(ours));
    assert.deepEqual(stock.custom, {}, "autodiff runs tfjs's stock kernels");
    assertSameGanLosses(planned, autodiff);
  },
});

Deno.test({
  name:
    "webgpu: precision f16 trains the planned step in mixed precision, close to f32, loss scale logged, steps ahead",
  ignore: ignore || !probe.f16,
  fn: async () => {
    const cfg = { ...TINY, lrG: 2e-3 };
    const batches = testBatches(cfg, 4);
    const t32 = Trainer.create(cfg);
    const want = await pixelLosses(t32, batches, 0, 4);
    t32.dispose();
    const t16 = Trainer.create({ ...cfg, precision: "f16" });
    const got: number[] = [];
    for (const b of batches) {
      const l = await t16.trainStep(b);
      assert.equal(l.loss_scale, 2 ** 16, "the loss scale is logged, and no step overflowed");
      got.push(l.l_pix);
    }
    t16.dispose();
    // started one ahead, as deno task train runs them: the same steps
    const a16 = Trainer.create({ ...cfg, precision: "f16" });
    const ahead = [(await a16.trainStep(batches[0])).l_pix];
    assert.equal(a16.overlapsSteps, true);
    let pending = a16.trainStep(batches[1]);
    for (let i = 2; i < batches.length; i++) {
      const next = a16.trainStep(batches[i]);
      ahead.push((await pending).l_pix);
      pending = next;
    }
    ahead.push((await pending).l_pix);
    a16.dispose();
    assert.deepEqual(ahead, got);
    got.forEach((l, i) =>
      assert.ok(Math.abs(l - want[i]) <= 2e-3 * want[i], `step ${i}: f16 ${l}, f32 ${want[i]}`)
    );
  },
});

Deno.test({
  name: "webgpu: a mixed-precision run resumes at its loss scale (kept in the checkpoint)",
  ignore: ignore || !probe.f16,
  fn: async () => {
    // gradients 4096x larger: f16 overflows at 2^16, the scale falls 2^16 → 2^15 → 2^14 → ...
    const cfg = { ...TINY, lrG: 2e-3, precision: "f16" as const, pixelWeight: 4096 };
    const batches = testBatches(cfg, 5);
    const run = async (t: Trainer, from: number, to: number) => {
      const out = [];
      for (let i = from; i < to; i++) {
        const l = await t.trainStep(batches[i]);
        out.push({ l_pix: l.l_pix, loss_scale: l.loss_scale });
      }
      return out;
    };
    const whole = Trainer.create(cfg);
    const want = await run(whole, 0, 5);
    whole.dispose();
    const first = Trainer.create(cfg);
    assert.deepEqual(await run(first, 0, 2), want.slice(0, 2));
    const ckpt = decodeCheckpoint(await first.checkpoint());
    first.dispose();
    assert.deepEqual(ckpt.gradScalerG, { scale: want[1].loss_scale, growthTracker: 0 });
    assert.ok(ckpt.gradScalerG!.scale < 2 ** 16, "the scale fell before the checkpoint");
    const resumed = Trainer.create(cfg, { checkpoint: ckpt });
    assert.deepEqual(await run(resumed, 2, 5), want.slice(2), "resumed mixed-precision run");
    resumed.dispose();
    // an f32 checkpoint holds none
    const f32 = Trainer.create({ ...cfg, precision: "f32" });
    await run(f32, 0, 1);
    assert.equal(decodeCheckpoint(await f32.checkpoint()).gradScalerG, undefined);
    f32.dispose();
  },
});

Deno.test({
  name: "webgpu: planned steps started one ahead give the awaited steps' losses and weights",
  ignore,
  fn: async () => {
    // direct convolutions set by hand: "auto" times each trainer's plans anew, and under load one
    // of the three trainers here once chose Winograd, whose losses differ in the last bits
    const cfg = { ...TINY, lrG: 2e-3, winograd: 0 as const };
    const batches = testBatches(cfg, 5);
    const one = Trainer.create(cfg);
    const want = await pixelLosses(one, batches, 0, 5);
    await one.checkpoint(); // brings the variables up to date
    const wantG = await one.g.stateDict();
    one.dispose();

    const t = Trainer.create(cfg);
    assert.equal(t.overlapsSteps, false, "not before its plan is made, and checked");
    const got = [(await t.trainStep(batches[0])).l_pix];
    assert.equal(t.overlapsSteps, true);
    const pending = [t.trainStep(batches[1])];
    assert.equal(t.step, 2, "a step counts when submitted");
    for (let i = 2; i < 5; i++) {
      pending.push(t.trainStep(batches[i]));
      got.push((await pending[i - 2]).l_pix);
    }
    got.push((await pending[3]).l_pix);
    assert.deepEqual(got, want);
    await t.checkpoint();
    for (const [k, v] of await t.g.stateDict()) assert.deepEqual(v.data, wantG.get(k)!.data, k);
    // two steps started before the plan is made (and checked) wait for it, then run in order
    const u = Trainer.create(cfg);
    const firstTwo = [u.trainStep(batches[0]), u.trainStep(batches[1])];
    assert.deepEqual([(await firstTwo[0]).l_pix, (await firstTwo[1]).l_pix], want.slice(0, 2));
    u.dispose();
    // a third step while two losses are pending: refused, saying why
    const two = [t.trainStep(batches[0]), t.trainStep(batches[1])];
    await assert.rejects(t.trainStep(batches[2]), /before the loss of the two before it resolved/);
    await Promise.all(two);
    t.dispose();

    for (const other of [{ stage: "gan" as const }, { plannedStep: false }]) {
      const c = Trainer.create({ ...cfg, ...other }, {
        perceptual: other.stage ? { dispose() {} } as never : undefined,
      });
      assert.equal(c.overlapsSteps, false, JSON.stringify(other));
      c.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: winograd auto times a step of each plan, trains with the faster as if set by hand",
  ignore,
  fn: async () => {
    const cfg = { ...TINY, lrG: 2e-3, winograd: "auto" as const };
    const batches = testBatches(cfg, 3);
    const auto = Trainer.create(cfg);
    const got = await pixelLosses(auto, batches, 0, 3);
    const choice = auto.convChoice!;
    auto.dispose();
    assert.deepEqual(choice.shape, [cfg.batchSize, cfg.gtSize / 4, cfg.gtSize / 4, 3]);
    const [direct, winograd] = choice.timings;
    assert.deepEqual([direct.winograd, winograd.winograd], [0, 4]);
    assert.ok(direct.ms! > 0 && winograd.ms! > 0, JSON.stringify(choice.timings));
    assert.equal(choice.winograd, direct.ms! <= winograd.ms! ? 0 : 4);
    // timing scrambled the timed plans' weights: the plan that trains starts from the net's
    const fixed = Trainer.create({ ...cfg, winograd: choice.winograd });
    assert.deepEqual(got, await pixelLosses(fixed, batches, 0, 3));
    fixed.dispose();
    // a resumed run keeps the checkpoint's choice; where that plan cannot be made (as on a GPU with
    // less memory: here its first plan fails), it says so and times again
    const first = Trainer.create(cfg);
    await first.trainStep(batches[0]);
    const ckpt = decodeCheckpoint(await first.checkpoint());
    first.dispose();
    const resumed = Trainer.create(cfg, { checkpoint: ckpt });
    const seam = resumed as unknown as { checkedPlan(o: object): Promise<unknown> };
    const make = seam.checkedPlan.bind(resumed);
    let failed = 0;
    seam.checkedPlan = (o) => failed++ ? make(o) : Promise.reject(new Error("out of GPU memory (simulated)"));
    const warn = console.warn, warned: string[] = [];
    console.warn = (m: string) => warned.push(m);
    try {
      assert.deepEqual(resumed.convChoice, ckpt.convChoice);
      assert.ok(Number.isFinite((await resumed.trainStep(batches[1])).l_pix));
      assert.match(
        warned.join("\n"),
        /chosen before cannot run here \(out of GPU memory \(simulated\)\); timing again/,
      );
      assert.notEqual(resumed.convChoice, ckpt.convChoice, "timed again");
      assert.equal(resumed.convChoice!.timings.length, 2);
    } finally {
      console.warn = warn;
      resumed.dispose();
    }
    // in half precision there is no Winograd step to choose: direct, untimed
    if (probe.f16) {
      const half = Trainer.create({ ...cfg, precision: "f16" });
      await half.trainStep(batches[0]);
      assert.equal(half.convChoice, undefined);
      half.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: a run overlapping its steps logs, validates and checkpoints as one that does not",
  ignore,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir();
    try {
      for (const [dir, seeds] of [["data", [1, 2, 3]], ["val", [9]]] as const) {
        await Deno.mkdir(`${tmp}/${dir}`);
        for (const k of seeds) {
          const { width, height, rgb } = testImage(k);
          const data = new Uint8ClampedArray(width * height * 4).fill(255);
          for (let i = 0; i < width * height; i++) data.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
          await Deno.writeFile(
            `${tmp}/${dir}/${k}.png`,
            await encodeImage({ width, height, data }, { format: "png" }),
          );
        }
      }
      const run = (checkpointEvery: number, out: string) =>
        runTraining({
          // winograd set by hand: "auto" would time each run's plans anew, and may choose differently
          config: {
            ...TINY,
            totalSteps: 6,
            logEvery: 1,
            valEvery: 3,
            checkpointEvery,
            valCrop: 32,
            winograd: 0,
          },
          dataDir: `${tmp}/data`,
          valDir: `${tmp}/val`,
          outDir: `${tmp}/${out}`,
          noExport: true,
          codec: imageIoCodec,
        });
      // a checkpoint after every step: no step may start ahead
      const a = await run(1, "a");
      // steps 3 (validation) and 6 (the end) hold, step 1 waits for its plan's check; 2, 4, 5 let
      // the next one start
      const b = await run(100, "b");
      assert.equal(a.overlapped, 0);
      assert.equal(b.overlapped, 3);
      const log = async (out: string) =>
        (await Deno.readTextFile(`${tmp}/${out}/train_log.jsonl`)).trim().split("\n").map((l) =>
          JSON.parse(l)
        )
          .filter((r) => r.type !== "info").map(({ time: _, ...r }) => r);
      assert.deepEqual(await log("b"), await log("a"));
      const [ca, cb] = [
        await readCheckpoint(checkpointPath(`${tmp}/a`)),
        await readCheckpoint(checkpointPath(`${tmp}/b`)),
      ];
      assert.equal(cb.step, 6);
      for (const [k, v] of ca.netG) assert.deepEqual(cb.netG.get(k)!.data, v.data, k);
      for (const [k, v] of ca.netGEma) assert.deepEqual(cb.netGEma.get(k)!.data, v.data, k);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "webgpu: a batch too large for the GPU, or a plan WebGPU rejects, fails before any step, saying so",
  ignore,
  fn: async () => {
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    // G's widest maps hold nf 8 floats per output pixel: enough 64 px crops to pass the binding limit
    const n = Math.ceil(device.limits.maxStorageBufferBindingSize / (8 * 64 * 64 * 4)) + 1;
    const t = Trainer.create({ ...TINY, gtSize: 64, batchSize: n });
    const batch = {
      step: 1,
      n,
      lq: new Float32Array(n * 16 * 16 * 3),
      gt: new Float32Array(n * 64 * 64 * 3),
      lqSize: 16,
      gtSize: 64,
    };
    try {
      await assert.rejects(
        t.trainStep(batch),
        new RegExp(`a batch of ${n} at 64 px is too much for this GPU .*--batch-size`),
      );
      assert.equal(t.step, 0);
      // what WebGPU rejects while the plan is made (one bind group made invalid) fails the step too
      const small = Trainer.create({ ...TINY, winograd: 0 }); // one plan ("auto" would use the other)
      const createBindGroup = device.createBindGroup;
      let broken = false;
      device.createBindGroup = function (this: GPUDevice, d: GPUBindGroupDescriptor) {
        if (broken) return createBindGroup.call(this, d);
        broken = true;
        return createBindGroup.call(this, { ...d, entries: [...d.entries].slice(1) });
      };
      try {
        await assert.rejects(
          small.trainStep(testBatches(TINY, 1)[0]),
          /WebGPU rejected the training step's work/,
        );
      } finally {
        device.createBindGroup = createBindGroup;
        small.dispose();
      }
    } finally {
      t.dispose();
    }
  },
});
