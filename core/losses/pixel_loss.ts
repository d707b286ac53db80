/**
 * Pixel losses: BasicSR's `L1Loss` (reduction 'mean', loss_weight applied by the caller).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** Mean absolute error between two tensors of the same shape (BasicSR's `L1Loss`). */
export function pixelL1(a: tf.Tensor, b: tf.Tensor): tf.Scalar {
  if (a.shape.join(",") !== b.shape.join(",")) {
    throw new Error(`pixelL1: shapes differ: [${a.shape}] vs [${b.shape}]`);
  }
  return tf.tidy(() => tf.mean(tf.abs(tf.sub(a, b))));
}
