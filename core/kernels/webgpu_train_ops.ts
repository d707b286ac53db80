/**
 * The element-wise programs of RRDBNet's planned training step (webgpu_train_plan.ts), beside the
 * 3x3 convolutions of webgpu_conv3x3.ts: the L1 loss and its gradient, the nearest 2x upsampling's
 * gradient (a 2x2 sum, with the LeakyReLU derivative of the layer below fused), a strided add, and
 * Adam fused with the EMA update over all parameters at once. With `half`, maps and map gradients
 * are f16 (shader-f16) and the arithmetic f32; the mixed-precision step's loss scaling lives in
 * {@link l1LossGrad} (scales), {@link checkFinite} (finds overflow) and {@link adamEma} (unscales,
 * skips the update after an overflow). Those three keep two overflow flags, the step's own and the
 * last step's, and take each value that depends on the last step's result in both forms: so a step
 * can be submitted before the last one's flag is read back, and the GPU picks.
 * @module
 */
import type { CustomProgram, Uniform } from "./webgpu_program.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";

type Program = CustomProgram & { uniforms: string; params: Uniform[] };

const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
/** `enable f16;` when half, and the element type of maps: f16 or f32 (vec4 of it with `vec`). */
const maps = (half: boolean, vec = true) => ({
  enable: half ? "enable f16;\n" : "",
  T: vec ? `vec4<${half ? "f16" : "f32"}>` : half ? "f16" : "f32",
  F: vec ? "vec4<f32>" : "f32",
});
const f32 = (v: number): Uniform => ({ type: "float32", data: [v] });

/** Workgroup size of {@link l1LossGrad}: one partial sum per workgroup. */
export const L1_GROUP = 256;

/** Which of the two overflow flags (see the module's comment) are a step's own and the last step's. */
export interface FlagSlots {
  own: number;
  last: number;
}

/**
 * A value of a mixed-precision step that depends on whether the last step overflowed: `ok` if it
 * did not, `skipped` if it did.
 */
export interface Branches<T> {
  ok: T;
  skipped: T;
}

/**
 * `result = (sign(out − gt) · scale + extra) · lossScale` (`extra`: the gradient of G's other
 * losses) and, per workgroup of {@link L1_GROUP}, the partial sum of |out − gt| into `partials`
 * (bindings: result, out, gt, partials, extra). With `half`, `out` and `result` are f16, and the
 * loss scale is `lossScale.ok` or `.skipped` by the last step's overflow flag (one more binding:
 * the flags).
 */
export function l1LossGrad(
  count: number,
  scale: number,
  options: { half?: boolean; lossScale?: Branches<number>; slots?: FlagSlots } = {},
): Program {
  const half = !!options.half;
  const { enable, T } = maps(half, false);
  const lossScale = options.lossScale ?? { ok: 1, skipped: 1 };
  return {
    name: "L1LossGradProgram",
    key: `l1LossGrad:${!!options.half}`,
    source: (prelude) =>
      `${enable}${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> out: array<${T}>;
@group(0) @binding(2) var<storage, read> gt: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read> extra: array<f32>;
${half ? "@group(0) @binding(5) var<storage, read> overflow: array<u32>;" : ""}
@group(0) @binding(${half ? 6 : 5}) var<uniform> u: Uniforms;
var<workgroup> S: array<f32, ${L1_GROUP}>;
@compute @workgroup_size(${L1_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lidx: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
  let i = ${flatIndex(L1_GROUP)};
  var a = 0.0;
  if (i < u.count) {
    let d = f32(out[i]) - gt[i];
    ${
        half
          ? "let lossScale = select(u.lossScale, u.lossScaleSkipped, overflow[u.last] != 0u);"
          : "let lossScale = u.lossScale;"
      }
    result[i] = ${T}((sign(d) * u.scale + extra[i]) * lossScale);
    a = abs(d);
  }
  S[lidx] = a;
  workgroupBarrier();
  for (var s = ${L1_GROUP / 2}u; s > 0u; s = s / 2u) {
    if (lidx < s) { S[lidx] += S[lidx + s]; }
    workgroupBarrier();
  }
  if (lidx == 0u) { partials[wid.x + wid.y * 65535u] = S[0]; }
}`,
    dispatch: dispatch1d(count, L1_GROUP),
    uniforms: "count : i32, scale : f32, lossScale : f32, lossScaleSkipped : f32, last : i32,",
    params: [
      i32(count),
      f32(scale),
      f32(lossScale.ok),
      f32(lossScale.skipped),
      i32(options.slots?.last ?? 0),
    ],
  };
}

/** How many partial sums {@link l1LossGrad} writes for `count` elements. */
export function l1Partials(count: number): number {
  const [x, y] = dispatch1d(count, L1_GROUP);
  return x * y;
}

/**
 * The gradient of a nearest 2x upsampling: `result[n, y, x, c] = Σ src[n, 2y+i, 2x+j, c]`
 * (src [n, 2h, 2w, c]), times LeakyReLU's derivative read off `mask` (the forward activation,
 * [n, h, w, c]) when given. Bindings: result, src, [mask]. c must be a multiple of 4.
 */
export function upsampleGrad(
  size: { n: number; h: number; w: number; c: number },
  mask?: { alpha: number },
  half = false,
): Program {
  const { n, h, w, c } = size;
  if (c % 4) throw new Error(`upsampleGrad: ${c} channels, not a multiple of 4`);
  const count = (n * h * w * c) / 4;
  const { enable, T, F } = maps(half);
  return {
    name: "UpsampleGradProgram",
    key: `upsampleGrad:${!!mask}:${half}`,
    source: (prelude) =>
      `${enable}${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> src: array<${T}>;
${mask ? `@group(0) @binding(2) var<storage, read> mask: array<${T}>;` : ""}
@group(0) @binding(${mask ? 3 : 2}) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex(64)};
  if (i >= u.count) { return; }
  let c4 = i % u.c4; let p = i / u.c4;
  let x = p % u.w; let y = (p / u.w) % u.h; let b = p / (u.w * u.h);
  let row = 2 * u.w * u.c4;
  let at = ((b * 2 * u.h + 2 * y) * 2 * u.w + 2 * x) * u.c4 + c4;
  var v = ${F}(src[at]) + ${F}(src[at + u.c4]) + ${F}(src[at + row]) + ${F}(src[at + row + u.c4]);
  ${mask ? `v = select(v * u.alpha, v, ${F}(mask[i]) > vec4<f32>(0.0));` : ""}
  result[i] = ${T}(v);
}`,
    dispatch: dispatch1d(count),
    uniforms: "count : i32, h : i32, w : i32, c4 : i32, alpha : f32,",
    params: [i32(count), i32(h), i32(w), i32(c / 4), f32(mask?.alpha ?? 1)],
  };
}

/**
 * `result[p, c] = a[p · aStride + c] + b[p · c + c']` for `pixels` pixels of `c` channels
 * (a is a channel slice of a wider buffer). Bindings: result, a, b. c, aStride multiples of 4.
 */
export function addStrided(pixels: number, c: number, aStride: number, half = false): Program {
  if (c % 4 || aStride % 4) throw new Error(`addStrided: ${c} / ${aStride} channels, not multiples of 4`);
  const count = (pixels * c) / 4;
  const { enable, T, F } = maps(half);
  return {
    name: "AddStridedProgram",
    key: `addStrided:${half}`,
    source: (prelude) =>
      `${enable}${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> a: array<${T}>;
@group(0) @binding(2) var<storage, read> b: array<${T}>;
@group(0) @binding(3) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex(64)};
  if (i >= u.count) { return; }
  result[i] = ${T}(${F}(a[(i / u.c4) * u.a4 + i % u.c4]) + ${F}(b[i]));
}`,
    dispatch: dispatch1d(count),
    uniforms: "count : i32, c4 : i32, a4 : i32,",
    params: [i32(count), i32(c / 4), i32(aStride / 4)],
  };
}

/** The uniform block of {@link adamEma}, rewritten before every step (learning rate, step count). */
export const ADAM_EMA_UNIFORMS = "count : i32, oneMinusBeta1 : f32, beta2 : f32, oneMinusBeta2 : f32, " +
  "eps : f32, decay : f32, oneMinusDecay : f32, own : i32, last : i32, " +
  "bc2Sqrt : f32, stepSize : f32, gradScale : f32, bc2SqrtSkipped : f32, stepSizeSkipped : f32, " +
  "gradScaleSkipped : f32,";

/**
 * The values of {@link ADAM_EMA_UNIFORMS} for step `t` (counted from 1) at learning rate `lr`;
 * the gradients are multiplied by `gradScale` first (1 / the loss scale). In mixed precision, `t`
 * and `gradScale` as they are if the last step did not overflow, and in `skipped` as they are if it
 * did; `slots`, the overflow flags of this step and the last.
 */
export function adamEmaParams(
  count: number,
  o: {
    lr: number;
    t: number;
    beta1: number;
    beta2: number;
    eps: number;
    decay: number;
    gradScale?: number;
    skipped?: { t: number; gradScale: number };
    slots?: FlagSlots;
  },
): Uniform[] {
  const branch = (t: number, gradScale = 1) => {
    const bc1 = 1 - Math.pow(o.beta1, t);
    return [Math.sqrt(1 - Math.pow(o.beta2, t)), o.lr / bc1, gradScale].map(f32);
  };
  const skipped = o.skipped ?? { t: o.t, gradScale: o.gradScale ?? 1 };
  return [
    i32(count / 4),
    ...[1 - o.beta1, o.beta2, 1 - o.beta2, o.eps, o.decay, 1 - o.decay].map(f32),
    i32(o.slots?.own ?? 0),
    i32(o.slots?.last ?? 0),
    ...branch(o.t, o.gradScale),
    ...branch(skipped.t, skipped.gradScale),
  ];
}

/**
 * Adam in PyTorch's update order (train/adam.ts), then the EMA of the parameters, over flat
 * buffers of `count` floats (a multiple of 4). Bindings: params (read-write), grads, m, v, ema;
 * with `half` also an f16 copy of the params it writes, and the overflow flags of
 * {@link checkFinite}: when the step's own is set, nothing is updated (the step is skipped); the
 * last step's picks the step count and loss scale (see {@link adamEmaParams}).
 */
export function adamEma(count: number, half = false): Program {
  if (count % 4) throw new Error(`adamEma: ${count} elements, not a multiple of 4`);
  return {
    name: "AdamEmaProgram",
    key: `adamEma:${half}`,
    source: (prelude) =>
      `${half ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> e: array<vec4<f32>>;
${
        half
          ? `@group(0) @binding(5) var<storage, read_write> ph: array<vec4<f16>>;
@group(0) @binding(6) var<storage, read> overflow: array<u32>;`
          : ""
      }
@group(0) @binding(${half ? 7 : 5}) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex(64)};
  if (i >= u.count${half ? " || overflow[u.own] != 0u" : ""}) { return; }
  ${
        half
          ? `let skipped = overflow[u.last] != 0u;
  let gradScale = select(u.gradScale, u.gradScaleSkipped, skipped);
  let bc2Sqrt = select(u.bc2Sqrt, u.bc2SqrtSkipped, skipped);
  let stepSize = select(u.stepSize, u.stepSizeSkipped, skipped);`
          : "let gradScale = u.gradScale; let bc2Sqrt = u.bc2Sqrt; let stepSize = u.stepSize;"
      }
  let gi = g[i] * gradScale;
  let mi = m[i] + (gi - m[i]) * u.oneMinusBeta1;
  let vi = v[i] * u.beta2 + gi * gi * u.oneMinusBeta2;
  let pi = p[i] - mi / (sqrt(vi) / bc2Sqrt + u.eps) * stepSize;
  m[i] = mi;
  v[i] = vi;
  p[i] = pi;
  e[i] = e[i] * u.decay + pi * u.oneMinusDecay;${half ? "\n  ph[i] = vec4<f16>(pi);" : ""}
}`,
    dispatch: dispatch1d(count / 4),
    uniforms: ADAM_EMA_UNIFORMS,
    params: adamEmaParams(count, { lr: 0, t: 1, beta1: 0.9, beta2: 0.99, eps: 1e-8, decay: 0.999 }),
  };
}

/**
 * Sets `flag[own]` to 1 when any of `count` f32 values (a multiple of 4) is infinite or NaN: read
 * as bits, since shader compilers may assume floats are finite. Bindings: flags (this one cleared
 * before), values.
 */
export function checkFinite(count: number, own = 0): Program {
  if (count % 4) throw new Error(`checkFinite: ${count} elements, not a multiple of 4`);
  return {
    name: "CheckFiniteProgram",
    key: "checkFinite",
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> flag: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> values: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex(64)};
  if (i >= u.count) { return; }
  let exponent = values[i] & vec4<u32>(0x7f800000u);
  if (any(exponent == vec4<u32>(0x7f800000u))) { atomicStore(&flag[u.own], 1u); }
}`,
    dispatch: dispatch1d(count / 4),
    uniforms: "count : i32, own : i32,",
    params: [i32(count / 4), i32(own)],
  };
}
