/**
 * 3x3, stride 1, 'same' convolutions for tfjs's WebGPU backend, NHWC float32: the forward pass
 * as an implicit GEMM (pixels x taps·channels times taps·channels x out-channels) tiled through
 * workgroup memory with vec4 loads, bias / activation / residuals fused into the store, and the
 * input gradient (the same kernel on a flipped, transposed filter). The filter gradient is in
 * webgpu_filter_grad.ts.
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

/**
 * Number formats of the forward kernel: "f32"; "f16" (`shader-f16`: maps, filters and products in
 * half precision, the epilogue — bias, activation, residual adds — in f32, rounded once when
 * stored); "f16-f32acc" (half-precision maps and filters, which halve memory traffic, converted
 * to f32 as they enter workgroup memory and multiplied and summed in f32).
 */
export type ConvPrecision = "f32" | "f16" | "f16-f32acc";

/** A 3x3 convolution's output size and where its input channels come from (forward and filter gradient). */
export interface Conv3x3Input {
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
  /** The input is read through a nearest-neighbour 2x upsampling (`x0`/`x1` are h/2 x w/2). */
  upsample?: boolean;
}

/** What a forward 3x3 convolution reads and writes (all buffers NHWC, channels innermost). */
export interface Conv3x3Spec extends Conv3x3Input {
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
  /**
   * The filter input is [3, 3, cout, cin]: use it flipped spatially with its channel axes swapped
   * (the input gradient's filter), read in place rather than transposed by another dispatch.
   */
  flipTransposed?: boolean;
  /** First channel read from `x0` (a channel slice of a wider buffer, e.g. one gradient slice). */
  x0Offset?: number;
  /** `x0` is the output buffer itself (a gradient slice read while other channels of it are written). */
  x0IsOutput?: boolean;
  /** Scales the convolution's sum before anything is added to it (the residual scalings' gradients). */
  accScale?: number;
  /** Adds `scale · resA[pixel · stride + co]` to output channels below `resLimit` (gradient skips). */
  resA?: { scale: number; stride: number };
  resB?: { scale: number; stride: number };
  resLimit?: number;
  /** Adds the output's previous value (a gradient summed over several convolutions). */
  accumulate?: boolean;
  /**
   * LeakyReLU's derivative, applied last to output channels co in [lo, hi): kept where
   * `mask[pixel · stride + co − lo + offset] > 0` (the forward activation), else times `alpha`.
   */
  mask?: { lo: number; hi: number; stride: number; offset: number };
  /** Number format of every buffer the convolution reads and writes, and of its products (default f32). */
  precision?: ConvPrecision;
  /** Tile sizes to use instead of the built-in choice (over {@link setConvTileOverride}'s). */
  tile?: Partial<ConvTile>;
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
  /**
   * Output rows (pixels) and channels each thread computes (4 or 8 each): larger register tiles
   * read fewer workgroup-memory words per multiply-add (4x4: 8 vec4 loads per 64; 8x8: 16 per 256).
   */
  tm?: number;
  tn?: number;
  /**
   * Loads the next chunk's inputs into registers before multiplying the current one (in workgroup
   * memory), so that memory latency overlaps arithmetic; costs registers.
   */
  prefetch?: boolean;
}

let tileOverride: Partial<ConvTile> | null = null;

/** Forces tile sizes (for tuning on a GPU); null restores the built-in choice. */
export function setConvTileOverride(tile: Partial<ConvTile> | null): void {
  tileOverride = tile;
}

const MAX_DISPATCH = 65535;
/** Threads a launch should have to keep a large GPU busy (H100/H200: 132 SMs x 2048). */
const TARGET_THREADS = 65536;

function chooseTile(
  m: number,
  cout: number,
  cin: number,
  options: { vec: boolean; override: Partial<ConvTile> | null },
): ConvTile {
  const { vec, override } = options;
  const bn = cout > 32 ? 64 : cout > 16 ? 32 : cout > 8 || vec ? 16 : Math.max(4, Math.ceil(cout / 4) * 4);
  const nTiles = Math.ceil(cout / bn);
  // Fewer rows per workgroup when the image is small, so a big GPU still gets enough workgroups.
  const bm = Math.ceil(m / 64) * nTiles >= 256 ? 64 : 32;
  const bk = vec ? 16 : 8;
  const tm = override?.tm ?? 4, tn = override?.tn ?? 4;
  const threads = Math.ceil(m / bm) * nTiles * (bm / tm) * (bn / tn);
  const chunks = 9 * Math.ceil(cin / bk);
  let ks = 1;
  while (ks < 4 && threads * ks < TARGET_THREADS && chunks >= 4 * ks) ks *= 2;
  const tile = { bm, bn, bk, ks, tm, tn, ...override };
  if (tile.bm % tile.tm || tile.bn % tile.tn || ![4, 8].includes(tile.tm) || ![4, 8].includes(tile.tn)) {
    throw new Error(`conv3x3: tile ${JSON.stringify(tile)}: tm and tn must be 4 or 8 and divide bm and bn`);
  }
  return tile;
}

/** WGSL applying `act` to the vec4<f32> `v` (leakyrelu's slope: the uniform `alpha`). */
export const actSnippet = (act: Activation): string =>
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
    x0IsOutput: boolean;
    scaled: boolean;
    resA: boolean;
    resB: boolean;
    accumulate: boolean;
    mask: boolean;
    precision: ConvPrecision;
  },
): string {
  const { bm, bn, bk, ks } = o.tile;
  const tm = o.tile.tm ?? 4, tn = o.tile.tn ?? 4;
  // threads across the tile's columns; a thread's column vec4s lie cx apart (tn / 4 of them)
  const cx = bn / tn, nj = tn / 4, na = tm * nj;
  // Accumulator acc<i>_<j> holds output row ty * tm + i, column vec4 tx + j * cx.
  // S: what buffers hold; A: what workgroup tiles hold and products and sums are computed in
  // (converted once when a tile is stored, not at each of its many reads).
  const S = o.precision === "f32" ? "f32" : "f16";
  const A = o.precision === "f16" ? "f16" : "f32";
  const T = o.vec ? `vec4<${S}>` : S;
  const toA = (e: string) => (S === A ? e : `vec4<${A}>(${e})`);
  const nt = (bm / tm) * cx;
  // Per slice: an A tile of bm rows x bk/4 vec4s (+1 of padding against bank conflicts), then a
  // B tile of bk rows x bn/4 vec4s. After the loop the same memory takes the slices' partial sums.
  const ast = bk / 4 + 1;
  const aSize = bm * ast, bSize = (bk * bn) / 4, slice = aSize + bSize;
  const shared = Math.max(ks * slice, (ks - 1) * nt * na);
  const aUnits = (bm * bk) / 4, bUnits = (bk * bn) / 4;
  const sa = Math.ceil(aUnits / nt), sb = Math.ceil(bUnits / nt);
  let b = 1;
  const bind = (name: string, access: string) =>
    `@group(0) @binding(${b++}) var<storage, ${access}> ${name}: array<${T}>;`;
  const decls = [
    `@group(0) @binding(0) var<storage, read_write> result: array<${T}>;`,
    o.x0IsOutput ? "" : bind("x0", "read"),
    o.two && !o.x1IsOutput ? bind("x1", "read") : "",
    bind("W", "read"),
    o.bias ? bind("bias", "read") : "",
    o.res2 ? bind("res2", "read") : "",
    o.resA ? bind("resA", "read") : "",
    o.resB ? bind("resB", "read") : "",
    o.mask ? bind("mask", "read") : "",
    `@group(0) @binding(${b}) var<uniform> u: Uniforms;`,
  ].join("\n");
  const x0 = o.x0IsOutput ? "result" : "x0";
  const x1 = o.x1IsOutput ? "result" : "x1";
  const div = o.vec ? 4 : 1;
  // Reads input channel c (c..c+3 in vec mode) of pixel p.
  const readX = o.two
    ? `if (c < u.c0) { return ${x0}[(p * u.x0Stride + u.x0Offset + c) / ${div}]; }
  return ${x1}[(p * u.x1Stride + c - u.c0) / ${div}];`
    : `return ${x0}[(p * u.x0Stride + u.x0Offset + c) / ${div}];`;
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
  // A chunk's tiles go global memory -> registers (pa<s>, pb<s> / pf<s>_<j>) -> workgroup memory.
  const flipVec = o.flipT && o.vec;
  const blocks = (bk / 4) * (bn / 4);
  const sf = Math.ceil(blocks / nt);
  const regs = [
    ...Array.from({ length: sa }, (_, s) => `pa${s}`),
    ...(flipVec
      ? Array.from({ length: sf }, (_, s) => [0, 1, 2, 3].map((j) => `pf${s}_${j}`)).flat()
      : Array.from({ length: sb }, (_, s) => `pb${s}`)),
  ];
  const loadAInto = (s: number) =>
    `{
      let l = ${s} * NT + tid;
      let kq = l % ${bk / 4};
      let iy = rowY${s} + dy; let ix = rowX${s} + dx;
      var v = vec4<${S}>(0.0);
      let c = cb + kq * 4;
      if (live && rowN${s} >= 0 && iy >= 0 && iy < u.h && ix >= 0 && ix < u.w && c < cin) {
        ${
      o.upsample
        ? `let p = (rowN${s} * u.inH + iy / 2) * u.inW + ix / 2;`
        : `let p = (rowN${s} * u.inH + iy) * u.inW + ix;`
    }
        ${loadA}
      }
      pa${s} = v;
    }`;
  const storeA = (s: number) =>
    `{ let l = ${s} * NT + tid; if (l < ${aUnits}) { Sh[aBase + (l / ${bk / 4}) * AST + l % ${bk / 4}] = ${
      toA(`pa${s}`)
    }; } }`;
  const loadBInto = (s: number) =>
    `{
      let l = ${s} * NT + tid;
      let kr = l / ${bn / 4};
      let col = n0 + (l % ${bn / 4}) * 4;
      let row = tap * cin + cb + kr;
      var v = vec4<${S}>(0.0);
      if (live && cb + kr < cin && l < ${bUnits}) { ${loadB} }
      pb${s} = v;
    }`;
  const storeB = (s: number) =>
    `{ let l = ${s} * NT + tid; if (l < ${bUnits}) { Sh[bBase + l] = ${toA(`pb${s}`)}; } }`;
  // The flipped filter in vec mode: 4x4 blocks, read as 4 vec4s along the (new) input channels,
  // which are contiguous in W, and transposed in registers into 4 whole rows of the B tile.
  const loadFlipInto = (s: number) =>
    `{
      let l = ${s} * NT + tid;
      let kq = l / ${bn / 4}; let nq = l % ${bn / 4};
      let col = n0 + nq * 4; let o0 = cb + kq * 4;
      ${[0, 1, 2, 3].map((j) => `pf${s}_${j} = vec4<${S}>(0.0);`).join(" ")}
      if (live && l < ${blocks} && o0 < cin) {
        let base = (8 - tap) * u.cout + col;
        ${
      [0, 1, 2, 3].map((j) => `if (col + ${j} < u.cout) { pf${s}_${j} = W[((base + ${j}) * cin + o0) / 4]; }`)
        .join("\n        ")
    }
      }
    }`;
  const storeFlip = (s: number) =>
    `{
      let l = ${s} * NT + tid;
      let kq = l / ${bn / 4}; let nq = l % ${bn / 4};
      if (l < ${blocks}) {
        ${
      ["x", "y", "z", "w"].map((c, r) =>
        `Sh[bBase + (kq * 4 + ${r}) * ${bn / 4} + nq] = vec4<${A}>(${
          ["0", "1", "2", "3"].map((j) => `${A === S ? "" : A}(pf${s}_${j}.${c})`).join(", ")
        });`
      ).join("\n        ")
    }
      }
    }`;
  // Chunks of the reduction: 9 taps x ceil(cin / BK) channel blocks, dealt round-robin to the slices.
  const loadChunk = (round: string) =>
    `{
    let q = (${round}) * KS + sl;
    let live = q < chunks;
    let tap = q / nCb;
    let cb = (q % nCb) * BK;
    let dy = tap / 3 - 1; let dx = tap % 3 - 1;
    ${Array.from({ length: sa }, (_, s) => loadAInto(s)).join("\n    ")}
    ${
      flipVec
        ? Array.from({ length: sf }, (_, s) => loadFlipInto(s)).join("\n    ")
        : Array.from({ length: sb }, (_, s) => loadBInto(s)).join("\n    ")
    }
  }`;
  const storeChunk = [
    ...Array.from({ length: sa }, (_, s) => storeA(s)),
    ...(flipVec
      ? Array.from({ length: sf }, (_, s) => storeFlip(s))
      : Array.from({ length: sb }, (_, s) => storeB(s))),
  ].join("\n    ");
  // Sum the reduction slices' partial results through the tiles' workgroup memory.
  const accs = tileAccumulators({ tm, tn });
  const reduce = ks === 1 ? "" : `
  if (sl > 0) { ${accs.map((a, q) => `Sh[((sl - 1) * NT + tid) * ${na} + ${q}] = ${a};`).join(" ")} }
  workgroupBarrier();
  if (sl > 0) { return; }
  for (var s = 1; s < KS; s++) {
    ${accs.map((a, q) => `${a} += Sh[((s - 1) * NT + tid) * ${na} + ${q}];`).join("\n    ")}
  }`;
  // The epilogue of output row i, column vec4 j.
  const epilogue = (i: number, j: number) =>
    `{
    let m = m0 + ty * ${tm} + ${i};
    let col = n0 + (tx + ${j * cx}) * 4;
    if (m < u.M && col < u.cout) {
    var v = ${A === "f32" ? `acc${i}_${j}` : `vec4<f32>(acc${i}_${j})`};
    ${epilogueCode(o)}
    }
  }`;
  return `${S === "f16" ? "enable f16;\n" : ""}${prelude}
${decls}
const BM = ${bm}; const BN = ${bn}; const BK = ${bk}; const NT = ${nt}; const KS = ${ks}; const AST = ${ast};
var<workgroup> Sh: array<vec4<${A}>, ${shared}>;

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
  ${
    Array.from({ length: sa }, (_, s) => `
  let rm${s} = m0 + (${s} * NT + tid) / ${bk / 4};
  let rowN${s} = select(-1, rm${s} / hw, rm${s} < u.M && ${s} * NT + tid < ${aUnits});
  let rowY${s} = (rm${s} % hw) / u.w; let rowX${s} = (rm${s} % hw) % u.w;`).join("")
  }
  let tx = tid % ${cx}; let ty = tid / ${cx};
  ${accs.map((a) => `var ${a} = vec4<${A}>(0.0);`).join(" ")}
  let nCb = (cin + BK - 1) / BK;
  let chunks = 9 * nCb;
  let rounds = (chunks + KS - 1) / KS;
  ${regs.map((r) => `var ${r} = vec4<${S}>(0.0);`).join(" ")}
  ${o.tile.prefetch ? loadChunk("0") : ""}
  for (var rd = 0; rd < rounds; rd++) {
    ${o.tile.prefetch ? "" : loadChunk("rd")}
    ${storeChunk}
    workgroupBarrier();
    let live = rd * KS + sl < chunks;
    ${o.tile.prefetch ? `if (rd + 1 < rounds) ${loadChunk("rd + 1")}` : ""}
    if (live) {
      ${tileProduct({ bk, bn, tm, tn })}
    }
    workgroupBarrier();
  }
  ${reduce}
  ${accs.map((_, q) => epilogue(Math.floor(q / nj), q % nj)).join("\n  ")}
}`;
}

/** What the forward kernel's epilogue does to a sum before storing it (see {@link Conv3x3Spec}). */
export interface EpilogueFlags {
  vec: boolean;
  precision: ConvPrecision;
  x0IsOutput: boolean;
  scaled: boolean;
  bias: boolean;
  act: Activation;
  res1: boolean;
  res2: boolean;
  resA: boolean;
  resB: boolean;
  accumulate: boolean;
  mask: boolean;
}

/**
 * WGSL of the epilogue: takes `var v: vec4<f32>` (the sum for output pixel `m`, channels col..col+3)
 * through scaling, bias, activation and the residuals, in f32 whatever the storage (one rounding
 * per stored value), and stores it. Reads the uniforms {@link epilogueUniforms} declares and the
 * bindings `result`, `x0`, `bias`, `res2`, `resA`, `resB`, `mask` its flags use.
 */
export function epilogueCode(o: EpilogueFlags): string {
  const S = o.precision === "f32" ? "f32" : "f16";
  const toF32 = (e: string, vec = true) => (S === "f32" ? e : vec ? `vec4<f32>(${e})` : `f32(${e})`);
  const x0 = o.x0IsOutput ? "result" : "x0";
  const loadVec4 = (arr: string, idx: string, col: string) =>
    o.vec
      ? toF32(`${arr}[(${idx}) / 4]`)
      : `vec4<f32>(${
        [0, 1, 2, 3].map((j) =>
          `select(0.0, ${toF32(`${arr}[${idx} + ${j}]`, false)}, ${col} + ${j} < u.cout)`
        )
          .join(", ")
      })`;
  const write = o.vec
    ? `result[(m * u.outStride + u.outOffset + col) / 4] = ${S === "f32" ? "v" : "vec4<f16>(v)"};`
    : [0, 1, 2, 3].map((j) =>
      `if (col + ${j} < u.cout) { result[m * u.outStride + u.outOffset + col + ${j}] = ${S}(v[${j}]); }`
    )
      .join("\n    ");
  // Gradient epilogues; channel ranges are multiples of 4 in vec mode, checked per channel otherwise.
  const inRange = (lo: string, hi: string) =>
    o.vec
      ? `col >= ${lo} && col < ${hi}`
      : [0, 1, 2, 3].map((j) => `col + ${j} >= ${lo} && col + ${j} < ${hi}`);
  const perChannel = (cond: string | string[], body: (j: number | null) => string) =>
    typeof cond === "string"
      ? `if (${cond}) { ${body(null)} }`
      : cond.map((c, j) => `if (${c}) { ${body(j)} }`).join("\n    ");
  const res = (r: string) =>
    perChannel(
      inRange("0", "u.resLimit"),
      (j) =>
        j === null
          ? `v += u.res${r}Scale * ${toF32(`res${r}[(m * u.res${r}Stride + col) / 4]`)};`
          : `v[${j}] += u.res${r}Scale * ${toF32(`res${r}[m * u.res${r}Stride + col + ${j}]`, false)};`,
    );
  const mask = perChannel(
    inRange("u.maskLo", "u.maskHi"),
    (j) =>
      j === null
        ? `let mk = mask[(m * u.maskStride + col - u.maskLo + u.maskOffset) / 4];
      v = select(v * u.alpha, v, mk > vec4<${S}>(0.0));`
        : `if (mask[m * u.maskStride + col + ${j} - u.maskLo + u.maskOffset] <= ${S}(0.0)) { v[${j}] *= u.alpha; }`,
  );
  return [
    o.scaled ? "v *= u.accScale;" : "",
    o.bias ? `v += ${loadVec4("bias", "col", "col")};` : "",
    actSnippet(o.act),
    o.res1 ? `v = v * u.res1Scale + ${loadVec4(x0, "m * u.x0Stride + u.x0Offset + col", "col")};` : "",
    o.res2 ? `v = v * u.res2Scale + ${loadVec4("res2", "m * u.res2Stride + col", "col")};` : "",
    o.resA ? res("A") : "",
    o.resB ? res("B") : "",
    o.accumulate ? `v += ${loadVec4("result", "m * u.outStride + u.outOffset + col", "col")};` : "",
    o.mask ? mask : "",
    write,
  ].filter((l) => l).join("\n    ");
}

/** The epilogue's uniforms: WGSL members and their values for `spec`. */
export function epilogueUniforms(spec: Conv3x3Spec): { decl: string; params: Uniform[] } {
  const mask = spec.mask ?? { lo: 0, hi: 0, stride: 4, offset: 0 };
  const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
  const f32 = (v: number): Uniform => ({ type: "float32", data: [v] });
  const fields: [string, Uniform][] = [
    ["cout", i32(spec.cout)],
    ["outStride", i32(spec.outStride ?? spec.cout)],
    ["outOffset", i32(spec.outOffset ?? 0)],
    ["x0Stride", i32(spec.x0Stride)],
    ["x0Offset", i32(spec.x0Offset ?? 0)],
    ["res2Stride", i32(spec.res2Stride ?? spec.cout)],
    ["alpha", f32(spec.alpha ?? 0.2)],
    ["res1Scale", f32(spec.res1Scale ?? 1)],
    ["res2Scale", f32(spec.res2Scale ?? 1)],
    ["accScale", f32(spec.accScale ?? 1)],
    ["resLimit", i32(spec.resLimit ?? spec.cout)],
    ["resAStride", i32(spec.resA?.stride ?? 0)],
    ["resAScale", f32(spec.resA?.scale ?? 0)],
    ["resBStride", i32(spec.resB?.stride ?? 0)],
    ["resBScale", f32(spec.resB?.scale ?? 0)],
    ["maskLo", i32(mask.lo)],
    ["maskHi", i32(mask.hi)],
    ["maskStride", i32(mask.stride)],
    ["maskOffset", i32(mask.offset)],
  ];
  return {
    decl: fields.map(([name, v]) => `${name} : ${v.type === "float32" ? "f32" : "i32"},`).join(" "),
    params: fields.map(([, v]) => v),
  };
}

/**
 * WGSL of one chunk's multiply-adds on register tiles: thread (ty, tx) adds to `acc<i>_<j>` (output
 * row ty * tm + i, column vec4 tx + j * (bn / tn)) the products of the A tile at `Sh[aBase..]` (bm
 * rows of bk / 4 vec4s, AST apart) and the B tile at `Sh[bBase..]` (bk rows of bn / 4 vec4s).
 * `acc`: another name for the accumulators (`<acc><i>_<j>`).
 */
export function tileProduct(t: { bk: number; bn: number; tm: number; tn: number }, acc = "acc"): string {
  const { bk, bn, tm, tn } = t;
  const cx = bn / tn, nj = tn / 4;
  return Array.from({ length: bk / 4 }, (_, k4) =>
    `{
        ${
      Array.from({ length: nj }, (_, j) =>
        [0, 1, 2, 3].map((r) => `let b${j}${r} = Sh[bBase + ${(k4 * 4 + r) * (bn / 4) + j * cx} + tx];`)
          .join(" ")).join("\n        ")
    }
        ${
      Array.from({ length: tm }, (_, i) =>
        `{ let a = Sh[aBase + (ty * ${tm} + ${i}) * AST + ${k4}];
          ${
          Array.from(
            { length: nj },
            (_, j) =>
              `${acc}${i}_${j} += a.x * b${j}0 + a.y * b${j}1 + a.z * b${j}2 + a.w * b${j}3;`,
          ).join(" ")
        } }`).join("\n        ")
    }
      }`).join("\n      ");
}

/**
 * Whether every channel count, stride and offset `spec` reads or writes is a multiple of 4: the
 * kernels' vec4 path (Winograd's only path).
 */
export function inFours(spec: Conv3x3Spec): boolean {
  const c1 = spec.c1 ?? 0;
  const mask = spec.mask ?? { lo: 0, hi: 0, stride: 4, offset: 0 };
  return [
    spec.c0,
    spec.x0Stride,
    spec.x0Offset ?? 0,
    c1,
    // without x1 its stride is moot
    spec.x1Stride ?? (c1 > 0 ? c1 : 4),
    spec.cout,
    spec.outStride ?? spec.cout,
    spec.outOffset ?? 0,
    spec.res2Stride ?? spec.cout,
    spec.resLimit ?? spec.cout,
    spec.resA?.stride ?? 4,
    spec.resB?.stride ?? 4,
    mask.lo,
    mask.hi,
    mask.stride,
    mask.offset,
  ].every((v) => v % 4 === 0);
}

/** The accumulators {@link tileProduct} adds to: `acc<i>_<j>` for tm rows and tn / 4 column vec4s. */
export function tileAccumulators(t: { tm: number; tn: number }): string[] {
  return Array.from({ length: t.tm }, (_, i) => Array.from({ length: t.tn / 4 }, (_, j) => `acc${i}_${j}`))
    .flat();
}

/** The program (shader choice, launch size, uniforms) of one forward convolution. */
export function conv3x3Program(spec: Conv3x3Spec): CustomProgram & { uniforms: string; params: Uniform[] } {
  const c1 = spec.c1 ?? 0;
  // without x1 its stride is moot: a multiple of 4 keeps the vector path
  const x1Stride = spec.x1Stride ?? (c1 > 0 ? c1 : 4);
  const res1 = spec.res1Scale !== undefined, res2 = spec.res2Scale !== undefined;
  if (res1 && (spec.upsample || spec.cout > spec.c0)) {
    throw new Error("conv3x3: res1 needs cout <= c0, no upsample");
  }
  const vec = inFours(spec);
  const m = spec.n * spec.h * spec.w;
  const tile = chooseTile(m, spec.cout, spec.c0 + c1, { vec, override: { ...tileOverride, ...spec.tile } });
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
    x0IsOutput: !!spec.x0IsOutput,
    scaled: spec.accScale !== undefined && spec.accScale !== 1,
    resA: !!spec.resA,
    resB: !!spec.resB,
    accumulate: !!spec.accumulate,
    mask: !!spec.mask,
    precision: spec.precision ?? "f32",
  };
  const mTiles = Math.ceil(m / tile.bm);
  const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
  const inH = spec.upsample ? spec.h / 2 : spec.h, inW = spec.upsample ? spec.w / 2 : spec.w;
  const epilogue = epilogueUniforms(spec);
  const params = [
    ...[spec.n, spec.h, spec.w, inH, inW, spec.c0, c1, x1Stride, m, mTiles].map(i32),
    ...epilogue.params,
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
    uniforms:
      "n : i32, h : i32, w : i32, inH : i32, inW : i32, c0 : i32, c1 : i32, x1Stride : i32, M : i32, " +
      `mTiles : i32, ${epilogue.decl}`,
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
