/**
 * The relativistic average GAN losses of ESRGAN (Wang et al. 2018, eq. 1-2), as BasicSR's
 * `ESRGANModel.optimize_parameters` computes them with `GANLoss(gan_type='vanilla')`, i.e.
 * `BCEWithLogitsLoss` (mean over the batch) on relativistic logits:
 *
 *   D_Ra(a, b) = sigmoid(C(a) − mean C(b)), C the discriminator's raw logits.
 *
 * Convention (BasicSR's, the terms averaged rather than summed):
 * - generator:      L_G = ( BCE(C(real) − mean C(fake), 0) + BCE(C(fake) − mean C(real), 1) ) / 2,
 *   with C(real) detached (BasicSR runs `net_d(gt).detach()`); BasicSR then multiplies by
 *   `gan_opt.loss_weight` (5e-3 for ESRGAN) — these functions do NOT apply that weight.
 * - discriminator:  L_D = 0.5·BCE(C(real) − mean C(fake)ᵈ, 1) + 0.5·BCE(C(fake) − mean C(real)ᵈ, 0),
 *   where ᵈ marks the detached term: BasicSR back-propagates the two halves separately, each with
 *   the other side's mean detached. The fake images themselves must be detached from G by the
 *   caller (compute the D loss under `tf.variableGrads(..., dParams)` only, or from a fake batch
 *   computed outside G's gradient).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/**
 * Binary cross-entropy on logits, mean over all elements: max(x, 0) − x·z + log(1 + e^−|x|),
 * which neither overflows for large |x| nor loses precision near 0 (PyTorch's BCEWithLogitsLoss).
 */
export function bceWithLogits(logits: tf.Tensor, target: number | tf.Tensor): tf.Scalar {
  return tf.tidy(() =>
    tf.mean(
      tf.add(tf.sub(tf.relu(logits), tf.mul(logits, target)), tf.log1p(tf.exp(tf.neg(tf.abs(logits))))),
    )
  );
}

/** Identity whose gradient is zero (PyTorch's `.detach()`; tfjs has no stop-gradient op). */
export const stopGradient: <T extends tf.Tensor>(x: T) => T = tf.customGrad(
  // deno-lint-ignore no-explicit-any
  ((x: tf.Tensor) => ({ value: tf.clone(x), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) })) as any,
) as <T extends tf.Tensor>(x: T) => T;

/** The relativistic logit C(a) − mean C(b) (D_Ra before the sigmoid). */
export function relativisticLogits(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.sub(a, tf.mean(b)));
}

/** The two halves of the discriminator loss, for logging as BasicSR's `l_d_real` / `l_d_fake`. */
export interface RaganDiscriminatorTerms {
  /** 0.5·BCE(C(real) − mean C(fake)ᵈ, 1). */
  real: tf.Scalar;
  /** 0.5·BCE(C(fake) − mean C(real)ᵈ, 0). */
  fake: tf.Scalar;
  /** real + fake: the value to minimise. */
  total: tf.Scalar;
}

/** D's loss split as BasicSR logs it (see the module doc for the convention). Dispose all three. */
export function raganDiscriminatorTerms(
  realLogits: tf.Tensor,
  fakeLogits: tf.Tensor,
): RaganDiscriminatorTerms {
  const real = tf.tidy(() =>
    tf.mul(bceWithLogits(relativisticLogits(realLogits, stopGradient(fakeLogits)), 1), 0.5) as tf.Scalar
  );
  const fake = tf.tidy(() =>
    tf.mul(bceWithLogits(relativisticLogits(fakeLogits, stopGradient(realLogits)), 0), 0.5) as tf.Scalar
  );
  return { real, fake, total: tf.add(real, fake) };
}

/**
 * The discriminator's RaGAN loss on its logits for real (HR) and fake (SR) batches:
 * 0.5·BCE(D_Ra(real, fake), 1) + 0.5·BCE(D_Ra(fake, real), 0), each half with the other side's
 * mean detached, as BasicSR's ESRGANModel.
 */
export function raganDiscriminatorLoss(realLogits: tf.Tensor, fakeLogits: tf.Tensor): tf.Scalar {
  return tf.tidy(() => raganDiscriminatorTerms(realLogits, fakeLogits).total);
}

/**
 * The generator's RaGAN loss: (BCE(D_Ra(real, fake), 0) + BCE(D_Ra(fake, real), 1)) / 2 with the
 * real logits detached, as BasicSR's ESRGANModel; multiply by the GAN weight (5e-3) yourself.
 */
export function raganGeneratorLoss(realLogits: tf.Tensor, fakeLogits: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const real = stopGradient(realLogits);
    const lReal = bceWithLogits(relativisticLogits(real, fakeLogits), 0);
    const lFake = bceWithLogits(relativisticLogits(fakeLogits, real), 1);
    return tf.div(tf.add(lReal, lFake), 2) as tf.Scalar;
  });
}
