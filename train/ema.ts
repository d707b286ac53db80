/**
 * Exponential moving average of the generator's weights, as BasicSR's `model_ema`:
 * ema ← decay · ema + (1 − decay) · param, after every optimiser step.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** Moves every `ema` variable towards its namesake in `params`. */
export function updateEma(
  ema: Map<string, tf.Variable>,
  params: Map<string, tf.Variable>,
  options: { decay: number },
): void {
  tf.tidy(() => {
    const d = tf.scalar(options.decay), e = tf.scalar(1 - options.decay);
    for (const [name, p] of params) {
      const v = ema.get(name);
      if (!v) throw new Error(`EMA has no ${name}`);
      v.assign(tf.add(tf.mul(v, d), tf.mul(p, e)));
    }
  });
}

/** Copies every parameter's value into its EMA namesake (BasicSR's `model_ema(0)` at start). */
export function copyInto(dst: Map<string, tf.Variable>, src: Map<string, tf.Variable>): void {
  for (const [name, p] of src) dst.get(name)!.assign(p);
}
