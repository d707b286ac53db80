/**
 * The CPU training step (core/kernels/wasm_train_plan.ts) against tfjs's autodiff on the cpu
 * backend and train/adam.ts + train/ema.ts: loss, every parameter's gradient (a small net and one
 * at RRDBNet's real widths), the parameters, EMA and moments after two steps, 1 vs 3 threads, and
 * a loss that falls.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { RRDBNetTrainPlanWasm } from "../core/kernels/mod.ts";
import type { RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import {
  assertGradientsMatch,
  assertSameState,
  disposeState,
  PLAN_CONFIG,
  planBatch,
  referenceGradients,
  referenceSteps,
  type TrainState,
  trainState,
} from "./train_plan_helpers.ts";

await tf.setBackend("cpu");

const BATCH = 2, LQ = 8;

function plan(s: TrainState, more: { n?: number; lq?: number; threads?: number } = {}) {
  return new RRDBNetTrainPlanWasm(s.net, {
    batch: more.n ?? BATCH,
    lqSize: more.lq ?? LQ,
    ema: s.ema.params,
    adam: s.adam,
    emaDecay: 0.9,
    threads: more.threads ?? 2,
  });
}

async function checkGradients(config: RRDBNetConfig, n: number, lqSize: number) {
  const s = trainState(3, config);
  const b = await planBatch(11, n, lqSize);
  const p = plan(s, { n, lq: lqSize });
  try {
    const ref = await referenceGradients(s.net, b, n, lqSize);
    assertGradientsMatch((await p.step(b, 1e-3)).loss, p.gradients(), ref);
  } finally {
    p.dispose();
    disposeState(s);
  }
}

Deno.test("CPU training step: loss and every gradient match tfjs's autodiff", async () => {
  await checkGradients(PLAN_CONFIG, BATCH, LQ);
});

Deno.test("CPU training step: gradients at RRDBNet's real widths (nf 64, gc 32)", async () => {
  await checkGradients({ ...PLAN_CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
});

/** Planned steps at `lrs` from trainState(seed); the state written back, the losses, the last gradients. */
async function planned(
  seed: number,
  batches: { lq: Float32Array; gt: Float32Array }[],
  lrs: number[],
  threads = 2,
) {
  const s = trainState(seed);
  const p = plan(s, { threads });
  try {
    const losses = [];
    for (let i = 0; i < batches.length; i++) losses.push((await p.step(batches[i], lrs[i])).loss);
    const grads = p.gradients();
    p.writeBack();
    return { state: s, losses, grads };
  } finally {
    p.dispose();
  }
}

Deno.test("CPU training step: parameters, EMA and moments after two steps match train/adam.ts", async () => {
  const lrs = [2e-3, 1e-3];
  const batches = [await planBatch(21, BATCH, LQ), await planBatch(22, BATCH, LQ)];
  const ref = referenceSteps(5, batches, lrs, BATCH, LQ);
  const { state } = await planned(5, batches, lrs);
  try {
    await assertSameState(state, ref);
  } finally {
    disposeState(state);
    disposeState(ref);
  }
});

Deno.test("CPU training step: 1 and 3 threads give the same bits; the loss of a fixed batch falls", async () => {
  const b = await planBatch(31, BATCH, LQ);
  const runs = [];
  for (const threads of [1, 3]) {
    const r = await planned(9, Array(12).fill(b), Array(12).fill(2e-3), threads);
    runs.push(r);
    disposeState(r.state);
  }
  assert.deepEqual(runs[0].losses, runs[1].losses);
  for (const [name, g] of runs[0].grads) assert.deepEqual(runs[1].grads.get(name), g, name);
  const l = runs[0].losses;
  console.log(`loss ${l[0].toFixed(4)} → ${l[l.length - 1].toFixed(4)}`);
  assert.ok(l[l.length - 1] < 0.7 * l[0], `the loss went ${l[0]} → ${l[l.length - 1]}`);
});

Deno.test("CPU training step: clear errors for what it cannot plan", async () => {
  const s = trainState(1);
  try {
    assert.throws(() => plan(s, { lq: 6 }), /LR patch side 6 must be a multiple of 4/);
    assert.throws(
      () => plan(s, { n: 64, lq: 512 }),
      /needs \d+\.\d GiB for a batch of 64 512x512 LR patches, more than wasm's 4 GiB: use a smaller batchSize/,
    );
    const p = plan(s);
    try {
      const b = await planBatch(1, BATCH, LQ);
      await assert.rejects(
        p.step({ lq: b.lq.subarray(1), gt: b.gt }, 1e-3),
        /batch of 383 \/ 6144 values, the plan wants 384 \/ 6144/,
      );
    } finally {
      p.dispose();
    }
  } finally {
    disposeState(s);
  }
});
