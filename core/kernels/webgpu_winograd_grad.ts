/**
 * Filter gradients of 3x3 convolutions in Winograd's domain (F(m x m, 3x3), winograd.ts), for the
 * training step: the forward is Y = Aᵀ[Σ_c U ⊙ V]A per tile with U = G g Gᵀ, so
 * dU[ξ][c][k] = Σ_tiles V[ξ][tile][c] · dM[ξ][tile][k] with dM = A dY Aᵀ (the output transform's
 * adjoint), and dW = Gᵀ dU G (the filter transform's). Three dispatches: dY's transform, the α²
 * GEMMs reducing over tiles (split over workgroups; the bias gradient rides along as one more row
 * of V: 1 at ξ = (1, 1), the interpolation point 1, whose output-transform column is all ones),
 * and the sum of the splits with Gᵀ dU G, scaled, into the gradient buffer (HWIO, then the bias).
 * V is the forward's input transform (webgpu_winograd.ts), recomputed in the backward.
 * @module
 */
import { tileAccumulators, tileProduct } from "./webgpu_conv3x3.ts";
import type { CustomProgram, Uniform } from "./webgpu_program.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";
import {
  MAX_DISPATCH,
  sandwich,
  tileThread,
  unitLoads,
  type WinogradSize,
  winogradTiles,
} from "./webgpu_winograd.ts";
import { WINOGRAD } from "./winograd.ts";

type Program = CustomProgram & { uniforms: string; params: Uniform[] };

const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });
const transpose = (a: number[][]) => a[0].map((_, j) => a.map((row) => row[j]));

/**
 * dM = A dY Aᵀ for every m x m tile of `cout` channels of dY (channel `dyOffset` of a buffer of
 * `dyStride`; zero past the image): one thread per tile and 4 channels. Binds dM, then dY.
 */
export function winogradDyProgram(
  spec: { n: number; h: number; w: number; cout: number; dyStride?: number; dyOffset?: number },
  m: WinogradSize,
): Program {
  const { alpha, AT } = WINOGRAD[m];
  const A = transpose(AT);
  const { tiles, perImage, tilesW } = winogradTiles(spec, m);
  const loads = Array.from({ length: m * m }, (_, q) => {
    const i = Math.floor(q / m), j = q % m;
    return `let e${i}_${j} = ld(b, ty0 + ${i}, tx0 + ${j}, c);`;
  });
  const stores = Array.from(
    { length: alpha * alpha },
    (_, q) => `dM[o + ${q} * xs] = d${Math.floor(q / alpha)}_${q % alpha};`,
  );
  return {
    name: "WinogradDyProgram",
    key: `winograd-dy:${m}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> dM: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> u: Uniforms;

fn ld(b: i32, y: i32, x: i32, c: i32) -> vec4<f32> {
  if (y >= u.h || x >= u.w) { return vec4<f32>(0.0); }
  return dy[((b * u.h + y) * u.w + x) * u.dyStride4 + u.dyOffset4 + c];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${tileThread("u.k4", m)}
  ${loads.join("\n  ")}
  ${sandwich(A, A, (k, j) => `e${k}_${j}`, "d", "vec4<f32>(0.0)")}
  let o = p * u.k4 + c;
  let xs = u.P * u.k4;
  ${stores.join("\n  ")}
}`,
    dispatch: dispatch1d((tiles * spec.cout) / 4),
    uniforms:
      "h : i32, w : i32, k4 : i32, dyStride4 : i32, dyOffset4 : i32, tilesW : i32, perImage : i32, P : i32,",
    params: [
      spec.h,
      spec.w,
      spec.cout / 4,
      (spec.dyStride ?? spec.cout) / 4,
      (spec.dyOffset ?? 0) / 4,
      tilesW,
      perImage,
      tiles,
    ].map(i32),
  };
}

/** One filter gradient's GEMMs: tiles, input channels (of V, `vStride` wide), output channels. */
export interface WinogradFilterGradSpec {
  tiles: number;
  c: number;
  vStride: number;
  cout: number;
  m: WinogradSize;
}

/** Workgroup tile of the filter-gradient GEMMs: rows (channels of V), columns, tiles per chunk, per thread. */
const GRAD_TILE = { bm: 64, bn: 32, bk: 16, tm: 4, tn: 4 };

/** Splits of the tile reduction: enough workgroups for a large GPU, at least 64 tiles each. */
export function winogradGradSplits(spec: WinogradFilterGradSpec): number {
  const { bm, bn } = GRAD_TILE;
  const groups = (spec.m + 2) ** 2 * Math.ceil(spec.cout / bn) * Math.ceil((spec.c + 1) / bm);
  const rowTiles = Math.ceil((spec.c + 1) / bm);
  return Math.max(
    1,
    Math.min(Math.ceil(1024 / groups), Math.ceil(spec.tiles / 64), Math.floor(MAX_DISPATCH / rowTiles)),
  );
}

/**
 * dU_s[ξ][row][k] = Σ over split s's tiles of V[ξ][tile][row] · dM[ξ][tile][k], rows c + 1 (the
 * last: the bias, V = 1 at ξ = (1, 1)). Binds dU (splits x α² x (c + 1) x cout), then V, dM.
 */
export function winogradFilterGradGemmProgram(spec: WinogradFilterGradSpec): Program {
  const { bm, bk, tm, tn } = GRAD_TILE;
  const bn = spec.cout > 16 ? GRAD_TILE.bn : 16;
  const alpha = spec.m + 2, one = alpha + 1; // ξ of point (1, 1)
  const splits = winogradGradSplits(spec);
  const rows = spec.c + 1, rowTiles = Math.ceil(rows / bm);
  const cx = bn / tn, nj = tn / 4, nt = (bm / tm) * cx;
  const ast = bk / 4 + 1, aSize = bm * ast, bSize = (bk * bn) / 4;
  const blocks = (bm / 4) * (bk / 4), bUnits = bSize;
  const perSplit = Math.ceil(Math.ceil(spec.tiles / splits) / bk) * bk;
  const accs = tileAccumulators({ tm, tn });
  // A tile: rows = channels of V, vec4s along tiles (the reduction): loaded as 4 tiles' vec4s of
  // 4 channels and transposed in registers.
  const loadA = unitLoads(
    blocks,
    nt,
    `let qc = l / ${bk / 4}; let qp = l % ${bk / 4};
        let c0 = m0 + qc * 4;
        ${
      [0, 1, 2, 3].map((j) =>
        `var v${j} = vec4<f32>(0.0);
        { let p = pb + qp * 4 + ${j};
          if (p < pEnd) {
            if (c0 < u.C) { v${j} = V[(xi * u.P + p) * u.vStride4 + c0 / 4]; }
            else if (c0 == u.C && xi == ${one}) { v${j} = vec4<f32>(1.0, 0.0, 0.0, 0.0); }
          } }`
      ).join("\n        ")
    }
        ${
      ["x", "y", "z", "w"].map((r, k) =>
        `Sh[(qc * 4 + ${k}) * ${ast} + qp] = vec4<f32>(v0.${r}, v1.${r}, v2.${r}, v3.${r});`
      )
        .join("\n        ")
    }`,
  );
  const loadB = unitLoads(
    bUnits,
    nt,
    `let r = l / ${bn / 4}; let q = l % ${bn / 4};
        var v = vec4<f32>(0.0);
        if (pb + r < pEnd && n0 / 4 + q < u.K4) { v = dM[(xi * u.P + pb + r) * u.K4 + n0 / 4 + q]; }
        Sh[${aSize} + l] = v;`,
  );
  const stores = accs.map((a, q) => {
    const i = Math.floor(q / nj), j = q % nj;
    return `{ let row = m0 + ty * ${tm} + ${i}; let col = n0 / 4 + tx + ${j * cx};
    if (row <= u.C && col < u.K4) { dU[((split * ${
      alpha * alpha
    } + xi) * (u.C + 1) + row) * u.K4 + col] = ${a}; } }`;
  });
  return {
    name: "WinogradFilterGradGemmProgram",
    key: `winograd-fgrad-gemm:${JSON.stringify({ alpha, bn, nt })}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> dU: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dM: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> u: Uniforms;
const AST = ${ast};
var<workgroup> Sh: array<vec4<f32>, ${aSize + bSize}>;

@compute @workgroup_size(${nt})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = i32(lidx);
  let xi = i32(wid.z);
  let split = i32(wid.y) / u.rowTiles;
  let m0 = (i32(wid.y) % u.rowTiles) * ${bm};
  let n0 = i32(wid.x) * ${bn};
  let aBase = 0;
  let bBase = ${aSize};
  let tx = tid % ${cx}; let ty = tid / ${cx};
  let pStart = split * u.perSplit;
  let pEnd = min(u.P, pStart + u.perSplit);
  ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join(" ")}
  for (var pb = pStart; pb < pEnd; pb += ${bk}) {
    ${loadA.join("\n    ")}
    ${loadB.join("\n    ")}
    workgroupBarrier();
    ${tileProduct({ bk, bn, tm, tn })}
    workgroupBarrier();
  }
  ${stores.join("\n  ")}
}`,
    dispatch: [Math.ceil(spec.cout / bn), rowTiles * splits, alpha * alpha],
    uniforms: "P : i32, C : i32, vStride4 : i32, K4 : i32, perSplit : i32, rowTiles : i32,",
    params: [spec.tiles, spec.c, spec.vStride / 4, spec.cout / 4, perSplit, rowTiles].map(i32),
  };
}

/**
 * dW = scale · Gᵀ (Σ_s dU_s) G into the gradient buffer as HWIO [3, 3, c, cout], and the bias
 * gradient scale · Σ_s dU_s[(1, 1)][c] at element `biasAt`: one thread per row and 4 channels.
 * Binds the gradient, then dU.
 */
export function winogradFilterGradOutputProgram(
  spec: { c: number; cout: number; splits: number; scale?: number; biasAt: number },
  m: WinogradSize,
): Program {
  const { alpha, G } = WINOGRAD[m];
  const GT = transpose(G);
  const q2 = alpha * alpha;
  const sums = Array.from({ length: q2 }, (_, q) => `u${Math.floor(q / alpha)}_${q % alpha}`);
  const stores = Array.from(
    { length: 9 },
    (_, q) => `grad[(${q} * u.C + row) * u.K4 + k] = u.scale * w${Math.floor(q / 3)}_${q % 3};`,
  );
  return {
    name: "WinogradFilterGradOutputProgram",
    key: `winograd-fgrad-out:${m}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> grad: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> dU: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> u: Uniforms;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= (u.C + 1) * u.K4) { return; }
  let k = i % u.K4;
  let row = i / u.K4;
  ${sums.map((v) => `var ${v} = vec4<f32>(0.0);`).join(" ")}
  for (var s = 0; s < u.splits; s++) {
    let o = (s * ${q2} * (u.C + 1) + row) * u.K4 + k;
    let xs = (u.C + 1) * u.K4;
    ${sums.map((v, q) => `${v} += dU[o + ${q} * xs];`).join(" ")}
  }
  if (row == u.C) {
    grad[u.biasAt4 + k] = u.scale * u1_1;
    return;
  }
  ${sandwich(GT, GT, (a, b) => `u${a}_${b}`, "w", "vec4<f32>(0.0)")}
  ${stores.join("\n  ")}
}`,
    dispatch: dispatch1d((spec.c + 1) * (spec.cout / 4)),
    uniforms: "C : i32, K4 : i32, splits : i32, biasAt4 : i32, scale : f32,",
    params: [
      ...[spec.c, spec.cout / 4, spec.splits, spec.biasAt / 4].map(i32),
      { type: "float32", data: [spec.scale ?? 1] },
    ],
  };
}
