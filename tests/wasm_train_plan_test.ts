/**
 * The CPU training step (core/kernels/wasm_train_plan.ts) against tfjs's autodiff on the cpu
 * backend and train/adam.ts + train/ema.ts: loss, every parameter's gradient (a small net and one
 * at RRDBNet's real widths), the parameters, EMA and moments after two steps, 1 vs 2 threads, and
 * a loss that falls.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { RRDBNetTrainPlanWasm } from "../core/kernels/mod.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { pixelL1 } from "../core/losses/pixel_loss.ts";
import { Adam } from "../train/adam.ts";
import { updateEma } from "../train/ema.ts";

await tf.setBackend("cpu");

const CONFIG: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 2, numGrowCh: 4 };
const BATCH = 2, LQ = 8;

/** max |a - b| / max |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let err = 0, ref = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    err = Math.max(err, Math.abs(a[i] - b[i]));
    ref = Math.max(ref, Math.abs(b[i]));
  }
  return err / (ref || 1);
}

function batch(seed: number, n = BATCH, lqSize = LQ) {
  return tf.tidy(() => {
    const gt = tf.randomUniform([n, 4 * lqSize, 4 * lqSize, 3], 0, 1, "float32", seed) as tf.Tensor4D;
    // a smooth LR (the mean of 4x4 blocks) so that the net has something to learn
    const lq = tf.avgPool(gt, 4, 4, "valid");
    return { lq: lq.dataSync() as Float32Array, gt: gt.dataSync() as Float32Array };
  });
}

/** A net with weights big enough that every path's gradient matters (BasicSR's init scales the body by 0.1). */
function makeNet(seed: number, config = CONFIG): RRDBNet {
  const net = new RRDBNet(config, { seed, trainable: true });
  tf.tidy(() => {
    for (const [name, v] of net.params) {
      if (name.startsWith("body.")) v.assign(tf.mul(v, name.endsWith(".bias") ? 1 : 5));
      if (name.endsWith(".bias")) v.assign(tf.randomNormal(v.shape, 0, 0.05, "float32", seed++));
    }
  });
  return net;
}

function cloneNet(net: RRDBNet): RRDBNet {
  const copy = new RRDBNet(net.config, { seed: 99, trainable: true });
  for (const [name, v] of net.params) copy.params.get(name)!.assign(tf.add(v, 0));
  return copy;
}

function plan(
  net: RRDBNet,
  ema: RRDBNet,
  adam: Adam,
  more: { n?: number; lq?: number; threads?: number } = {},
) {
  return new RRDBNetTrainPlanWasm(net, {
    batch: more.n ?? BATCH,
    lqSize: more.lq ?? LQ,
    ema: ema.params,
    adam,
    emaDecay: 0.9,
    threads: more.threads ?? 2,
  });
}

async function checkGradients(config: RRDBNetConfig, n: number, lqSize: number) {
  const net = makeNet(3, config), ema = cloneNet(net), adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const b = batch(11, n, lqSize);
  const p = plan(net, ema, adam, { n, lq: lqSize });
  try {
    const lq = tf.tensor4d(b.lq, [n, lqSize, lqSize, 3]),
      gt = tf.tensor4d(b.gt, [n, 4 * lqSize, 4 * lqSize, 3]);
    const { value, grads } = tf.variableGrads(() => pixelL1(net.apply(lq), gt), [...net.params.values()]);
    const refLoss = value.dataSync()[0];
    const byVar = new Map([...net.params].map(([k, v]) => [v.name, k]));
    const refGrads = new Map<string, Float32Array>();
    for (const [vn, g] of Object.entries(grads)) refGrads.set(byVar.get(vn)!, g.dataSync() as Float32Array);
    tf.dispose([lq, gt, value, ...Object.values(grads)]);

    const loss = await p.step(b, 1e-3);
    assert.ok(Math.abs(loss - refLoss) <= 1e-5 * refLoss, `loss ${loss} vs tfjs ${refLoss}`);
    const got = p.gradients();
    let worst = 0, worstName = "";
    for (const [name, ref] of refGrads) {
      assert.ok(ref.some((v) => v !== 0), `${name}: the reference gradient is all zero`);
      const e = relErr(got.get(name)!, ref);
      if (e > worst) [worst, worstName] = [e, name];
    }
    assert.equal(refGrads.size, net.params.size);
    console.log(`worst gradient error ${worst.toExponential(2)} (${worstName}); loss ${loss} vs ${refLoss}`);
    assert.ok(worst <= 1e-4, `gradient of ${worstName}: relative error ${worst}`);
  } finally {
    p.dispose();
    for (const x of [adam, net, ema]) x.dispose();
  }
}

Deno.test("CPU training step: loss and every gradient match tfjs's autodiff", async () => {
  await checkGradients(CONFIG, BATCH, LQ);
});

Deno.test("CPU training step: gradients at RRDBNet's real widths (nf 64, gc 32)", async () => {
  await checkGradients({ ...CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
});

/** `steps` planned steps at `lrs`; the net's, EMA's and Adam's values after them. */
async function planned(
  seed: number,
  batches: { lq: Float32Array; gt: Float32Array }[],
  lrs: number[],
  threads = 2,
) {
  const net = makeNet(seed), ema = cloneNet(net), adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const p = plan(net, ema, adam, { threads });
  try {
    const losses = [];
    for (let s = 0; s < batches.length; s++) losses.push(await p.step(batches[s], lrs[s]));
    const grads = p.gradients();
    p.writeBack();
    return { net, ema, adam, losses, grads };
  } finally {
    p.dispose();
  }
}

Deno.test("CPU training step: parameters, EMA and moments after two steps match train/adam.ts", async () => {
  const lrs = [2e-3, 1e-3];
  const batches = [batch(21), batch(22)];
  // reference: autodiff + Adam + EMA, as train/trainer.ts does it
  const ref = makeNet(5), refEma = cloneNet(ref), refAdam = new Adam(ref.params, { betas: [0.9, 0.99] });
  for (let s = 0; s < 2; s++) {
    const b = batches[s];
    const lq = tf.tensor4d(b.lq, [BATCH, LQ, LQ, 3]), gt = tf.tensor4d(b.gt, [BATCH, 4 * LQ, 4 * LQ, 3]);
    const { value, grads } = tf.variableGrads(() => pixelL1(ref.apply(lq), gt), [...ref.params.values()]);
    const byVar = new Map([...ref.params].map(([k, v]) => [v.name, k]));
    refAdam.step(new Map(Object.entries(grads).map(([vn, g]) => [byVar.get(vn)!, g])), lrs[s]);
    updateEma(refEma.params, ref.params, { decay: 0.9 });
    tf.dispose([lq, gt, value, ...Object.values(grads)]);
  }
  const { net, ema, adam } = await planned(5, batches, lrs);
  try {
    assert.equal(adam.t, 2);
    const pairs: [string, Map<string, tf.Variable>, Map<string, tf.Variable>][] = [
      ["params", net.params, ref.params],
      ["ema", ema.params, refEma.params],
      ["m", adam.m, refAdam.m],
      ["v", adam.v, refAdam.v],
    ];
    for (const [what, got, want] of pairs) {
      for (const [name, w] of want) {
        // Adam divides by sqrt(v): where a gradient is tiny its update is sensitive to rounding
        const tol = what === "v" || what === "m" ? 1e-3 : 2e-4;
        const e = relErr(got.get(name)!.dataSync(), w.dataSync());
        assert.ok(e <= tol, `${what} ${name}: relative error ${e}`);
      }
    }
  } finally {
    for (const x of [adam, refAdam, net, ema, ref, refEma]) x.dispose();
  }
});

Deno.test("CPU training step: 1 and 3 threads give the same bits; the loss of a fixed batch falls", async () => {
  const b = batch(31);
  const runs = [];
  for (const threads of [1, 3]) {
    const r = await planned(9, Array(12).fill(b), Array(12).fill(2e-3), threads);
    runs.push(r);
    for (const x of [r.adam, r.net, r.ema]) x.dispose();
  }
  assert.deepEqual(runs[0].losses, runs[1].losses);
  for (const [name, g] of runs[0].grads) assert.deepEqual(runs[1].grads.get(name), g, name);
  const l = runs[0].losses;
  console.log(`loss ${l[0].toFixed(4)} → ${l[l.length - 1].toFixed(4)}`);
  assert.ok(l[l.length - 1] < 0.7 * l[0], `the loss went ${l[0]} → ${l[l.length - 1]}`);
});

Deno.test("CPU training step: clear errors for what it cannot plan", async () => {
  const net = makeNet(1), ema = cloneNet(net), adam = new Adam(net.params);
  try {
    assert.throws(() => plan(net, ema, adam, { lq: 6 }), /LR patch side 6 must be a multiple of 4/);
    assert.throws(
      () => plan(net, ema, adam, { n: 64, lq: 512 }),
      /needs \d+\.\d GiB for a batch of 64 512x512 LR patches, more than wasm's 4 GiB: use a smaller batchSize/,
    );
    const p = plan(net, ema, adam);
    try {
      const b = batch(1);
      await assert.rejects(
        p.step({ lq: b.lq.subarray(1), gt: b.gt }, 1e-3),
        /batch of 383 \/ 6144 values, the plan wants 384 \/ 6144/,
      );
    } finally {
      p.dispose();
    }
  } finally {
    for (const x of [adam, net, ema]) x.dispose();
  }
});
