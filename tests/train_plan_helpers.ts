/**
 * Shared pieces of the planned-training-step tests (WebGPU and CPU plans): a small net whose every
 * path's gradient matters, smooth batches, and the reference steps (tfjs autodiff, train/adam.ts,
 * train/ema.ts) a plan's state is compared with.
 */
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { pixelL1 } from "../core/losses/pixel_loss.ts";
import { Adam } from "../train/adam.ts";
import { updateEma } from "../train/ema.ts";

/** nf 8, 2 blocks, gc 4, x4. */
export const PLAN_CONFIG: RRDBNetConfig = {
  numInCh: 3,
  numOutCh: 3,
  scale: 4,
  numFeat: 8,
  numBlock: 2,
  numGrowCh: 4,
};

/** max |a - b| / max |b|. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let err = 0, ref = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    err = Math.max(err, Math.abs(a[i] - b[i]));
    ref = Math.max(ref, Math.abs(b[i]));
  }
  return err / (ref || 1);
}

/** A batch of n random HR patches and their LR (the mean of 4x4 blocks, so there is something to learn). */
export async function planBatch(seed: number, n: number, lqSize: number) {
  const gt = tf.randomUniform([n, 4 * lqSize, 4 * lqSize, 3], 0, 1, "float32", seed) as tf.Tensor4D;
  const lq = tf.avgPool(gt, 4, 4, "valid");
  const out = { lq: (await lq.data()) as Float32Array, gt: (await gt.data()) as Float32Array };
  tf.dispose([lq, gt]);
  return out;
}

/** A net with weights big enough that every path's gradient matters (BasicSR's init scales the body by 0.1). */
export function makePlanNet(seed: number, config = PLAN_CONFIG): RRDBNet {
  const net = new RRDBNet(config, { seed, trainable: true });
  tf.tidy(() => {
    for (const [name, v] of net.params) {
      if (name.startsWith("body.")) v.assign(tf.mul(v, name.endsWith(".bias") ? 1 : 5));
      if (name.endsWith(".bias")) v.assign(tf.randomNormal(v.shape, 0, 0.05, "float32", seed++));
    }
  });
  return net;
}

export function cloneNet(net: RRDBNet): RRDBNet {
  const copy = new RRDBNet(net.config, { seed: 99, trainable: true });
  for (const [name, v] of net.params) copy.params.get(name)!.assign(tf.add(v, 0));
  return copy;
}

/** A net, its EMA and Adam (betas 0.9/0.99): what a plan and its reference start from. */
export interface TrainState {
  net: RRDBNet;
  ema: RRDBNet;
  adam: Adam;
}

export function trainState(seed: number, config = PLAN_CONFIG): TrainState {
  const net = makePlanNet(seed, config);
  return { net, ema: cloneNet(net), adam: new Adam(net.params, { betas: [0.9, 0.99] }) };
}

export function disposeState(s: TrainState): void {
  for (const x of [s.adam, s.net, s.ema]) x.dispose();
}

/** L1 and its gradient by parameter name, by tfjs's autodiff on the current backend (caller disposes). */
function autodiff(net: RRDBNet, b: { lq: Float32Array; gt: Float32Array }, n: number, lqSize: number) {
  const lq = tf.tensor4d(b.lq, [n, lqSize, lqSize, 3]),
    gt = tf.tensor4d(b.gt, [n, 4 * lqSize, 4 * lqSize, 3]);
  const { value, grads } = tf.variableGrads(() => pixelL1(net.apply(lq), gt), [...net.params.values()]);
  tf.dispose([lq, gt]);
  const byVar = new Map([...net.params].map(([k, v]) => [v.name, k]));
  return { value, grads: new Map(Object.entries(grads).map(([vn, g]) => [byVar.get(vn)!, g])) };
}

/** The loss and each parameter's gradient by tfjs's autodiff (the current backend). */
export async function referenceGradients(
  net: RRDBNet,
  b: { lq: Float32Array; gt: Float32Array },
  n: number,
  lqSize: number,
): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const { value, grads } = autodiff(net, b, n, lqSize);
  const out = new Map<string, Float32Array>();
  for (const [k, g] of grads) out.set(k, (await g.data()) as Float32Array);
  const loss = (await value.data())[0];
  tf.dispose([value, ...grads.values()]);
  assert.equal(out.size, net.params.size);
  return { loss, grads: out };
}

/** A plan's loss and gradients against {@link referenceGradients}'s: within 1e-5 and 1e-4 relative. */
export function assertGradientsMatch(
  loss: number,
  grads: Map<string, Float32Array>,
  ref: { loss: number; grads: Map<string, Float32Array> },
): void {
  assert.ok(Math.abs(loss - ref.loss) <= 1e-5 * ref.loss, `loss ${loss} vs tfjs ${ref.loss}`);
  let worst = 0, worstName = "";
  for (const [name, g] of ref.grads) {
    assert.ok(g.some((v) => v !== 0), `${name}: the reference gradient is all zero`);
    const e = relErr(grads.get(name)!, g);
    if (e > worst) [worst, worstName] = [e, name];
  }
  console.log(`worst gradient error ${worst.toExponential(2)} (${worstName}); loss ${loss} vs ${ref.loss}`);
  assert.ok(worst <= 1e-4, `gradient of ${worstName}: relative error ${worst}`);
}

/** Steps of autodiff + Adam + EMA (decay 0.9), as train/trainer.ts takes them. */
export function referenceSteps(
  seed: number,
  batches: { lq: Float32Array; gt: Float32Array }[],
  lrs: number[],
  n: number,
  lqSize: number,
): TrainState {
  const s = trainState(seed);
  batches.forEach((b, i) => {
    const { value, grads } = autodiff(s.net, b, n, lqSize);
    s.adam.step(grads, lrs[i]);
    updateEma(s.ema.params, s.net.params, { decay: 0.9 });
    tf.dispose([value, ...grads.values()]);
  });
  return s;
}

/** Parameters, EMA and Adam moments of `got` within rounding of `want`'s. */
export async function assertSameState(got: TrainState, want: TrainState): Promise<void> {
  assert.equal(got.adam.t, want.adam.t);
  const pairs: [string, Map<string, tf.Variable>, Map<string, tf.Variable>][] = [
    ["params", got.net.params, want.net.params],
    ["ema", got.ema.params, want.ema.params],
    ["m", got.adam.m, want.adam.m],
    ["v", got.adam.v, want.adam.v],
  ];
  for (const [what, g, w] of pairs) {
    for (const [name, wv] of w) {
      // Adam divides by sqrt(v): where a gradient is tiny its update is sensitive to rounding
      const tol = what === "v" || what === "m" ? 1e-3 : 2e-4;
      const e = relErr((await g.get(name)!.data()) as Float32Array, (await wv.data()) as Float32Array);
      assert.ok(e <= tol, `${what} ${name}: relative error ${e}`);
    }
  }
}
