/**
 * The planned training step (core/kernels/webgpu_train_plan.ts) against tfjs's autodiff with the
 * stock webgpu kernels and train/adam.ts + train/ema.ts on a small RRDBNet: loss, every
 * parameter's gradient, the updated parameters, EMA and moments after a step, and a loss that
 * falls over steps. Runs on any WebGPU adapter (Mesa llvmpipe here).
 */
import "@tensorflow/tfjs-backend-webgpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { RRDBNetTrainPlanWebGPU, setFilterGradVariant } from "../core/kernels/mod.ts";
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
  trainState,
} from "./train_plan_helpers.ts";

const { opts, gpuErrors } = await setUpWebGPU("planned training step tests");
if (!opts.ignore) disableCustomWebGPUKernels();

const BATCH = 2, LQ = 6;
const batch = (seed: number, n = BATCH, lqSize = LQ) => planBatch(seed, n, lqSize);

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

Deno.test("planned step: gradients with the v2 and v3 filter-gradient kernels", opts, async () => {
  try {
    for (const v of ["v2", "v3"] as const) {
      setFilterGradVariant(v);
      await checkGradients({ ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
      await checkGradients(PLAN_CONFIG, BATCH, LQ);
    }
  } finally {
    setFilterGradVariant("v1");
  }
});

async function checkGradients(config: RRDBNetConfig, n: number, lqSize: number) {
  const s = trainState(3, config);
  const b = await batch(11, n, lqSize);
  const plan = new RRDBNetTrainPlanWebGPU(s.net, {
    batch: n,
    lqSize,
    ema: s.ema.params,
    adam: s.adam,
    emaDecay: 0.999,
  });
  try {
    assert.ok(plan.dispatches > 0);
    const ref = await referenceGradients(s.net, b, n, lqSize);
    assertGradientsMatch(await plan.step(b, 1e-3), await plan.gradients(), ref);
  } finally {
    plan.dispose();
    disposeState(s);
  }
  assert.deepEqual(gpuErrors, []);
}

Deno.test("planned step: parameters, EMA and moments after two steps match train/adam.ts", opts, async () => {
  const lrs = [2e-3, 1e-3];
  const batches = [await batch(21), await batch(22)];
  const ref = referenceSteps(5, batches, lrs, BATCH, LQ);
  const s = trainState(5);
  const plan = new RRDBNetTrainPlanWebGPU(s.net, {
    batch: BATCH,
    lqSize: LQ,
    ema: s.ema.params,
    adam: s.adam,
    emaDecay: 0.9,
  });
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
});

Deno.test("planned step: the loss of a fixed batch falls", opts, async () => {
  const net = new RRDBNet(PLAN_CONFIG, { seed: 7, trainable: true }), ema = cloneNet(net);
  const adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const plan = new RRDBNetTrainPlanWebGPU(net, {
    batch: BATCH,
    lqSize: LQ,
    ema: ema.params,
    adam,
    emaDecay: 0.999,
  });
  try {
    const b = await batch(31);
    const losses: number[] = [];
    for (let s = 0; s < 30; s++) losses.push(await plan.step(b, 2e-3));
    console.log(`losses ${losses[0]} → ${losses[29]}`);
    assert.ok(losses.every(Number.isFinite), `losses ${losses}`);
    assert.ok(losses[29] < 0.7 * losses[0], `loss ${losses[0]} → ${losses[29]}`);
  } finally {
    plan.dispose();
    for (const x of [adam, net, ema]) x.dispose();
  }
  assert.deepEqual(gpuErrors, []);
});
