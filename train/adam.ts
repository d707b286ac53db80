/**
 * Adam with PyTorch's exact update order (`torch.optim.Adam`, no weight decay, no amsgrad), its
 * moments held as tf.Variables per parameter so a checkpoint can store and restore them bit for bit
 * (tfjs's AdamOptimizer keeps its state in a form that is awkward to save exactly).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** Adam hyper-parameters. */
export interface AdamOptions {
  betas?: [number, number];
  eps?: number;
}

/** Adam over a named set of variables. Dispose it when done. */
export class Adam {
  /** Steps taken (PyTorch's `state['step']`). */
  t = 0;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** First and second moments, keyed as the parameters are. */
  readonly m = new Map<string, tf.Variable>();
  readonly v = new Map<string, tf.Variable>();

  constructor(readonly params: Map<string, tf.Variable>, options: AdamOptions = {}) {
    [this.beta1, this.beta2] = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    for (const [name, p] of params) {
      this.m.set(name, tf.variable(tf.zerosLike(p), false, `adam_m/${name}/${p.id}`));
      this.v.set(name, tf.variable(tf.zerosLike(p), false, `adam_v/${name}/${p.id}`));
    }
  }

  /** One update with learning rate `lr`; `grads` maps parameter names (or variable names) to gradients. */
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.t++;
    const bc1 = 1 - Math.pow(this.beta1, this.t);
    const bc2Sqrt = Math.sqrt(1 - Math.pow(this.beta2, this.t));
    tf.tidy(() => {
      const b2 = tf.scalar(this.beta2);
      const c1 = tf.scalar(1 - this.beta1), c2 = tf.scalar(1 - this.beta2);
      const stepSize = tf.scalar(lr / bc1), bc2 = tf.scalar(bc2Sqrt), eps = tf.scalar(this.eps);
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) throw new Error(`Adam: no gradient for ${name}`);
        const m = this.m.get(name)!, v = this.v.get(name)!;
        // m.lerp_(g, 1 - b1) in PyTorch is m + (g - m)(1 - b1); v = b2 v + (1 - b2) g²
        const m2 = tf.add(m, tf.mul(tf.sub(g, m), c1));
        const v2 = tf.add(tf.mul(v, b2), tf.mul(tf.mul(g, g), c2));
        const denom = tf.add(tf.div(tf.sqrt(v2), bc2), eps);
        p.assign(tf.sub(p, tf.mul(tf.div(m2, denom), stepSize)));
        m.assign(m2);
        v.assign(v2);
      }
    });
  }

  dispose(): void {
    for (const x of [...this.m.values(), ...this.v.values()]) x.dispose();
    this.m.clear();
    this.v.clear();
  }
}
