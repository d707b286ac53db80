/**
 * The planned training step (core/kernels/webgpu_train_plan.ts) against tfjs's autodiff with the
 * stock webgpu kernels and train/adam.ts + train/ema.ts on a small RRDBNet: loss, every
 * parameter's gradient, the updated parameters, EMA and moments after a step, and a loss that
 * falls over steps; mixed precision (f16 maps, where the adapter has shader-f16) against the same,
 * within f16's reach, and its loss scaling. Runs on any WebGPU adapter (Mesa llvmpipe here).
 */
import "@tensorflow/tfjs-backend-webgpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import {
  type ConvPrecision,
  DEFAULT_FILTER_GRAD_VARIANT,
  hasShaderF16,
  RRDBNetTrainPlanWebGPU,
  setFilterGradVariant,
  type StepResult,
  type TrainPlanOptions,
  type WinogradSize,
} from "../core/kernels/mod.ts";
import type { PassBackend } from "../core/kernels/webgpu_pass.ts";
import { EARLY_MAP_DENO, mapStats } from "../core/kernels/webgpu_map.ts";
import { disableCustomWebGPUKernels } from "../core/kernels/register.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { Adam } from "../train/adam.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";
import {
  assertGradientsMatch,
  assertSameState,
  cloneNet,
  disposeState,
  PLAN_CONFIG,
  planBatch,
  referenceGradients,
  referenceSteps,
  type TrainState,
  trainState,
} from "./train_plan_helpers.ts";

const { opts, gpuErrors } = await setUpWebGPU("planned training step tests");
if (!opts.ignore) disableCustomWebGPUKernels();

const BATCH = 2, LQ = 6;
const batch = (seed: number, n = BATCH, lqSize = LQ) => planBatch(seed, n, lqSize);
/** A plan of `s` for batches of BATCH at LQ, EMA decay 0.9, and `options`. */
const planOf = (s: TrainState, options: Partial<TrainPlanOptions> = {}) =>
  new RRDBNetTrainPlanWebGPU(s.net, {
    batch: BATCH,
    lqSize: LQ,
    ema: s.ema.params,
    adam: s.adam,
    emaDecay: 0.9,
    ...options,
  });

Deno.test("planned step: loss and every gradient match tfjs's autodiff", opts, async () => {
  await checkGradients(PLAN_CONFIG, BATCH, LQ);
});

Deno.test(
  "planned step: gradients at RRDBNet's real widths (nf 64, gc 32: other tiles, splits)",
  opts,
  async () => {
    await checkGradients({ ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
  },
);

Deno.test("planned step: gradients with the v2, v3 and v4 filter-gradient kernels", opts, async () => {
  try {
    for (const v of ["v2", "v3", "v4"] as const) {
      setFilterGradVariant(v);
      await checkGradients({ ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
      await checkGradients(PLAN_CONFIG, BATCH, LQ);
    }
  } finally {
    setFilterGradVariant(DEFAULT_FILTER_GRAD_VARIANT);
  }
});

async function checkGradients(config: RRDBNetConfig, n: number, lqSize: number, winograd?: WinogradSize) {
  const { loss, grads, ref, winogradConvs } = await stepAndReference(config, n, lqSize, { winograd });
  // forward, input and filter gradients, all but conv_first's (3 inputs) and conv_last's (3 outputs)
  assert.equal(winogradConvs, winograd ? 3 * (15 * config.numBlock + 4) : 0);
  assertGradientsMatch(loss, grads, ref);
  assert.deepEqual(gpuErrors, []);
}

/** One planned step of a fresh net: its loss and gradients, and tfjs's autodiff's for the same batch. */
async function stepAndReference(
  config: RRDBNetConfig,
  n: number,
  lqSize: number,
  options: { precision?: ConvPrecision; winograd?: WinogradSize } = {},
) {
  const s = trainState(3, config);
  const b = await batch(11, n, lqSize);
  const plan = new RRDBNetTrainPlanWebGPU(s.net, {
    batch: n,
    lqSize,
    ema: s.ema.params,
    adam: s.adam,
    emaDecay: 0.999,
    ...options,
  });
  try {
    assert.ok(plan.dispatches > 0);
    const ref = await referenceGradients(s.net, b, n, lqSize);
    return {
      loss: (await plan.step(b, 1e-3)).loss,
      grads: await plan.gradients(),
      ref,
      winogradConvs: plan.winogradConvs,
    };
  } finally {
    plan.dispose();
    disposeState(s);
  }
}

Deno.test("planned step: parameters, EMA and moments after two steps match train/adam.ts", opts, async () => {
  await checkTwoSteps();
});

Deno.test(
  "planned step, Winograd convolutions (F4x4, F2x2): gradients, and two steps (filters transformed each step)",
  opts,
  async () => {
    for (const m of [4, 2] as const) {
      await checkGradients(PLAN_CONFIG, BATCH, LQ, m);
      await checkTwoSteps(m);
    }
    await checkGradients({ ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4, 4);
    const s = trainState(1);
    try {
      const options = { batch: BATCH, lqSize: LQ, ema: s.ema.params, adam: s.adam, emaDecay: 0.9 };
      assert.throws(
        () => new RRDBNetTrainPlanWebGPU(s.net, { ...options, precision: "f16", winograd: 4 }),
        /winograd runs in f32 only/,
      );
    } finally {
      disposeState(s);
    }
  },
);

async function checkTwoSteps(winograd?: WinogradSize) {
  const lrs = [2e-3, 1e-3];
  const batches = [await batch(21), await batch(22)];
  const ref = referenceSteps(5, batches, lrs, BATCH, LQ);
  const s = trainState(5);
  const plan = planOf(s, { winograd });
  try {
    for (let i = 0; i < 2; i++) await plan.step(batches[i], lrs[i]);
    plan.writeBack();
    await assertSameState(s, ref);
  } finally {
    plan.dispose();
    disposeState(s);
    disposeState(ref);
  }
  assert.deepEqual(gpuErrors, []);
}

Deno.test("planned step: the loss of a fixed batch falls; losses are read early", opts, async () => {
  const before = mapStats.early;
  const { losses } = await fixedBatchLosses("f32");
  console.log(`losses ${losses[0]} → ${losses[29]}`);
  // two staging buffers in turns: each one's first read waits, the other 28 are early where this
  // Deno allows it (core/kernels/webgpu_map.ts); tfjs's reads (the batch's) may add to the count
  const early = mapStats.early - before;
  if (EARLY_MAP_DENO.includes(Deno.version.deno)) assert.ok(early >= 28, `${early} reads early`);
  else assert.equal(early, 0);
  assert.ok(losses.every(Number.isFinite), `losses ${losses}`);
  assert.ok(losses[29] < 0.7 * losses[0], `loss ${losses[0]} → ${losses[29]}`);
  assert.deepEqual(gpuErrors, []);
});

Deno.test("planned step: readAfter holds the loss's read back until it settles", opts, async () => {
  const s = trainState(5);
  const plan = planOf(s);
  try {
    const b = await batch(31);
    const first = await plan.step(b, 1e-3);
    const gate = Promise.withResolvers<void>();
    const reads = mapStats.early + mapStats.awaited;
    let resolved = false;
    const second = plan.step(b, 1e-3, { readAfter: gate.promise }).then((r) => (resolved = true, r));
    // timers run, the step's GPU work with them (it was submitted): its loss is not read
    for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(resolved, false, "the loss resolved before readAfter settled");
    assert.equal(mapStats.early + mapStats.awaited, reads, "the loss was read before readAfter settled");
    gate.resolve();
    const { loss } = await second;
    assert.ok(Number.isFinite(loss) && Number.isFinite(first.loss), `loss ${first.loss} → ${loss}`);
  } finally {
    plan.dispose();
    disposeState(s);
  }
  assert.deepEqual(gpuErrors, []);
});

/** 30 planned steps of a fresh net on one batch at lr 2e-3: their losses, and the steps skipped. */
async function fixedBatchLosses(precision: ConvPrecision): Promise<{ losses: number[]; skipped: number }> {
  const net = new RRDBNet(PLAN_CONFIG, { seed: 7, trainable: true }), ema = cloneNet(net);
  const adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const plan = new RRDBNetTrainPlanWebGPU(net, {
    batch: BATCH,
    lqSize: LQ,
    ema: ema.params,
    adam,
    emaDecay: 0.999,
    precision,
  });
  try {
    const b = await batch(31);
    const losses: number[] = [];
    for (let s = 0; s < 30; s++) losses.push((await plan.step(b, 2e-3)).loss);
    return { losses, skipped: plan.skippedSteps };
  } finally {
    plan.dispose();
    for (const x of [adam, net, ema]) x.dispose();
  }
}

const halfOpts = { ...opts, ignore: opts.ignore || !hasShaderF16(tf.backend() as unknown as PassBackend) };
const REAL_WIDTHS = { ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 };

Deno.test("mixed precision: the gradient within f16's reach of tfjs's autodiff", halfOpts, async () => {
  for (const precision of ["f16", "f16-f32acc"] as const) {
    for (const [config, n, lqSize] of [[PLAN_CONFIG, BATCH, LQ], [REAL_WIDTHS, 2, 4]] as const) {
      const { loss, grads, ref } = await stepAndReference(config, n, lqSize, { precision });
      assert.ok(Math.abs(loss - ref.loss) <= 1e-3 * ref.loss, `${precision}: loss ${loss} vs ${ref.loss}`);
      // f16 maps hold ~3 decimal digits: the body's small gradients, summed from large terms, carry
      // errors of a few percent each (up to 1.9% here); what must hold is the whole gradient's
      // direction and size, and each layer of the tail
      let dot = 0, gg = 0, rr = 0;
      for (const [name, r] of ref.grads) {
        const g = grads.get(name)!;
        let e = 0, rn = 0;
        for (let i = 0; i < r.length; i++) {
          dot += g[i] * r[i], gg += g[i] ** 2, rr += r[i] ** 2;
          e += (g[i] - r[i]) ** 2, rn += r[i] ** 2;
        }
        if (!name.startsWith("body.")) {
          const rel = Math.sqrt(e / rn);
          assert.ok(rel <= 1e-2, `${precision} ${name}: relative L2 error ${rel}`);
        }
      }
      const cosDistance = 1 - dot / Math.sqrt(gg * rr);
      console.log(
        `${precision} nf ${config.numFeat}: 1 - cos ${cosDistance.toExponential(2)}, norm ratio ${
          Math.sqrt(gg / rr)
        }`,
      );
      assert.ok(cosDistance <= 1e-3, `${precision}: 1 - cos(gradient, autodiff's) = ${cosDistance}`);
      assert.ok(
        Math.abs(Math.sqrt(gg / rr) - 1) <= 1e-2,
        `${precision}: gradient norm ratio ${Math.sqrt(gg / rr)}`,
      );
    }
  }
  assert.deepEqual(gpuErrors, []);
});

Deno.test("mixed precision: the loss of a fixed batch falls as in f32", halfOpts, async () => {
  const finals: Record<string, number> = {};
  for (const precision of ["f32", "f16"] as const) {
    const { losses, skipped } = await fixedBatchLosses(precision);
    finals[precision] = losses[29];
    assert.ok(losses[29] < 0.7 * losses[0], `${precision}: loss ${losses[0]} → ${losses[29]}`);
    assert.equal(skipped, 0);
  }
  console.log(`after 30 steps: f32 ${finals.f32}, f16 ${finals.f16}`);
  assert.ok(Math.abs(finals.f16 - finals.f32) <= 0.05 * finals.f32, `f16 ${finals.f16} vs f32 ${finals.f32}`);
});

Deno.test(
  "mixed precision: an overflowing loss scale skips the update and halves the scale",
  halfOpts,
  async () => {
    const s = trainState(5);
    const before = new Map<string, Float32Array>();
    for (const [k, v] of s.net.params) before.set(k, (await v.data()) as Float32Array);
    const plan = planOf(s, { precision: "f16", lossScale: 2 ** 40 }); // far past f16's 65504
    try {
      const b = await batch(41);
      const { loss, lossScale, skipped } = await plan.step(b, 1e-3);
      assert.ok(Number.isFinite(loss));
      assert.deepEqual({ lossScale, skipped }, { lossScale: 2 ** 39, skipped: true });
      assert.equal(plan.skippedSteps, 1);
      assert.equal(plan.lossScale, 2 ** 39);
      assert.equal(plan.t, 0, "Adam's step is not counted");
      plan.writeBack();
      for (const [k, v] of s.net.params) {
        assert.deepEqual((await v.data()) as Float32Array, before.get(k), `${k} changed in a skipped step`);
      }
      // a scale f16 can hold: the next step updates
      plan.lossScale = 2 ** 10;
      await plan.step(b, 1e-3);
      assert.equal(plan.skippedSteps, 1);
      assert.equal(plan.t, 1);
      plan.writeBack();
      const w = (await s.net.params.get("conv_first.weight")!.data()) as Float32Array;
      assert.notDeepEqual(w, before.get("conv_first.weight"));
    } finally {
      plan.dispose();
      disposeState(s);
    }
    assert.deepEqual(gpuErrors, []);
  },
);

Deno.test(
  "mixed precision: steps started one ahead skip, halve and grow the loss scale as awaited steps do",
  halfOpts,
  async () => {
    const batches = await Promise.all([...Array(10).keys()].map((i) => batch(31 + i)));
    // Gradients 4096x larger and a scale that doubles every two good steps: the scale starts above
    // what f16 holds, falls by skipped steps, grows, overflows again (the GPU picks each step's scale
    // and step count while the last step's outcome is still on its way)
    const run = async (ahead: boolean) => {
      const s = trainState(5);
      const plan = planOf(s, { precision: "f16", pixelWeight: 4096, lossScale: 2 ** 18, growthInterval: 2 });
      // each step's scale comes with its result: plan.lossScale may already hold the next step's
      // outcome when the step started ahead reads back before the awaiting code resumes
      const seen: StepResult[] = [];
      try {
        let pending: Promise<StepResult> | undefined;
        for (const b of batches) {
          const next = plan.step(b, 1e-3);
          if (ahead && !pending) {
            pending = next;
            continue;
          }
          if (ahead) {
            assert.throws(() => plan.writeBack(), /before the last step's loss resolved/);
          }
          seen.push(await (pending ?? next));
          pending = ahead ? next : undefined;
        }
        if (pending) seen.push(await pending);
        assert.equal(plan.lossScale, seen.at(-1)!.lossScale);
        plan.writeBack();
        const state = new Map<string, Float32Array>();
        for (const [what, vars] of [["p", s.net.params], ["e", s.ema.params], ["m", s.adam.m]] as const) {
          for (const [k, v] of vars) state.set(`${what} ${k}`, (await v.data()) as Float32Array);
        }
        return { seen, t: plan.t, skipped: plan.skippedSteps, state };
      } finally {
        plan.dispose();
        disposeState(s);
      }
    };
    const awaited = await run(false);
    const ahead = await run(true);
    const scales = awaited.seen.map((x) => Math.log2(x.lossScale!));
    console.log(`loss scales (log2) after each step: ${scales.join(" ")}; skipped ${awaited.skipped}`);
    assert.ok(awaited.skipped >= 2 && awaited.t >= 2, "the run skips steps and takes steps");
    assert.equal(awaited.seen.filter((x) => x.skipped).length, awaited.skipped);
    assert.ok(scales.some((v, i) => i > 0 && v > scales[i - 1]), "the scale grows");
    assert.deepEqual(ahead.seen, awaited.seen);
    assert.equal(ahead.t, awaited.t);
    assert.equal(ahead.skipped, awaited.skipped);
    for (const [k, v] of awaited.state) assert.deepEqual(ahead.state.get(k), v, k);
    assert.deepEqual(gpuErrors, []);
  },
);
