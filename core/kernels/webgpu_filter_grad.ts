/**
 * The filter gradient of the 3x3 convolutions (webgpu_conv3x3.ts): a GEMM of the im2col input
 * (taps·channels x pixels) and the output's gradient (pixels x out-channels) that reduces over
 * pixels, tiled through workgroup memory, split over workgroups when the image is large and summed
 * by a second small pass; optionally the bias gradient as one more row.
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import {
  type CustomProgram,
  runCustomProgram,
  type Uniform,
  unroll,
  type WebGPUBackendLike,
} from "./webgpu_program.ts";
import type { Conv3x3Input } from "./webgpu_conv3x3.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";

/** What a filter gradient reads and writes: `x` as the forward read it, `dy` its output's gradient. */
export interface FilterGradSpec extends Conv3x3Input {
  cout: number;
  /** `dy`'s channel stride and first channel (a slice of a wider gradient buffer). */
  dyStride?: number;
  dyOffset?: number;
  /** Also the bias gradient (the sum of `dy` over pixels), written `biasAt` elements into the output. */
  bias?: boolean;
  biasAt?: number;
  /** Multiplies the result (a residual scaling of `dy`). */
  scale?: number;
  /** `x` and `dy` are f16 (needs shader-f16); products and sums stay f32, as does the result. */
  half?: boolean;
}

/**
 * How one filter gradient is tiled: k rows (taps·channels) and output channels per workgroup,
 * pixels per chunk, slices of the workgroup taking turns over the chunks, the k rows and
 * channels each thread computes (4 or 8 each), and how many workgroups the pixel reduction is
 * split into at most (their partial sums are added by a second dispatch).
 */
export interface FilterGradTile {
  bk: number;
  bn: number;
  br: number;
  ks: number;
  tk: number;
  tn: number;
  /** Workgroups wanted in all (the pixel splits fill up to this), and the most splits. */
  target: number;
  maxSplits: number;
}

/**
 * Filter-gradient tilings: "v1" 4x4 per thread, 16-pixel chunks, one slice; "v2" 32-pixel
 * chunks, 256-thread workgroups; "v3" v2 split over 4x more workgroups; "v4" 8 rows x 4-8
 * channels per thread (up to twice the multiply-adds per workgroup-memory read of 4x4), 64-row tiles.
 */
export type FilterGradVariant = "v1" | "v2" | "v3" | "v4";
/** The filter-gradient tiling plans use unless told otherwise (the one the H200 figures were taken with). */
export const DEFAULT_FILTER_GRAD_VARIANT: FilterGradVariant = "v4";
let filterGradVariant: FilterGradVariant = DEFAULT_FILTER_GRAD_VARIANT;
let filterGradOverride: Partial<FilterGradTile> | null = null;

/** Chooses the filter-gradient kernel for programs made from now on (plans bind theirs when built). */
export function setFilterGradVariant(
  v: FilterGradVariant,
  tile: Partial<FilterGradTile> | null = null,
): void {
  filterGradVariant = v;
  filterGradOverride = tile;
}

function chooseFilterGradTile(cout: number, cin: number): FilterGradTile {
  const bn = cout > 32 ? 64 : 32;
  const v = filterGradVariant;
  const preset: FilterGradTile = v === "v4"
    ? {
      bk: cin >= 64 ? 64 : 32,
      bn,
      br: 32,
      ks: 2,
      tk: 8,
      tn: bn === 64 ? 8 : 4,
      target: 1024,
      maxSplits: 128,
    }
    : {
      bk: 32,
      bn,
      br: v === "v1" ? 16 : 32,
      ks: v === "v1" ? 1 : 256 / (8 * (bn / 4)),
      tk: 4,
      tn: 4,
      target: v === "v3" ? 2048 : 512,
      maxSplits: v === "v3" ? 256 : 64,
    };
  const tile = { ...preset, ...filterGradOverride };
  if (tile.bk % tile.tk || tile.bn % tile.tn || ![4, 8].includes(tile.tk) || ![4, 8].includes(tile.tn)) {
    throw new Error(
      `conv3x3 filter gradient: tile ${JSON.stringify(tile)}: tk and tn must be 4 or 8 and divide bk and bn`,
    );
  }
  return tile;
}

function filterGradSource(
  prelude: string,
  o: {
    vec: boolean;
    tile: FilterGradTile;
    tapUniform: boolean;
    split: boolean;
    two: boolean;
    up: boolean;
    bias: boolean;
    half: boolean;
    /** Sizes baked into the shader: divisions by constants are cheap, by uniforms are not. */
    dims: {
      h: number;
      w: number;
      inH: number;
      inW: number;
      c0: number;
      c1: number;
      x0Stride: number;
      x1Stride: number;
    };
  },
) {
  const { bk, bn, br, ks, tk, tn } = o.tile;
  const { h, w, inH, inW, c0, c1, x0Stride, x1Stride } = o.dims;
  const cin = c0 + c1, K = 9 * cin;
  const T = o.vec ? "vec4<f32>" : "f32";
  // what x and dy hold; read into f32
  const I = o.half ? (o.vec ? "vec4<f16>" : "f16") : T;
  const load = (e: string) => (o.half ? `${T}(${e})` : e);
  const div = o.vec ? 4 : 1;
  // Threads: cxk along k (each with tk / 4 vec4s of k, cxk apart), cxn along the channels.
  const cxk = bk / tk, cxn = bn / tn, nt = cxk * cxn;
  const ni = tk / 4, nj = tn / 4;
  // Load units: 4 consecutive k (taps·channels) of one pixel, 4 consecutive out-channels of one pixel.
  const xUnits = (br * bk) / 4, dUnits = (br * bn) / 4;
  const sx = Math.ceil(xUnits / nt), sd = Math.ceil(dUnits / nt);
  // Element k (or k..k+3, one tap, in vec mode) of pixel (n, y, xx)'s im2col row; row K is all ones
  // (the bias gradient). With tapUniform every k of the workgroup's tile has the same tap.
  const readXAt = (k: string, target: string, one: string) =>
    `{
          let tap = ${o.tapUniform ? "tap0" : `${k} / ${cin}`}; let c = ${
      o.tapUniform ? `cOff + ${k} - k0` : `${k} % ${cin}`
    };
          let iy = y + tap / 3 - 1; let ix = xx + tap % 3 - 1;
          if (${k} < ${K} && iy >= 0 && iy < ${h} && ix >= 0 && ix < ${w}) {
            ${target} = readX((n * ${inH} + iy${o.up ? " / 2" : ""}) * ${inW} + ix${o.up ? " / 2" : ""}, c);
          }${o.bias ? ` else if (${k} == ${K}) { ${target} = ${one}; }` : ""}
        }`;
  const loadX = o.vec
    ? readXAt("k", "v", "vec4<f32>(1.0, 0.0, 0.0, 0.0)")
    : [0, 1, 2, 3].map((j) => readXAt(`(k + ${j})`, `v[${j}]`, "1.0")).join("\n        ");
  const dyAt = (j: string) => `(m * u.dyStride + u.dyOffset + col${j}) / ${div}`;
  const loadD = o.vec
    ? `if (col < u.cout) { v = ${load(`dy[${dyAt("")}]`)}; }`
    : [0, 1, 2, 3].map((j) => `if (col + ${j} < u.cout) { v[${j}] = ${load(`dy[${dyAt(` + ${j}`)}]`)}; }`)
      .join(" ");
  const readX = o.two
    ? `if (c < ${c0}) { return ${load(`x0[(p * ${x0Stride} + c) / ${div}]`)}; }
  return ${load(`x1[(p * ${x1Stride} + c - ${c0}) / ${div}]`)};`
    : `return ${load(`x0[(p * ${x0Stride} + c) / ${div}]`)};`;
  // Accumulator acc<i>_<c>_<j>: k row (tkI + i * cxk) * 4 + c, channel vec4 tnI + j * cxn.
  const accs: { name: string; i: number; c: number; j: number }[] = [];
  for (let i = 0; i < ni; i++) {
    for (let c = 0; c < 4; c++) {
      for (let j = 0; j < nj; j++) accs.push({ name: `acc${i}_${c}_${j}`, i, c, j });
    }
  }
  const lane = ["x", "y", "z", "w"];
  const products = Array.from(
    { length: br },
    (_, r) =>
      `{ ${
        Array.from({ length: ni }, (_, i) => `let a${i} = Sh[xBase + ${r * (bk / 4) + i * cxk} + tkI];`).join(
          " ",
        )
      }
      ${
        Array.from({ length: nj }, (_, j) => `let d${j} = Sh[dBase + ${r * (bn / 4) + j * cxn} + tnI];`).join(
          " ",
        )
      }
      ${accs.map((a) => `${a.name} += a${a.i}.${lane[a.c]} * d${a.j};`).join(" ")} }`,
  ).join("\n    ");
  // Slices of the workgroup take turns over the pixel chunks; their sums meet in workgroup memory,
  // one accumulator at a time.
  const shared = Math.max(ks * (xUnits + dUnits), (ks - 1) * nt);
  const reduce = ks === 1 ? "" : accs.map((a) => `
  workgroupBarrier();
  if (sl > 0) { Sh[(sl - 1) * ${nt} + tid] = ${a.name}; }
  workgroupBarrier();
  if (sl == 0) { for (var s = 1; s < ${ks}; s++) { ${a.name} += Sh[(s - 1) * ${nt} + tid]; } }`).join("") +
    "\n  if (sl > 0) { return; }";
  const write = (a: string) =>
    o.vec
      ? `result[(base + row + col) / 4] = ${a} * u.scale;`
      : [0, 1, 2, 3].map((j) =>
        `if (col + ${j} < u.cout) { result[base + row + col + ${j}] = ${a}[${j}] * u.scale; }`
      ).join("\n      ");
  const epilogue = accs.map((a) =>
    `{
    let k = k0 + (tkI + ${a.i * cxk}) * 4 + ${a.c};
    let col = n0 + (tnI + ${a.j * cxn}) * 4;
    if (k < rows && col < u.cout) {
      let row = select(k * u.cout, u.biasAt, k == ${K});
      ${write(a.name)}
    }
  }`
  ).join("\n  ");
  return `${o.half ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> x0: array<${I}>;
${o.two ? `@group(0) @binding(2) var<storage, read> x1: array<${I}>;` : ""}
@group(0) @binding(${o.two ? 3 : 2}) var<storage, read> dy: array<${I}>;
@group(0) @binding(${o.two ? 4 : 3}) var<uniform> u: Uniforms;
var<workgroup> Sh: array<vec4<f32>, ${shared}>;

fn readX(p: i32, c: i32) -> ${T} {
  ${readX}
}

@compute @workgroup_size(${nt * ks})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let sl = i32(lidx) / ${nt};
  let tid = i32(lidx) % ${nt};
  let xBase = sl * ${xUnits + dUnits};
  let dBase = xBase + ${xUnits};
  let k0 = i32(wid.y) * ${bk};
  let n0 = i32(wid.x) * ${bn};
  let tap0 = k0 / ${cin}; let cOff = k0 % ${cin};
  let rows = ${K + (o.bias ? 1 : 0)};
  let mBegin = i32(wid.z) * u.mPerSplit;
  let mEnd = min(u.M, mBegin + u.mPerSplit);
  let rounds = (mEnd - mBegin + ${br * ks - 1}) / ${br * ks};
  let tnI = tid % ${cxn}; let tkI = tid / ${cxn};
  ${accs.map((a) => `var ${a.name} = vec4<f32>(0.0);`).join(" ")}
  for (var rd = 0; rd < rounds; rd++) {
    let mb = mBegin + (rd * ${ks} + sl) * ${br};
    ${
    unroll(
      sx,
      "s",
      `
      let l = s * ${nt} + tid;
      let m = mb + l / ${bk / 4};
      let k = k0 + (l % ${bk / 4}) * 4;
      var v = vec4<f32>(0.0);
      if (m < mEnd && l < ${xUnits}) {
        let n = m / ${h * w}; let rem = m % ${h * w};
        let y = rem / ${w}; let xx = rem % ${w};
        ${loadX}
      }
      if (l < ${xUnits}) { Sh[xBase + l] = v; }`,
    )
  }
    ${
    unroll(
      sd,
      "s",
      `
      let l = s * ${nt} + tid;
      let m = mb + l / ${bn / 4};
      let col = n0 + (l % ${bn / 4}) * 4;
      var v = vec4<f32>(0.0);
      if (m < mEnd && l < ${dUnits}) { ${loadD} }
      if (l < ${dUnits}) { Sh[dBase + l] = v; }`,
    )
  }
    workgroupBarrier();
    ${products}
    workgroupBarrier();
  }
  ${reduce}
  let base = ${o.split ? "i32(wid.z) * u.splitStride" : "0"};
  ${epilogue}
}`;
}

/** The launches of one filter gradient: the main kernel, and when it splits the pixels, their sum. */
export interface FilterGradPrograms {
  main: CustomProgram & { uniforms: string; params: Uniform[] };
  /** Splits of the pixel reduction (1: `main` writes the result directly). */
  splits: number;
  /** Elements of one split's partial result ([K (+1 with bias), cout] rows). */
  partSize: number;
  /** Sums the partials [splits, partSize] into the result (bias row at `biasAt`); absent when splits is 1. */
  sum?: CustomProgram & { uniforms: string; params: Uniform[] };
}

/** The programs of one filter gradient (see {@link FilterGradSpec}). */
export function filterGradPrograms(spec: FilterGradSpec): FilterGradPrograms {
  const { n, h, w, cout } = spec;
  const c1 = spec.c1 ?? 0, cin = spec.c0 + c1;
  // without x1 its stride is moot: a multiple of 4 keeps the vector path
  const x1Stride = spec.x1Stride ?? (c1 > 0 ? c1 : 4);
  const dyStride = spec.dyStride ?? cout, dyOffset = spec.dyOffset ?? 0;
  const bias = !!spec.bias;
  const K = 9 * cin, M = n * h * w;
  const biasAt = spec.biasAt ?? K * cout;
  const vec = [spec.c0, spec.x0Stride, c1, x1Stride, cout, dyStride, dyOffset, biasAt].every((v) =>
    v % 4 === 0
  );
  const rows = K + (bias ? 1 : 0);
  const tile = chooseFilterGradTile(cout, cin);
  const { bk, bn, br, ks } = tile;
  const tiles = Math.ceil(rows / bk) * Math.ceil(cout / bn);
  // Split the pixel reduction until there are enough workgroups to fill a large GPU.
  const chunks = Math.ceil(M / br);
  const wanted = Math.max(
    1,
    Math.min(Math.ceil(tile.target / tiles), Math.floor(chunks / (4 * ks)), tile.maxSplits),
  );
  const mPerSplit = Math.ceil(chunks / wanted) * br;
  const splits = Math.ceil(M / mPerSplit);
  const split = splits > 1;
  const partSize = K * cout + (bias ? cout : 0);
  const up = !!spec.upsample;
  const o = {
    vec,
    tile,
    tapUniform: filterGradVariant !== "v1" && cin % bk === 0,
    split,
    two: c1 > 0,
    up,
    bias,
    half: !!spec.half,
    dims: {
      h,
      w,
      inH: up ? h / 2 : h,
      inW: up ? w / 2 : w,
      c0: spec.c0,
      c1,
      x0Stride: spec.x0Stride,
      x1Stride,
    },
  };
  const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
  const main = {
    name: "Conv3x3FilterGradProgram",
    key: `conv3x3dw:${JSON.stringify(o)}`,
    source: (prelude: string) => filterGradSource(prelude, o),
    dispatch: [Math.ceil(cout / bn), Math.ceil(rows / bk), splits] as [number, number, number],
    uniforms: "cout : i32, dyStride : i32, dyOffset : i32, M : i32, mPerSplit : i32, splitStride : i32, " +
      "biasAt : i32, scale : f32,",
    params: [
      ...[cout, dyStride, dyOffset, M, mPerSplit, partSize, split ? K * cout : biasAt].map(i32),
      { type: "float32" as const, data: [spec.scale ?? 1] },
    ],
  };
  if (!split) return { main, splits, partSize };
  return {
    main,
    splits,
    partSize,
    sum: sumSplitsProgram(partSize, splits, { cut: K * cout, gap: biasAt - K * cout }),
  };
}

/**
 * Sums partials [splits, count] over the splits into the result; elements from `cut` on land `gap`
 * further (the bias row after the filter, at its own aligned offset).
 */
function sumSplitsProgram(
  size: number,
  splits: number,
  place: { cut: number; gap: number },
): CustomProgram & { uniforms: string; params: Uniform[] } {
  const vec = size % 4 === 0 && place.cut % 4 === 0 && place.gap % 4 === 0;
  const T = vec ? "vec4<f32>" : "f32";
  const d = vec ? 4 : 1;
  const count = size / d;
  return {
    name: "SumSplitsProgram",
    key: `sumSplits:${vec}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> parts: array<${T}>;
@group(0) @binding(2) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.count) { return; }
  var s = ${T}(0.0);
  for (var p = 0; p < u.splits; p++) { s += parts[p * u.count + i]; }
  result[select(i, i + u.gap, i >= u.cut)] = s;
}`,
    dispatch: dispatch1d(count),
    uniforms: "count : i32, splits : i32, cut : i32, gap : i32,",
    params: [count, splits, place.cut / d, place.gap / d].map((v) => ({ type: "int32", data: [v] })),
  };
}

/** dL/dW of a 3x3 'same' convolution, [3, 3, cin, cout]. */
export function conv3x3BackpropFilter(
  backend: WebGPUBackendLike,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
): tf.TensorInfo {
  const [n, h, w, cin] = x.shape;
  const cout = dy.shape[3];
  const p = filterGradPrograms({ n, h, w, c0: cin, x0Stride: cin, cout });
  const outShape = [3, 3, cin, cout];
  const out = backend.makeTensorInfo(p.sum ? [p.splits, p.partSize] : outShape, "float32");
  runCustomProgram(backend, p.main, { inputs: [x, dy], output: out });
  if (!p.sum) return out;
  const summed = backend.makeTensorInfo(outShape, "float32");
  runCustomProgram(backend, p.sum, { inputs: [out], output: summed });
  backend.disposeData(out.dataId);
  return summed;
}
