/**
 * Adam in one WebGPU dispatch per parameter: reads param, grad, m, v and writes the new param
 * and both moments, where tfjs's `AdamOptimizer` runs about ten element-wise kernels per
 * parameter and allocates as many temporaries.
 *
 * The moments are updated in place (they are the optimizer's own variables, nobody else holds
 * their buffers); the new parameter goes to a fresh buffer that `param.assign` adopts, so a
 * tensor sharing the parameter's old buffer (a clone, a reshape) keeps its values.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { runCustomProgram, type WebGPUBackendLike } from "./webgpu_program.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";

/** Adam's hyper-parameters; `step` counts from 1 (bias correction). */
export interface AdamOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  step: number;
}

const SOURCE = (prelude: string, vec: boolean) => {
  const T = vec ? "vec4<f32>" : "f32";
  return `${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> param: array<${T}>;
@group(0) @binding(2) var<storage, read> grad: array<${T}>;
@group(0) @binding(3) var<storage, read_write> m: array<${T}>;
@group(0) @binding(4) var<storage, read_write> v: array<${T}>;
@group(0) @binding(5) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.count) { return; }
  let g = grad[i];
  let mi = u.beta1 * m[i] + (1.0 - u.beta1) * g;
  let vi = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  // lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), eps_t = eps * sqrt(1 - beta2^t): tfjs's form.
  result[i] = param[i] - u.lrT * mi / (sqrt(vi) + u.epsT);
}`;
};

/**
 * One Adam step on the current WebGPU backend: `m`, `v` updated in place, `param` assigned its
 * new value. All four must have the same shape, float32. Matches tfjs's `tf.train.adam` update:
 * m = b1·m + (1-b1)·g, v = b2·v + (1-b2)·g², p -= lr·sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + eps·sqrt(1-b2^t)).
 */
export function adamUpdateWebGPU(
  param: tf.Variable,
  grad: tf.Tensor,
  state: { m: tf.Variable; v: tf.Variable; options: AdamOptions },
): void {
  const { m, v, options } = state;
  if (tf.getBackend() !== "webgpu") throw new Error("adamUpdateWebGPU: the webgpu backend is not active");
  for (const t of [grad, m, v]) {
    if (t.shape.join() !== param.shape.join()) {
      throw new Error(`adamUpdateWebGPU: shape [${t.shape}] differs from the parameter's [${param.shape}]`);
    }
  }
  const { lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, step } = options;
  if (!(step >= 1)) throw new Error(`adamUpdateWebGPU: step must count from 1, got ${step}`);
  const backend = tf.backend() as unknown as WebGPUBackendLike;
  const size = param.size;
  const vec = size % 4 === 0;
  const count = vec ? size / 4 : size;
  const c2 = Math.sqrt(1 - Math.pow(beta2, step));
  const lrT = (lr * c2) / (1 - Math.pow(beta1, step));
  const out = backend.makeTensorInfo(param.shape, "float32");
  runCustomProgram(backend, {
    name: "AdamProgram",
    key: `adam:${vec}`,
    source: (prelude) => SOURCE(prelude, vec),
    dispatch: dispatch1d(count),
    uniforms: "count : i32, beta1 : f32, beta2 : f32, lrT : f32, epsT : f32,",
    params: [
      { type: "int32", data: [count] },
      ...[beta1, beta2, lrT, eps * c2].map((d) => ({ type: "float32" as const, data: [d] })),
    ],
  }, { inputs: [param, grad, m, v], output: out });
  const next = tf.engine().makeTensorFromTensorInfo(out);
  param.assign(next);
  next.dispose();
}

/**
 * Adam over a set of variables with {@link adamUpdateWebGPU}: one dispatch per parameter.
 * `applyGradients` takes what `tf.variableGrads` returns (`grads` by variable name).
 */
export class FusedAdamWebGPU {
  private readonly moments = new Map<string, { m: tf.Variable; v: tf.Variable }>();
  /** Steps taken so far. */
  step = 0;

  constructor(readonly options: Omit<AdamOptions, "step">) {}

  /** Applies one step to every variable that has a gradient, then disposes nothing it was given. */
  applyGradients(
    grads: Record<string, tf.Tensor>,
    variables: Map<string, tf.Variable> | tf.Variable[],
  ): void {
    const byName = variables instanceof Map
      ? variables
      : new Map(variables.map((v) => [v.name, v] as [string, tf.Variable]));
    this.step++;
    for (const [name, param] of byName) {
      const grad = grads[param.name] ?? grads[name];
      if (!grad) continue;
      let mv = this.moments.get(param.name);
      if (!mv) {
        const zeros = () => {
          const z = tf.zerosLike(param);
          const variable = tf.variable(z, false);
          z.dispose();
          return variable;
        };
        mv = { m: zeros(), v: zeros() };
        this.moments.set(param.name, mv);
      }
      adamUpdateWebGPU(param, grad, { ...mv, options: { ...this.options, step: this.step } });
    }
  }

  /** Frees the moment buffers. */
  dispose(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
  }
}
