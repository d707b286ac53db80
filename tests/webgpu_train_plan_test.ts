/**
 * The planned training step (core/kernels/webgpu_train_plan.ts) against tfjs's autodiff with the
 * stock webgpu kernels and train/adam.ts + train/ema.ts on a small RRDBNet: loss, every
 * parameter's gradient, the updated parameters, EMA and moments after a step, and a loss that
 * falls over steps. Runs on any WebGPU adapter (Mesa llvmpipe here).
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { RRDBNetTrainPlanWebGPU, setFilterGradVariant } from "../core/kernels/mod.ts";
import { disableCustomWebGPUKernels } from "../core/kernels/register.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { pixelL1 } from "../core/losses/pixel_loss.ts";
import { Adam } from "../train/adam.ts";
import { updateEma } from "../train/ema.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";

const { opts, gpuErrors } = await setUpWebGPU("planned training step tests");
if (!opts.ignore) disableCustomWebGPUKernels();

const CONFIG: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 2, numGrowCh: 4 };
const BATCH = 2, LQ = 6;

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

async function batch(seed: number, n = BATCH, lqSize = LQ) {
  const gt = tf.randomUniform([n, 4 * lqSize, 4 * lqSize, 3], 0, 1, "float32", seed) as tf.Tensor4D;
  // a smooth LR (the mean of 4x4 blocks) so that the net has something to learn
  const lq = tf.avgPool(gt, 4, 4, "valid");
  const out = { lq: (await lq.data()) as Float32Array, gt: (await gt.data()) as Float32Array };
  tf.dispose([lq, gt]);
  return out;
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

async function values(vars: Map<string, tf.Variable>): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, v] of vars) out.set(name, (await v.data()) as Float32Array);
  return out;
}

Deno.test("planned step: loss and every gradient match tfjs's autodiff", opts, async () => {
  await checkGradients(CONFIG, BATCH, LQ);
});

Deno.test(
  "planned step: gradients at RRDBNet's real widths (nf 64, gc 32: other tiles, splits)",
  opts,
  async () => {
    await checkGradients({ ...CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
  },
);

Deno.test("planned step: gradients with the v2 and v3 filter-gradient kernels", opts, async () => {
  try {
    for (const v of ["v2", "v3"] as const) {
      setFilterGradVariant(v);
      await checkGradients({ ...CONFIG, numFeat: 64, numGrowCh: 32, numBlock: 1 }, 2, 4);
      await checkGradients(CONFIG, BATCH, LQ);
    }
  } finally {
    setFilterGradVariant("v1");
  }
});

async function checkGradients(config: RRDBNetConfig, n: number, lqSize: number) {
  const net = makeNet(3, config);
  const ema = cloneNet(net);
  const adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const b = await batch(11, n, lqSize);
  const plan = new RRDBNetTrainPlanWebGPU(net, {
    batch: n,
    lqSize,
    ema: ema.params,
    adam,
    emaDecay: 0.999,
  });
  try {
    assert.ok(plan.dispatches > 0);
    const lq = tf.tensor4d(b.lq, [n, lqSize, lqSize, 3]),
      gt = tf.tensor4d(b.gt, [n, 4 * lqSize, 4 * lqSize, 3]);
    const { value, grads } = tf.variableGrads(() => pixelL1(net.apply(lq), gt), [...net.params.values()]);
    const refLoss = (await value.data())[0];
    const byVar = new Map([...net.params].map(([k, v]) => [v.name, k]));
    const refGrads = new Map<string, Float32Array>();
    for (const [vn, g] of Object.entries(grads)) {
      refGrads.set(byVar.get(vn)!, (await g.data()) as Float32Array);
    }
    tf.dispose([lq, gt, value, ...Object.values(grads)]);

    const loss = await plan.step(b, 1e-3);
    assert.ok(Math.abs(loss - refLoss) <= 1e-5 * refLoss, `loss ${loss} vs tfjs ${refLoss}`);
    const got = await plan.gradients();
    let worst = 0, worstName = "";
    for (const [name, ref] of refGrads) {
      const e = relErr(got.get(name)!, ref);
      if (e > worst) [worst, worstName] = [e, name];
      assert.ok(ref.some((v) => v !== 0), `${name}: the reference gradient is all zero`);
    }
    assert.equal(refGrads.size, net.params.size);
    console.log(`worst gradient error ${worst} (${worstName}); loss ${loss} vs ${refLoss}`);
    assert.ok(worst <= 1e-4, `gradient of ${worstName}: relative error ${worst}`);
  } finally {
    plan.dispose();
    adam.dispose();
    net.dispose();
    ema.dispose();
  }
  assert.deepEqual(gpuErrors, []);
}

Deno.test("planned step: parameters, EMA and moments after two steps match train/adam.ts", opts, async () => {
  const lrs = [2e-3, 1e-3];
  const batches = [await batch(21), await batch(22)];
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

  const net = makeNet(5), ema = cloneNet(net), adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const plan = new RRDBNetTrainPlanWebGPU(net, {
    batch: BATCH,
    lqSize: LQ,
    ema: ema.params,
    adam,
    emaDecay: 0.9,
  });
  try {
    for (let s = 0; s < 2; s++) await plan.step(batches[s], lrs[s]);
    plan.writeBack();
    assert.equal(adam.t, 2);
    const pairs: [string, Map<string, tf.Variable>, Map<string, tf.Variable>][] = [
      ["params", net.params, ref.params],
      ["ema", ema.params, refEma.params],
      ["m", adam.m, refAdam.m],
      ["v", adam.v, refAdam.v],
    ];
    for (const [what, got, want] of pairs) {
      const [g, w] = [await values(got), await values(want)];
      for (const [name, wv] of w) {
        // Adam divides by sqrt(v): where a gradient is tiny its update is sensitive to rounding
        const tol = what === "v" || what === "m" ? 1e-3 : 2e-4;
        const e = relErr(g.get(name)!, wv);
        assert.ok(e <= tol, `${what} ${name}: relative error ${e}`);
      }
    }
  } finally {
    plan.dispose();
    for (const x of [adam, refAdam, net, ema, ref, refEma]) x.dispose();
  }
  assert.deepEqual(gpuErrors, []);
});

Deno.test("planned step: the loss of a fixed batch falls", opts, async () => {
  const net = new RRDBNet(CONFIG, { seed: 7, trainable: true }), ema = cloneNet(net);
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
