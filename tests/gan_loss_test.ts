import * as tf from "@tensorflow/tfjs-core";
// tfjs-core alone registers no gradients (the @tensorflow/tfjs bundle does)
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../core/backend.ts";
import { VGGStyleDiscriminator } from "../core/discriminator_arch.ts";
import {
  bceWithLogits,
  raganDiscriminatorLoss,
  raganDiscriminatorTerms,
  raganGeneratorLoss,
  stopGradient,
} from "../core/losses/gan_loss.ts";
import { pixelL1 } from "../core/losses/pixel_loss.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");
const HAS_WEBGPU = !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter());
if (!HAS_WEBGPU) console.warn("skipping the webgpu GAN-gradient test: no WebGPU adapter");

const near = (a: number, b: number, tol: number, what: string) =>
  assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);
const nearAll = (a: ArrayLike<number>, b: number[], tol: number, what: string) => {
  assert.equal(a.length, b.length, what);
  for (let i = 0; i < b.length; i++) near(a[i], b[i], tol, `${what}[${i}]`);
};

// By hand: BCE(x, z) = −z·log σ(x) − (1 − z)·log(1 − σ(x)), averaged.
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const bce = (xs: number[], z: number) =>
  xs.reduce((s, x) => s - z * Math.log(sigmoid(x)) - (1 - z) * Math.log(1 - sigmoid(x)), 0) / xs.length;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

const REAL = [1, 2, -0.5];
const FAKE = [0, -1, 0.25];

Deno.test("gan loss: BCE on logits matches the formula and stays finite for large logits", async () => {
  await initBackend("cpu");
  const x = tf.tensor([0.3, -1.2, 2.5, 0]);
  near((await bceWithLogits(x, 1).data())[0], bce([0.3, -1.2, 2.5, 0], 1), 1e-6, "z=1");
  near((await bceWithLogits(x, 0).data())[0], bce([0.3, -1.2, 2.5, 0], 0), 1e-6, "z=0");
  // PyTorch BCEWithLogitsLoss([100, -100], [0, 1]) = 100, ([100, -100], [1, 0]) = 0
  const big = tf.tensor([100, -100]);
  near((await bceWithLogits(big, tf.tensor([0, 1])).data())[0], 100, 1e-4, "wrong and confident");
  near((await bceWithLogits(big, tf.tensor([1, 0])).data())[0], 0, 1e-6, "right and confident");
  tf.dispose([x, big]);
});

Deno.test("gan loss: RaGAN D and G losses match the hand formula and PyTorch (BasicSR convention)", async () => {
  await initBackend("cpu");
  const real = tf.tensor2d(REAL, [3, 1]);
  const fake = tf.tensor2d(FAKE, [3, 1]);
  // D: 0.5·BCE(real − mean fake, 1) + 0.5·BCE(fake − mean real, 0)
  const dReal = 0.5 * bce(REAL.map((r) => r - mean(FAKE)), 1);
  const dFake = 0.5 * bce(FAKE.map((f) => f - mean(REAL)), 0);
  const terms = raganDiscriminatorTerms(real, fake);
  near((await terms.real.data())[0], dReal, 1e-6, "l_d_real");
  near((await terms.fake.data())[0], dFake, 1e-6, "l_d_fake");
  near((await raganDiscriminatorLoss(real, fake).data())[0], dReal + dFake, 1e-6, "l_d");
  // PyTorch (BCEWithLogitsLoss, ESRGANModel's D step): l_d_real 0.19634585, l_d_fake 0.15877111
  near(dReal, 0.19634585, 1e-6, "hand vs PyTorch l_d_real");
  near(dFake, 0.15877111, 1e-6, "hand vs PyTorch l_d_fake");
  // G: (BCE(real − mean fake, 0) + BCE(fake − mean real, 1)) / 2
  const g = (bce(REAL.map((r) => r - mean(FAKE)), 0) + bce(FAKE.map((f) => f - mean(REAL)), 1)) / 2;
  near((await raganGeneratorLoss(real, fake).data())[0], g, 1e-6, "l_g_gan");
  near(g, 1.43845034, 1e-6, "hand vs PyTorch l_g_gan");
  // symmetric sanity: a D that cannot tell them apart has loss log 2 (G: log 2 as well)
  const same = tf.tensor2d([0.7, 0.7], [2, 1]);
  near((await raganDiscriminatorLoss(same, same).data())[0], Math.log(2), 1e-6, "D at chance");
  near((await raganGeneratorLoss(same, same).data())[0], Math.log(2), 1e-6, "G at chance");
  tf.dispose([real, fake, same, terms.real, terms.fake, terms.total]);
});

Deno.test("gan loss: gradients detach as BasicSR's ESRGANModel does", async () => {
  await initBackend("cpu");
  const real = tf.tensor2d(REAL, [3, 1]);
  const fake = tf.tensor2d(FAKE, [3, 1]);
  // PyTorch, ESRGANModel's two D halves (each with the other side's mean detached), backward of the sum
  const [dR, dF] = tf.grads((r: tf.Tensor, f: tf.Tensor) => raganDiscriminatorLoss(r, f))([real, fake]);
  nearAll(await dR.data(), [-0.03711669, -0.01589158, -0.09369608], 1e-6, "dL_D/d real");
  nearAll(await dF.data(), [0.05049012, 0.02297361, 0.05969433], 1e-6, "dL_D/d fake");
  // G: the real logits are detached (net_d(gt).detach()), all of G's gradient goes through fake
  const [gR, gF] = tf.grads((r: tf.Tensor, f: tf.Tensor) => raganGeneratorLoss(r, f))([real, fake]);
  nearAll(await gR.data(), [0, 0, 0], 0, "dL_G/d real");
  nearAll(await gF.data(), [-0.23394176, -0.26145828, -0.22473755], 1e-6, "dL_G/d fake");
  // stopGradient is the identity forward
  nearAll(await stopGradient(real).data(), REAL, 0, "stopGradient value");
  tf.dispose([real, fake, dR, dF, gR, gF]);
});

Deno.test("pixel loss: L1 is the mean absolute error", async () => {
  await initBackend("cpu");
  const a = tf.tensor([0, 0.5, 1, 0.25]);
  const b = tf.tensor([1, 0.5, 0.5, 0]);
  near((await pixelL1(a, b).data())[0], (1 + 0 + 0.5 + 0.25) / 4, 1e-7, "L1");
  assert.throws(() => pixelL1(a, tf.zeros([3])), /shapes differ/);
  tf.dispose([a, b]);
});

for (const backend of ["cpu", "webgpu"] as const) {
  Deno.test({
    name: `gan loss: G's RaGAN gradient through D reaches every G parameter, finite (${backend})`,
    ignore: backend === "webgpu" && !HAS_WEBGPU,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await initBackend(backend);
      const g = new RRDBNet(
        { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 4, numBlock: 1, numGrowCh: 2 },
        { seed: 5, trainable: true },
      );
      const d = new VGGStyleDiscriminator({ numFeat: 4, inputSize: 32 }, { seed: 9 });
      const lq = tf.randomUniform([2, 8, 8, 3], 0, 1, "float32", 1) as tf.Tensor4D;
      const gt = tf.randomUniform([2, 32, 32, 3], 0, 1, "float32", 2) as tf.Tensor4D;
      const { grads, value } = tf.variableGrads(() => {
        const real = d.apply(gt, { training: true });
        const fake = d.apply(g.apply(lq), { training: true });
        return raganGeneratorLoss(real, fake);
      }, [...g.params.values()]);
      assert.ok(Number.isFinite((await value.data())[0]));
      for (const [name, v] of g.params) {
        const gr = await grads[v.name].data();
        assert.ok(gr.every(Number.isFinite), `${name}: non-finite gradient`);
        assert.ok(gr.some((e) => e !== 0), `${name}: zero gradient`);
      }
      tf.dispose([lq, gt, value, ...Object.values(grads)]);
      g.dispose();
      d.dispose();
    },
  });
}
