/**
 * Winograd F(m x m, 3x3) forward convolutions (winograd.ts) for the WebGPU plan, in f32, as three
 * dispatches: the input transform (each output tile's (m + 2)² input window, per channel, into
 * `V[ξ][tile][channel]`), α² = (m + 2)² independent GEMMs `M[ξ] = V[ξ] · U[ξ]` (U = G g Gᵀ, made
 * once by {@link winogradFilterProgram}), and the output transform, which ends in the direct
 * kernel's epilogue (bias, activation, residuals, a channel slice of a wider buffer).
 *
 * Why: the direct kernel (webgpu_conv3x3.ts) does 9 multiply-adds per output and input channel;
 * the GEMMs here do 4 (F(4x4)) or 7.1 (F(2x2)), and the transforms are passes over 2.25x (F(4x4))
 * or 4x (F(2x2)) the maps that cost memory traffic rather than arithmetic. Channels come in
 * multiples of 4 (vec4 loads); {@link winogradCanRun} says which convolutions qualify.
 * @module
 */
import {
  type Conv3x3Spec,
  epilogueCode,
  type EpilogueFlags,
  epilogueUniforms,
  inFours,
  tileAccumulators,
  tileProduct,
} from "./webgpu_conv3x3.ts";
import type { CustomProgram, Uniform } from "./webgpu_program.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";
import { WINOGRAD } from "./winograd.ts";

type Program = CustomProgram & { uniforms: string; params: Uniform[] };

/** The output tile side m of F(m x m, 3x3). */
export type WinogradSize = 2 | 4;

const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
/** The most workgroups along one dimension of a launch (WebGPU's default limit). */
export const MAX_DISPATCH = 65535;

/** A WGSL float literal (abstract: rounded once, to the type it meets). */
const lit = (c: number) => (Number.isInteger(c) ? `${c}.0` : `${c}`);

/** Σₖ coefs[k] · terms[k] as WGSL, zero coefficients skipped. */
function lincomb(coefs: number[], terms: string[], zero: string): string {
  let s = "";
  coefs.forEach((c, k) => {
    if (c === 0) return;
    const mag = Math.abs(c) === 1 ? terms[k] : `${lit(Math.abs(c))} * ${terms[k]}`;
    s += s ? ` ${c < 0 ? "-" : "+"} ${mag}` : c < 0 ? `-${mag}` : mag;
  });
  return s || zero;
}

/**
 * WGSL `let`s of Y = L X Rᵀ into `${y}<i>_<j>`, X's element (k, j) being the expression `x(k, j)`:
 * written out term by term, so that the transforms' many zeros and ±1s cost nothing.
 */
export function sandwich(
  L: number[][],
  R: number[][],
  x: (k: number, j: number) => string,
  y: string,
  zero: string,
) {
  const lines: string[] = [];
  const cols = R[0].length;
  for (let i = 0; i < L.length; i++) {
    for (let j = 0; j < cols; j++) {
      lines.push(`let ${y}t${i}_${j} = ${lincomb(L[i], L[i].map((_, k) => x(k, j)), zero)};`);
    }
  }
  for (let i = 0; i < L.length; i++) {
    for (let j = 0; j < R.length; j++) {
      lines.push(`let ${y}${i}_${j} = ${lincomb(R[j], R[j].map((_, k) => `${y}t${i}_${k}`), zero)};`);
    }
  }
  return lines.join("\n  ");
}

/** Output tiles of an n x h x w output: all of them, and per image, and across. */
export function winogradTiles(shape: { n: number; h: number; w: number }, m: WinogradSize) {
  const tilesH = Math.ceil(shape.h / m), tilesW = Math.ceil(shape.w / m);
  return { tiles: shape.n * tilesH * tilesW, perImage: tilesH * tilesW, tilesW };
}

/**
 * WGSL that finds a transform thread's work: 4 channels `c` (of `c4` vec4s per tile) of tile `p`,
 * image `b`, whose m x m output block starts at row `ty0`, column `tx0` (uniforms P, perImage,
 * tilesW); threads past the end return.
 */
export function tileThread(c4: string, m: WinogradSize): string {
  return `let i = ${flatIndex()};
  if (i >= u.P * ${c4}) { return; }
  let c = i % ${c4};
  let p = i / ${c4};
  let b = p / u.perImage;
  let t = p % u.perImage;
  let ty0 = (t / u.tilesW) * ${m};
  let tx0 = (t % u.tilesW) * ${m};`;
}

/** Bytes of V for `channels` input channels, and of M for `cout` outputs, of an output shape. */
export function winogradBytes(
  shape: { n: number; h: number; w: number },
  m: WinogradSize,
  channels: number,
  bytesPerValue = 4,
) {
  return (m + 2) ** 2 * winogradTiles(shape, m).tiles * channels * bytesPerValue;
}

/**
 * Whether a convolution of the forward kernel (webgpu_conv3x3.ts: the forward, or an input
 * gradient) can run as Winograd here: every channel count, stride and offset a multiple of 4. In
 * the half precisions V, U and the maps are f16 and the arithmetic f32, for F(4x4) too: the shipped
 * x4plus on a 32x32 patch of the sample came within 58.7 dB of its f32 direct forward that way,
 * as close as the f16 direct plan (59.0 dB; F(2x2) in f16 62.4 dB).
 */
export function winogradCanRun(spec: Conv3x3Spec): boolean {
  return inFours(spec);
}

/** What one input transform reads and where it puts the result. */
export interface WinogradInputSpec {
  /** Batch and the convolution's output size (its input's, or twice it with `upsample`). */
  n: number;
  h: number;
  w: number;
  /** Channels transformed, from channel `xOffset` of a buffer of `xStride` channels per pixel. */
  c: number;
  xStride: number;
  xOffset?: number;
  /** The input is read through a nearest-neighbour 2x upsampling. */
  upsample?: boolean;
  /** Into channel `vOffset` of V, which holds `vStride` channels per tile and ξ. */
  vStride: number;
  vOffset?: number;
  m: WinogradSize;
  /** The input and V are f16 (the transform computes in f32). */
  half?: boolean;
}

/** The input transform V = Bᵀ d B: one thread per tile and 4 channels. Binds V, then the input. */
export function winogradInputProgram(spec: WinogradInputSpec): Program {
  const { m } = spec;
  const T = spec.half ? "vec4<f16>" : "vec4<f32>";
  const { alpha, BT } = WINOGRAD[m];
  const { tiles, perImage, tilesW } = winogradTiles(spec, m);
  const up = !!spec.upsample;
  const loads = Array.from({ length: alpha * alpha }, (_, q) => {
    const r = Math.floor(q / alpha), s = q % alpha;
    return `let d${r}_${s} = ld(b, y0 + ${r}, x0 + ${s}, c);`;
  });
  const stores = Array.from(
    { length: alpha * alpha },
    (_, q) => `V[o + ${q} * xs] = ${T}(v${Math.floor(q / alpha)}_${q % alpha});`,
  );
  const source = (prelude: string) =>
    `${spec.half ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> V: array<${T}>;
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<uniform> u: Uniforms;

fn ld(b: i32, y: i32, xx: i32, c: i32) -> vec4<f32> {
  if (y < 0 || y >= u.h || xx < 0 || xx >= u.w) { return vec4<f32>(0.0); }
  return vec4<f32>(x[((b * u.inH + y${up ? " / 2" : ""}) * u.inW + xx${
      up ? " / 2" : ""
    }) * u.xStride4 + u.xOffset4 + c]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${tileThread("u.c4", m)}
  let y0 = ty0 - 1;
  let x0 = tx0 - 1;
  ${loads.join("\n  ")}
  ${sandwich(BT, BT, (k, j) => `d${k}_${j}`, "v", "vec4<f32>(0.0)")}
  let o = p * u.vStride4 + u.vOffset4 + c;
  let xs = u.P * u.vStride4;
  ${stores.join("\n  ")}
}`;
  return {
    name: "WinogradInputProgram",
    key: `winograd-input:${m}:${up}:${!!spec.half}`,
    source,
    dispatch: dispatch1d((tiles * spec.c) / 4),
    uniforms: "h : i32, w : i32, inH : i32, inW : i32, c4 : i32, xStride4 : i32, xOffset4 : i32, " +
      "vStride4 : i32, vOffset4 : i32, tilesW : i32, perImage : i32, P : i32,",
    params: [
      spec.h,
      spec.w,
      up ? spec.h / 2 : spec.h,
      up ? spec.w / 2 : spec.w,
      spec.c / 4,
      spec.xStride / 4,
      (spec.xOffset ?? 0) / 4,
      spec.vStride / 4,
      (spec.vOffset ?? 0) / 4,
      tilesW,
      perImage,
      tiles,
    ].map(i32),
  };
}

/** Workgroup tile of the GEMMs: rows (tiles) and columns (output channels), reduction step, per thread. */
export interface WinogradGemmTile {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
}

/** One convolution's α² GEMMs: M[ξ] (tiles x cout) = V[ξ] (tiles x c, of vStride) · U[ξ] (c x cout). */
export interface WinogradGemmSpec {
  tiles: number;
  c: number;
  vStride: number;
  cout: number;
  m: WinogradSize;
  tile?: Partial<WinogradGemmTile>;
  /** V and U are f16 (converted to f32 as they enter workgroup memory; M and the sums stay f32). */
  half?: boolean;
  /**
   * With `half`: workgroup memory and the products in f16 too, each reduction step's (bk channels')
   * sum taken in f16 and added to f32 accumulators, so that rounding grows with bk, not with the
   * channel count. Half the workgroup memory traffic, and f16 arithmetic, which GPUs run at twice
   * f32's rate or more.
   */
  halfMath?: boolean;
}

/** Threads a launch should have to keep a large GPU busy (as webgpu_conv3x3.ts aims). */
const TARGET_THREADS = 65536;

function chooseGemmTile(spec: WinogradGemmSpec): WinogradGemmTile {
  const bn = spec.cout > 32 ? 64 : spec.cout > 16 ? 32 : 16;
  const groups = (bm: number) => Math.ceil(spec.tiles / bm) * Math.ceil(spec.cout / bn) * (spec.m + 2) ** 2;
  const bm = groups(64) * ((64 / 4) * (bn / 4)) >= TARGET_THREADS ? 64 : 32;
  const tile = { bm, bn, bk: 16, tm: 4, tn: 4, ...spec.tile };
  const { bm: m, bn: n, bk: k, tm, tn } = tile;
  if (
    ![4, 8].includes(tm) || ![4, 8].includes(tn) || m % tm || n % tn || k % 4 || (m / tm) * (n / tn) > 256
  ) {
    throw new Error(
      `winograd: GEMM tile ${JSON.stringify(tile)}: tm and tn 4 or 8 dividing bm and bn, ≤ 256 threads`,
    );
  }
  return tile;
}

/**
 * A GEMM's loads into workgroup memory, unrolled: `threads` threads share `units` items, thread
 * `tid` taking items l = s * threads + tid; `body` loads item `l` (WGSL, indented as a block's).
 */
export function unitLoads(units: number, threads: number, body: string): string[] {
  return Array.from({ length: Math.ceil(units / threads) }, (_, s) =>
    `{
      let l = ${s} * ${threads} + tid;
      if (l < ${units}) {
        ${body}
      }
    }`);
}

/** The GEMMs, ξ along the launch's z. Binds M, then V, U. */
export function winogradGemmProgram(spec: WinogradGemmSpec): Program {
  const tile = chooseGemmTile(spec);
  const { bm, bn, bk, tm, tn } = tile;
  const alpha = spec.m + 2;
  const cx = bn / tn, nj = tn / 4, nt = (bm / tm) * cx;
  const ast = bk / 4 + 1, aSize = bm * ast, bSize = (bk * bn) / 4;
  const aUnits = (bm * bk) / 4, bUnits = bSize;
  const rowTiles = Math.ceil(spec.tiles / bm);
  if (rowTiles > MAX_DISPATCH) throw new Error(`winograd: ${spec.tiles} tiles are too many for one launch`);
  if (spec.halfMath && !spec.half) throw new Error("winograd: halfMath needs half (f16 V and U)");
  const accs = tileAccumulators({ tm, tn });
  // what workgroup memory holds: f32, or f16 where the products are f16
  const S = spec.halfMath ? "vec4<f16>" : "vec4<f32>";
  const loadA = unitLoads(
    aUnits,
    nt,
    `let r = l / ${bk / 4}; let q = l % ${bk / 4};
        var v = ${S}(0.0);
        if (m0 + r < u.P && cb + 4 * q < u.C) { v = ${S}(V[(vRow + m0 + r) * u.vStride4 + cb / 4 + q]); }
        Sh[aBase + r * AST + q] = v;`,
  );
  const loadB = unitLoads(
    bUnits,
    nt,
    `let r = l / ${bn / 4}; let q = l % ${bn / 4};
        var v = ${S}(0.0);
        if (cb + r < u.C && n0 / 4 + q < u.K4) { v = ${S}(U[(uRow + cb + r) * u.K4 + n0 / 4 + q]); }
        Sh[bBase + l] = v;`,
  );
  // f16 products: each step's sums in f16 accumulators, then added to the f32 ones
  const product = spec.halfMath
    ? `${accs.map((a) => `var h${a} = vec4<f16>(0.0);`).join(" ")}
    ${tileProduct(tile, "hacc")}
    ${accs.map((a) => `${a} += vec4<f32>(h${a});`).join(" ")}`
    : tileProduct(tile);
  const stores = accs.map((a, q) => {
    const i = Math.floor(q / nj), j = q % nj;
    return `{ let row = m0 + ty * ${tm} + ${i}; let col = n0 / 4 + tx + ${j * cx};
    if (row < u.P && col < u.K4) { Mb[(vRow + row) * u.K4 + col] = ${a}; } }`;
  });
  const T = spec.half ? "vec4<f16>" : "vec4<f32>";
  const source = (prelude: string) =>
    `${spec.half ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> Mb: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> V: array<${T}>;
@group(0) @binding(2) var<storage, read> U: array<${T}>;
@group(0) @binding(3) var<uniform> u: Uniforms;
const AST = ${ast};
var<workgroup> Sh: array<${S}, ${aSize + bSize}>;

@compute @workgroup_size(${nt})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = i32(lidx);
  let m0 = i32(wid.y) * ${bm};
  let n0 = i32(wid.x) * ${bn};
  let vRow = i32(wid.z) * u.P;
  let uRow = i32(wid.z) * u.C;
  let aBase = 0;
  let bBase = ${aSize};
  let tx = tid % ${cx}; let ty = tid / ${cx};
  ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join(" ")}
  for (var cb = 0; cb < u.C; cb += ${bk}) {
    ${loadA.join("\n    ")}
    ${loadB.join("\n    ")}
    workgroupBarrier();
    ${product}
    workgroupBarrier();
  }
  ${stores.join("\n  ")}
}`;
  return {
    name: "WinogradGemmProgram",
    key: `winograd-gemm:${JSON.stringify(tile)}:${spec.halfMath ? "f16 math" : !!spec.half}`,
    source,
    dispatch: [Math.ceil(spec.cout / bn), rowTiles, alpha * alpha],
    uniforms: "P : i32, C : i32, vStride4 : i32, K4 : i32,",
    params: [spec.tiles, spec.c, spec.vStride / 4, spec.cout / 4].map(i32),
  };
}

/**
 * The output transform Y = Aᵀ M A, then the forward kernel's epilogue of `spec` (webgpu_conv3x3.ts:
 * bias, activation, residuals, gradient masks, accumulation): one thread per tile and 4 output
 * channels. Binds the output, then M, and what the epilogue reads: bias, res2, resA, resB, mask,
 * and x0 last (res1, unless x0 is the output).
 */
export function winogradOutputProgram(spec: Conv3x3Spec & { m: WinogradSize }): Program {
  const { m } = spec;
  const { alpha, AT } = WINOGRAD[m];
  const { tiles, perImage, tilesW } = winogradTiles(spec, m);
  const flags: EpilogueFlags = {
    vec: true,
    precision: spec.precision ?? "f32",
    x0IsOutput: !!spec.x0IsOutput,
    scaled: (spec.accScale ?? 1) !== 1,
    bias: !!spec.bias,
    act: spec.activation ?? "linear",
    res1: spec.res1Scale !== undefined,
    res2: spec.res2Scale !== undefined,
    resA: !!spec.resA,
    resB: !!spec.resB,
    accumulate: !!spec.accumulate,
    mask: !!spec.mask,
  };
  const names = [
    flags.bias ? "bias" : "",
    flags.res2 ? "res2" : "",
    flags.resA ? "resA" : "",
    flags.resB ? "resB" : "",
    flags.mask ? "mask" : "",
    flags.res1 && !flags.x0IsOutput ? "x0" : "",
  ].filter((n) => n);
  const T = flags.precision === "f32" ? "vec4<f32>" : "vec4<f16>";
  const decls = names.map((n, k) => `@group(0) @binding(${k + 2}) var<storage, read> ${n}: array<${T}>;`);
  const loads = Array.from(
    { length: alpha * alpha },
    (_, q) => `let m${Math.floor(q / alpha)}_${q % alpha} = Mb[o + ${q} * xs];`,
  );
  const outs = Array.from({ length: m * m }, (_, q) => {
    const i = Math.floor(q / m), j = q % m;
    return `{
    let yy = ty0 + ${i}; let xx = tx0 + ${j};
    if (yy < u.h && xx < u.w) {
      let m = (b * u.h + yy) * u.w + xx;
      var v = y${i}_${j};
      ${epilogueCode(flags)}
    }
  }`;
  });
  const epilogue = epilogueUniforms(spec);
  const source = (prelude: string) =>
    `${T === "vec4<f16>" ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${T}>;
@group(0) @binding(1) var<storage, read> Mb: array<vec4<f32>>;
${decls.join("\n")}
@group(0) @binding(${names.length + 2}) var<uniform> u: Uniforms;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let k4 = u.cout / 4;
  ${tileThread("k4", m)}
  let col = c * 4;
  let o = p * k4 + c;
  let xs = u.P * k4;
  ${loads.join("\n  ")}
  ${sandwich(AT, AT, (k, j) => `m${k}_${j}`, "y", "vec4<f32>(0.0)")}
  ${outs.join("\n  ")}
}`;
  return {
    name: "WinogradOutputProgram",
    key: `winograd-output:${JSON.stringify({ m, ...flags })}`,
    source,
    dispatch: dispatch1d((tiles * spec.cout) / 4),
    uniforms: `h : i32, w : i32, tilesW : i32, perImage : i32, P : i32, ${epilogue.decl}`,
    params: [...[spec.h, spec.w, tilesW, perImage, tiles].map(i32), ...epilogue.params],
  };
}

/**
 * The filter transform U[ξ][ci][co] = (G g Gᵀ)[ξ] of an HWIO [3, 3, cin, cout] filter, or with
 * `flipTransposed` of a [3, 3, cout, cin] one used flipped (an input gradient's): one thread per
 * input channel and 4 output channels (whole vec4s written: f16 halves of one word from two threads
 * would race). With `half`, filter and U are f16. Binds U, then the filter.
 */
export function winogradFilterProgram(
  shape: { cin: number; cout: number; flipTransposed?: boolean; half?: boolean },
  m: WinogradSize,
): Program {
  const { alpha, G } = WINOGRAD[m];
  const flip = !!shape.flipTransposed, S = shape.half ? "f16" : "f32";
  // flipped and transposed (an input gradient's filter): tap q of (ci, co) is W[8 - q][co][ci]
  const at = (q: number, j: number) =>
    flip ? `W[(${8 - q} * u.cout + co + ${j}) * u.cin + ci]` : `W[(${q} * u.cin + ci) * u.cout + co + ${j}]`;
  const loads = Array.from(
    { length: 9 },
    (_, q) =>
      `let g${Math.floor(q / 3)}_${q % 3} = vec4<f32>(${
        [0, 1, 2, 3].map((j) => `f32(${at(q, j)})`).join(", ")
      });`,
  );
  const stores = Array.from(
    { length: alpha * alpha },
    (_, q) =>
      `U[((${q} * u.cin + ci) * u.cout + co) / 4] = vec4<${S}>(u${Math.floor(q / alpha)}_${q % alpha});`,
  );
  return {
    name: "WinogradFilterProgram",
    key: `winograd-filter:${m}:${flip}:${S}`,
    source: (prelude) =>
      `${shape.half ? "enable f16;\n" : ""}${prelude}
@group(0) @binding(0) var<storage, read_write> U: array<vec4<${S}>>;
@group(0) @binding(1) var<storage, read> W: array<${S}>;
@group(0) @binding(2) var<uniform> u: Uniforms;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.cin * u.cout / 4) { return; }
  let ci = i / (u.cout / 4);
  let co = (i % (u.cout / 4)) * 4;
  ${loads.join("\n  ")}
  ${sandwich(G, G, (k, j) => `g${k}_${j}`, "u", "vec4<f32>(0.0)")}
  ${stores.join("\n  ")}
}`,
    dispatch: dispatch1d((shape.cin * shape.cout) / 4),
    uniforms: "cin : i32, cout : i32,",
    params: [shape.cin, shape.cout].map(i32),
  };
}

/** Tilings of the GEMMs a tuned plan tries besides the built-in choice. */
export const WINOGRAD_GEMM_CANDIDATES: Partial<WinogradGemmTile>[] = [
  { bm: 32 },
  { bm: 64 },
  { bm: 64, bk: 32 },
  { bm: 128, tm: 8 },
  { bm: 64, tm: 8, tn: 8 },
  { bm: 128, tm: 8, tn: 8 },
];
