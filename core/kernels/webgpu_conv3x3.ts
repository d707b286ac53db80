/**
 * 3x3, stride 1, 'same' convolutions for tfjs's WebGPU backend, NHWC float32: the forward pass
 * as an implicit GEMM (pixels x taps·channels times taps·channels x out-channels) tiled through
 * workgroup memory with vec4 loads, bias / activation / residuals fused into the store, and the
 * two gradients (input: the same kernel on a flipped, transposed filter; filter: a GEMM that
 * reduces over pixels, split over workgroups and summed by a second small pass).
 *
 * Beyond what tfjs's ops can express, the forward kernel reads its input from two buffers (the
 * dense block's concatenation without copies: block input + grown channels), writes into a
 * channel slice of a wider buffer, may read its input through a nearest 2x upsampling, and adds
 * up to two scaled residuals (RRDB's `x5 * 0.2 + x`, and the outer `* 0.2 + x`).
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import {
  type CustomProgram,
  runCustomProgram,
  type Uniform,
  type WebGPUBackendLike,
} from "./webgpu_program.ts";

/** Activations the kernels fuse. */
export type Activation = "linear" | "relu" | "leakyrelu";

/** What a forward 3x3 convolution reads and writes (all buffers NHWC, channels innermost). */
export interface Conv3x3Spec {
  /** Batch and output height / width (the input's, or twice it with `upsample`). */
  n: number;
  h: number;
  w: number;
  /** Input channels taken from `x0`, and its channel stride (its last dimension). */
  c0: number;
  x0Stride: number;
  /** Input channels taken from `x1` after those of `x0` (0: none), and its channel stride. */
  c1?: number;
  x1Stride?: number;
  /** `x1` is the output buffer itself (the dense block's growth buffer). */
  x1IsOutput?: boolean;
  cout: number;
  /** The output's channel stride and the first channel written (a slice of a wider buffer). */
  outStride?: number;
  outOffset?: number;
  bias?: boolean;
  activation?: Activation;
  alpha?: number;
  /** `out = out * res1Scale + x0[pixel, co]` (needs cout <= c0, no upsample). */
  res1Scale?: number;
  /** `out = out * res2Scale + res2[pixel, co]`, res2 being the last input, stride res2Stride. */
  res2Scale?: number;
  res2Stride?: number;
  /** Read the input through a nearest-neighbour 2x upsampling (input is h/2 x w/2). */
  upsample?: boolean;
  /**
   * The filter input is [3, 3, cout, cin]: use it flipped spatially with its channel axes swapped
   * (the input gradient's filter), read in place rather than transposed by another dispatch.
   */
  flipTransposed?: boolean;
}

/**
 * Tile sizes: output rows (pixels) and columns (channels) per workgroup, the reduction step, and
 * how many slices of the reduction a workgroup's threads share out (summed at the end): more
 * threads per output tile when the image is too small to fill the GPU with tiles alone.
 */
export interface ConvTile {
  bm: number;
  bn: number;
  bk: number;
  ks: number;
}

let tileOverride: Partial<ConvTile> | null = null;

/** Forces tile sizes (for tuning on a GPU); null restores the built-in choice. */
export function setConvTileOverride(tile: Partial<ConvTile> | null): void {
  tileOverride = tile;
}

const MAX_DISPATCH = 65535;
/** Threads a launch should have to keep a large GPU busy (H100/H200: 132 SMs x 2048). */
const TARGET_THREADS = 65536;

function chooseTile(m: number, cout: number, cin: number, vec: boolean): ConvTile {
  const bn = cout > 32 ? 64 : cout > 16 ? 32 : cout > 8 || vec ? 16 : Math.max(4, Math.ceil(cout / 4) * 4);
  const nTiles = Math.ceil(cout / bn);
  // Fewer rows per workgroup when the image is small, so a big GPU still gets enough workgroups.
  const bm = Math.ceil(m / 64) * nTiles >= 256 ? 64 : 32;
  const bk = vec ? 16 : 8;
  const threads = Math.ceil(m / bm) * nTiles * (bm / 4) * (bn / 4);
  const chunks = 9 * Math.ceil(cin / bk);
  let ks = 1;
  while (ks < 4 && threads * ks < TARGET_THREADS && chunks >= 4 * ks) ks *= 2;
  return { bm, bn, bk, ks, ...tileOverride };
}

const actSnippet = (act: Activation) =>
  act === "relu"
    ? "v = max(v, vec4<f32>(0.0));"
    : act === "leakyrelu"
    ? "v = select(v * u.alpha, v, v >= vec4<f32>(0.0));"
    : "";

/**
 * WGSL of the forward kernel for one combination of compile-time choices. Workgroup tiles are
 * only ever written as whole vec4s by one thread: component stores from several threads into
 * one vec4 race (seen losing updates on llvmpipe).
 */
function forwardSource(
  prelude: string,
  o: {
    vec: boolean;
    tile: ConvTile;
    two: boolean;
    x1IsOutput: boolean;
    bias: boolean;
    act: Activation;
    res1: boolean;
    res2: boolean;
    upsample: boolean;
    flipT: boolean;
  },
): string {
  const { bm, bn, bk, ks } = o.tile;
  const T = o.vec ? "vec4<f32>" : "f32";
  const nt = (bm / 4) * (bn / 4);
  // Per slice: an A tile of bm rows x bk/4 vec4s (+1 of padding against bank conflicts), then a
  // B tile of bk rows x bn/4 vec4s. After the loop the same memory takes the slices' partial sums.
  const ast = bk / 4 + 1;
  const aSize = bm * ast, bSize = (bk * bn) / 4, slice = aSize + bSize;
  const shared = Math.max(ks * slice, (ks - 1) * nt * 4);
  const aUnits = (bm * bk) / 4, bUnits = (bk * bn) / 4;
  const sa = Math.ceil(aUnits / nt), sb = Math.ceil(bUnits / nt);
  let b = 1;
  const bind = (name: string, access: string) =>
    `@group(0) @binding(${b++}) var<storage, ${access}> ${name}: array<${T}>;`;
  const decls = [
    `@group(0) @binding(0) var<storage, read_write> result: array<${T}>;`,
    bind("x0", "read"),
    o.two && !o.x1IsOutput ? bind("x1", "read") : "",
    bind("W", "read"),
    o.bias ? bind("bias", "read") : "",
    o.res2 ? bind("res2", "read") : "",
    `@group(0) @binding(${b}) var<uniform> u: Uniforms;`,
  ].join("\n");
  const x1 = o.x1IsOutput ? "result" : "x1";
  const div = o.vec ? 4 : 1;
  // Reads input channel c (c..c+3 in vec mode) of pixel p.
  const readX = o.two
    ? `if (c < u.c0) { return x0[(p * u.x0Stride + c) / ${div}]; }
  return ${x1}[(p * u.x1Stride + c - u.c0) / ${div}];`
    : `return x0[(p * u.x0Stride + c) / ${div}];`;
  const loadA = o.vec
    ? "v = readX(p, c);"
    : [0, 1, 2, 3].map((j) => `if (c + ${j} < cin) { v[${j}] = readX(p, c + ${j}); }`).join(" ");
  // Flipped and transposed: element (tap, ci, co) of the filter we want is W[8 - tap][co][ci].
  const flipIdx = (j: number) => `((8 - tap) * u.cout + col + ${j}) * cin + cb + kr`;
  const flipRead = (j: number) => (o.vec ? `W[i${j} / 4][i${j} % 4]` : `W[i${j}]`);
  const loadB = o.flipT
    ? [0, 1, 2, 3].map((j) =>
      `if (col + ${j} < u.cout) { let i${j} = ${flipIdx(j)}; v[${j}] = ${flipRead(j)}; }`
    )
      .join("\n        ")
    : o.vec
    ? "if (col < u.cout) { v = W[(row * u.cout + col) / 4]; }"
    : [0, 1, 2, 3].map((j) => `if (col + ${j} < u.cout) { v[${j}] = W[row * u.cout + col + ${j}]; }`).join(
      " ",
    );
  const loopB = `for (var s = 0; s < ${sb}; s++) {
      let l = s * NT + tid;
      let kr = l / ${bn / 4};
      let col = n0 + (l % ${bn / 4}) * 4;
      let row = tap * cin + cb + kr;
      var v = vec4<f32>(0.0);
      if (live && cb + kr < cin && l < ${bUnits}) { ${loadB} }
      if (l < ${bUnits}) { Sh[bBase + l] = v; }
    }`;
  // The flipped filter in vec mode: 4x4 blocks, read as 4 vec4s along the (new) input channels,
  // which are contiguous in W, and transposed in registers into 4 whole rows of the B tile.
  const blocks = (bk / 4) * (bn / 4);
  const flipLoopB = `for (var s = 0; s < ${Math.ceil(blocks / nt)}; s++) {
      let l = s * NT + tid;
      let kq = l / ${bn / 4}; let nq = l % ${bn / 4};
      let col = n0 + nq * 4; let o0 = cb + kq * 4;
      var v0 = vec4<f32>(0.0); var v1 = vec4<f32>(0.0); var v2 = vec4<f32>(0.0); var v3 = vec4<f32>(0.0);
      if (live && l < ${blocks} && o0 < cin) {
        let base = (8 - tap) * u.cout + col;
        if (col < u.cout) { v0 = W[(base * cin + o0) / 4]; }
        if (col + 1 < u.cout) { v1 = W[((base + 1) * cin + o0) / 4]; }
        if (col + 2 < u.cout) { v2 = W[((base + 2) * cin + o0) / 4]; }
        if (col + 3 < u.cout) { v3 = W[((base + 3) * cin + o0) / 4]; }
      }
      if (l < ${blocks}) {
        Sh[bBase + (kq * 4 + 0) * ${bn / 4} + nq] = vec4<f32>(v0.x, v1.x, v2.x, v3.x);
        Sh[bBase + (kq * 4 + 1) * ${bn / 4} + nq] = vec4<f32>(v0.y, v1.y, v2.y, v3.y);
        Sh[bBase + (kq * 4 + 2) * ${bn / 4} + nq] = vec4<f32>(v0.z, v1.z, v2.z, v3.z);
        Sh[bBase + (kq * 4 + 3) * ${bn / 4} + nq] = vec4<f32>(v0.w, v1.w, v2.w, v3.w);
      }
    }`;
  const loadVec4 = (arr: string, idx: string, col: string) =>
    o.vec
      ? `${arr}[(${idx}) / 4]`
      : `vec4<f32>(${
        [0, 1, 2, 3].map((j) => `select(0.0, ${arr}[${idx} + ${j}], ${col} + ${j} < u.cout)`).join(", ")
      })`;
  const write = o.vec
    ? `result[(m * u.outStride + u.outOffset + col) / 4] = v;`
    : [0, 1, 2, 3].map((j) =>
      `if (col + ${j} < u.cout) { result[m * u.outStride + u.outOffset + col + ${j}] = v[${j}]; }`
    )
      .join("\n    ");
  const reduce = ks === 1 ? "" : `
  // Sum the reduction slices' partial results through workgroup memory.
  if (sl > 0) { for (var i = 0; i < 4; i++) { Sh[((sl - 1) * NT + tid) * 4 + i] = acc[i]; } }
  workgroupBarrier();
  if (sl > 0) { return; }
  for (var s = 1; s < KS; s++) {
    for (var i = 0; i < 4; i++) { acc[i] += Sh[((s - 1) * NT + tid) * 4 + i]; }
  }`;
  return `${prelude}
${decls}
const BM = ${bm}; const BN = ${bn}; const BK = ${bk}; const NT = ${nt}; const KS = ${ks}; const AST = ${ast};
var<workgroup> Sh: array<vec4<f32>, ${shared}>;

fn readX(p: i32, c: i32) -> ${T} {
  ${readX}
}

@compute @workgroup_size(${nt * ks})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let sl = i32(lidx) / NT;
  let tid = i32(lidx) % NT;
  let aBase = sl * ${slice};
  let bBase = aBase + ${aSize};
  let mTile = i32(wid.y + wid.z * ${MAX_DISPATCH}u);
  if (mTile >= u.mTiles) { return; }
  let m0 = mTile * BM;
  let n0 = i32(wid.x) * BN;
  let hw = u.h * u.w;
  let cin = u.c0 + u.c1;
  // Each thread loads the same rows of every A tile: find their pixels once.
  var rowN: array<i32, ${sa}>; var rowY: array<i32, ${sa}>; var rowX: array<i32, ${sa}>;
  for (var s = 0; s < ${sa}; s++) {
    let l = s * NT + tid;
    let m = m0 + l / ${bk / 4};
    rowN[s] = select(-1, m / hw, m < u.M && l < ${aUnits});
    let rem = m % hw;
    rowY[s] = rem / u.w; rowX[s] = rem % u.w;
  }
  let tx = tid % ${bn / 4}; let ty = tid / ${bn / 4};
  var acc: array<vec4<f32>, 4>;
  // Chunks of the reduction: 9 taps x ceil(cin / BK) channel blocks, dealt round-robin to the slices.
  let nCb = (cin + BK - 1) / BK;
  let chunks = 9 * nCb;
  let rounds = (chunks + KS - 1) / KS;
  for (var rd = 0; rd < rounds; rd++) {
    let q = rd * KS + sl;
    let live = q < chunks;
    let tap = q / nCb;
    let cb = (q % nCb) * BK;
    let dy = tap / 3 - 1; let dx = tap % 3 - 1;
    for (var s = 0; s < ${sa}; s++) {
      let l = s * NT + tid;
      let kq = l % ${bk / 4};
      let iy = rowY[s] + dy; let ix = rowX[s] + dx;
      var v = vec4<f32>(0.0);
      let c = cb + kq * 4;
      if (live && rowN[s] >= 0 && iy >= 0 && iy < u.h && ix >= 0 && ix < u.w && c < cin) {
        ${
    o.upsample
      ? "let p = (rowN[s] * u.inH + iy / 2) * u.inW + ix / 2;"
      : "let p = (rowN[s] * u.inH + iy) * u.inW + ix;"
  }
        ${loadA}
      }
      if (l < ${aUnits}) { Sh[aBase + (l / ${bk / 4}) * AST + kq] = v; }
    }
    ${o.flipT && o.vec ? flipLoopB : loopB}
    workgroupBarrier();
    if (live) {
      for (var k4 = 0; k4 < ${bk / 4}; k4++) {
        let b0 = Sh[bBase + (k4 * 4 + 0) * ${bn / 4} + tx];
        let b1 = Sh[bBase + (k4 * 4 + 1) * ${bn / 4} + tx];
        let b2 = Sh[bBase + (k4 * 4 + 2) * ${bn / 4} + tx];
        let b3 = Sh[bBase + (k4 * 4 + 3) * ${bn / 4} + tx];
        for (var i = 0; i < 4; i++) {
          let a = Sh[aBase + (ty * 4 + i) * AST + k4];
          acc[i] += a.x * b0 + a.y * b1 + a.z * b2 + a.w * b3;
        }
      }
    }
    workgroupBarrier();
  }
  ${reduce}
  let col = n0 + tx * 4;
  if (col >= u.cout) { return; }
  ${o.bias ? `let bv = ${loadVec4("bias", "col", "col")};` : ""}
  for (var i = 0; i < 4; i++) {
    let m = m0 + ty * 4 + i;
    if (m >= u.M) { break; }
    var v = acc[i];
    ${o.bias ? "v += bv;" : ""}
    ${actSnippet(o.act)}
    ${o.res1 ? `v = v * u.res1Scale + ${loadVec4("x0", "m * u.x0Stride + col", "col")};` : ""}
    ${o.res2 ? `v = v * u.res2Scale + ${loadVec4("res2", "m * u.res2Stride + col", "col")};` : ""}
    ${write}
  }
}`;
}

const FORWARD_UNIFORMS =
  "n : i32, h : i32, w : i32, inH : i32, inW : i32, c0 : i32, x0Stride : i32, c1 : i32, " +
  "x1Stride : i32, cout : i32, outStride : i32, outOffset : i32, res2Stride : i32, M : i32, mTiles : i32, " +
  "alpha : f32, res1Scale : f32, res2Scale : f32,";

/** The program (shader choice, launch size, uniforms) of one forward convolution. */
export function conv3x3Program(spec: Conv3x3Spec): CustomProgram & { uniforms: string; params: Uniform[] } {
  const c1 = spec.c1 ?? 0;
  const outStride = spec.outStride ?? spec.cout;
  const outOffset = spec.outOffset ?? 0;
  const x1Stride = spec.x1Stride ?? Math.max(c1, 1);
  const res2Stride = spec.res2Stride ?? spec.cout;
  const res1 = spec.res1Scale !== undefined, res2 = spec.res2Scale !== undefined;
  if (res1 && (spec.upsample || spec.cout > spec.c0)) {
    throw new Error("conv3x3: res1 needs cout <= c0, no upsample");
  }
  const vec = [spec.c0, spec.x0Stride, c1, x1Stride, spec.cout, outStride, outOffset, res2Stride].every((v) =>
    v % 4 === 0
  );
  const m = spec.n * spec.h * spec.w;
  const tile = chooseTile(m, spec.cout, spec.c0 + c1, vec);
  const o = {
    vec,
    tile,
    two: c1 > 0,
    x1IsOutput: c1 > 0 && !!spec.x1IsOutput,
    bias: !!spec.bias,
    act: spec.activation ?? "linear",
    res1,
    res2,
    upsample: !!spec.upsample,
    flipT: !!spec.flipTransposed,
  };
  const mTiles = Math.ceil(m / tile.bm);
  const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
  const f32 = (v: number): Uniform => ({ type: "float32", data: [v] });
  const inH = spec.upsample ? spec.h / 2 : spec.h, inW = spec.upsample ? spec.w / 2 : spec.w;
  const params = [
    ...[spec.n, spec.h, spec.w, inH, inW, spec.c0, spec.x0Stride, c1, x1Stride, spec.cout].map(i32),
    ...[outStride, outOffset, res2Stride, m, mTiles].map(i32),
    f32(spec.alpha ?? 0.2),
    f32(spec.res1Scale ?? 1),
    f32(spec.res2Scale ?? 1),
  ];
  return {
    name: "Conv3x3Program",
    key: `conv3x3:${JSON.stringify(o)}`,
    source: (prelude) => forwardSource(prelude, o),
    dispatch: [
      Math.ceil(spec.cout / tile.bn),
      Math.min(mTiles, MAX_DISPATCH),
      Math.ceil(mTiles / MAX_DISPATCH),
    ],
    uniforms: FORWARD_UNIFORMS,
    params,
  };
}

/**
 * Records one forward 3x3 convolution. Inputs in order: x0, x1 (unless absent or the output),
 * filter (HWIO, [3, 3, c0 + c1, cout]), bias, res2. Writes into `output` (created when absent,
 * shape [n, h, w, cout]) and returns it.
 */
export function conv3x3Forward(
  backend: WebGPUBackendLike,
  spec: Conv3x3Spec,
  io: { inputs: tf.TensorInfo[]; output?: tf.TensorInfo },
): tf.TensorInfo {
  const output = io.output ?? backend.makeTensorInfo([spec.n, spec.h, spec.w, spec.cout], "float32");
  return runCustomProgram(backend, conv3x3Program(spec), { inputs: io.inputs, output });
}

/** dL/dx of a 3x3 'same' convolution: the forward kernel over dy with the flipped, transposed filter. */
export function conv3x3BackpropInput(
  backend: WebGPUBackendLike,
  dy: tf.TensorInfo,
  filter: tf.TensorInfo,
): tf.TensorInfo {
  const [n, h, w, co] = dy.shape;
  const ci = filter.shape[2];
  return conv3x3Forward(backend, { n, h, w, c0: co, x0Stride: co, cout: ci, flipTransposed: true }, {
    inputs: [dy, filter],
  });
}

function filterGradSource(
  prelude: string,
  o: { vec: boolean; bk: number; bn: number; br: number; split: boolean },
) {
  const { bk, bn, br } = o;
  const T = o.vec ? "vec4<f32>" : "f32";
  const nt = (bk / 4) * (bn / 4);
  // Load units: 4 consecutive k (taps·channels) of one pixel, 4 consecutive out-channels of one pixel.
  const xUnits = (br * bk) / 4, dUnits = (br * bn) / 4;
  const sx = Math.ceil(xUnits / nt), sd = Math.ceil(dUnits / nt);
  // Element k (or k..k+3, one tap, in vec mode) of pixel (n, y, xx)'s im2col row.
  const readXAt = (k: string, target: string) =>
    `{
          let tap = ${k} / u.cin; let c = ${k} % u.cin;
          let iy = y + tap / 3 - 1; let ix = xx + tap % 3 - 1;
          if (${k} < K && iy >= 0 && iy < u.h && ix >= 0 && ix < u.w) {
            ${target} = x[(((n * u.h + iy) * u.w + ix) * u.cin + c) / ${o.vec ? 4 : 1}];
          }
        }`;
  const loadX = o.vec
    ? readXAt("k", "v")
    : [0, 1, 2, 3].map((j) => readXAt(`(k + ${j})`, `v[${j}]`)).join("\n        ");
  const loadD = o.vec
    ? "if (col < u.cout) { v = dy[(m * u.cout + col) / 4]; }"
    : [0, 1, 2, 3].map((j) => `if (col + ${j} < u.cout) { v[${j}] = dy[m * u.cout + col + ${j}]; }`).join(
      " ",
    );
  const write = o.vec
    ? `result[(base + k * u.cout + col) / 4] = acc[i];`
    : [0, 1, 2, 3].map((j) =>
      `if (col + ${j} < u.cout) { result[base + k * u.cout + col + ${j}] = acc[i][${j}]; }`
    )
      .join("\n    ");
  return `${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> dy: array<${T}>;
@group(0) @binding(3) var<uniform> u: Uniforms;
var<workgroup> Xs: array<vec4<f32>, ${xUnits}>;
var<workgroup> Ds: array<vec4<f32>, ${dUnits}>;

@compute @workgroup_size(${nt})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = i32(lidx);
  let k0 = i32(wid.y) * ${bk};
  let n0 = i32(wid.x) * ${bn};
  let K = 9 * u.cin;
  let hw = u.h * u.w;
  let mBegin = i32(wid.z) * u.mPerSplit;
  let mEnd = min(u.M, mBegin + u.mPerSplit);
  let tn = tid % ${bn / 4}; let tk = tid / ${bn / 4};
  var acc: array<vec4<f32>, 4>;
  for (var mb = mBegin; mb < mEnd; mb += ${br}) {
    for (var s = 0; s < ${sx}; s++) {
      let l = s * ${nt} + tid;
      let m = mb + l / ${bk / 4};
      let k = k0 + (l % ${bk / 4}) * 4;
      var v = vec4<f32>(0.0);
      if (m < mEnd && l < ${xUnits}) {
        let n = m / hw; let rem = m % hw;
        let y = rem / u.w; let xx = rem % u.w;
        ${loadX}
      }
      if (l < ${xUnits}) { Xs[l] = v; }
    }
    for (var s = 0; s < ${sd}; s++) {
      let l = s * ${nt} + tid;
      let m = mb + l / ${bn / 4};
      let col = n0 + (l % ${bn / 4}) * 4;
      var v = vec4<f32>(0.0);
      if (m < mEnd && l < ${dUnits}) { ${loadD} }
      if (l < ${dUnits}) { Ds[l] = v; }
    }
    workgroupBarrier();
    for (var r = 0; r < ${br}; r++) {
      let a = Xs[r * ${bk / 4} + tk];
      let d = Ds[r * ${bn / 4} + tn];
      acc[0] += a.x * d; acc[1] += a.y * d; acc[2] += a.z * d; acc[3] += a.w * d;
    }
    workgroupBarrier();
  }
  let col = n0 + tn * 4;
  if (col >= u.cout) { return; }
  let base = ${o.split ? "i32(wid.z) * K * u.cout" : "0"};
  for (var i = 0; i < 4; i++) {
    let k = k0 + tk * 4 + i;
    if (k >= K) { break; }
    ${write}
  }
}`;
}

/** Sums `parts` [S, ...] over its first axis into [shape]. */
function sumSplits(backend: WebGPUBackendLike, parts: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  const size = shape.reduce((a, b) => a * b, 1);
  const splits = parts.shape[0];
  const vec = size % 4 === 0;
  const T = vec ? "vec4<f32>" : "f32";
  const count = vec ? size / 4 : size;
  const output = backend.makeTensorInfo(shape, "float32");
  return runCustomProgram(backend, {
    name: "SumSplitsProgram",
    key: `sumSplits:${vec}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> parts: array<${T}>;
@group(0) @binding(2) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = i32(gid.x);
  if (i >= u.count) { return; }
  var s = ${T}(0.0);
  for (var p = 0; p < u.splits; p++) { s += parts[p * u.count + i]; }
  result[i] = s;
}`,
    dispatch: [Math.ceil(count / 64), 1, 1],
    uniforms: "count : i32, splits : i32,",
    params: [count, splits].map((v) => ({ type: "int32", data: [v] })),
  }, { inputs: [parts], output });
}

/** dL/dW of a 3x3 'same' convolution, [3, 3, cin, cout]. */
export function conv3x3BackpropFilter(
  backend: WebGPUBackendLike,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
): tf.TensorInfo {
  const [n, h, w, cin] = x.shape;
  const cout = dy.shape[3];
  const vec = cin % 4 === 0 && cout % 4 === 0;
  const K = 9 * cin, M = n * h * w;
  const bk = 32, bn = cout > 32 ? 64 : 32, br = 16;
  const tiles = Math.ceil(K / bk) * Math.ceil(cout / bn);
  // Split the pixel reduction until there are enough workgroups to fill a large GPU.
  const chunks = Math.ceil(M / br);
  const splits = Math.max(1, Math.min(Math.ceil(512 / tiles), Math.floor(chunks / 4), 64));
  const mPerSplit = Math.ceil(chunks / splits) * br;
  const realSplits = Math.ceil(M / mPerSplit);
  const split = realSplits > 1;
  const o = { vec, bk, bn, br, split };
  const outShape = [3, 3, cin, cout];
  const out = backend.makeTensorInfo(split ? [realSplits, K, cout] : outShape, "float32");
  runCustomProgram(backend, {
    name: "Conv3x3FilterGradProgram",
    key: `conv3x3dw:${JSON.stringify(o)}`,
    source: (prelude) => filterGradSource(prelude, o),
    dispatch: [Math.ceil(cout / bn), Math.ceil(K / bk), realSplits],
    uniforms: "h : i32, w : i32, cin : i32, cout : i32, M : i32, mPerSplit : i32,",
    params: [h, w, cin, cout, M, mPerSplit].map((v) => ({ type: "int32", data: [v] })),
  }, { inputs: [x, dy], output: out });
  if (!split) return out;
  const summed = sumSplits(backend, out, outShape);
  backend.disposeData(out.dataId);
  return summed;
}
