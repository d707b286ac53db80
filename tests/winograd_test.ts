/**
 * Winograd's transforms (core/kernels/winograd.ts), which the WebGPU and CPU kernels share: in
 * float64, Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A must equal the 3x3 correlation of the (m + 2)² tile d with g
 * (what a 'same' conv2d computes), for F(2x2) and F(4x4); the point-1 column of Aᵀ (the filter
 * gradients' bias trick) is all ones.
 */
import assert from "node:assert/strict";
import { WINOGRAD } from "../core/kernels/winograd.ts";

const mul = (a: number[][], b: number[][]) =>
  a.map((r) => b[0].map((_, j) => r.reduce((s, v, k) => s + v * b[k][j], 0)));
const t = (a: number[][]) => a[0].map((_, j) => a.map((r) => r[j]));

Deno.test("winograd: F(2x2, 3x3) and F(4x4, 3x3) compute the 3x3 correlation", () => {
  let seed = 1;
  const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5;
  for (const m of [2, 4] as const) {
    const { alpha, BT, G, AT } = WINOGRAD[m];
    assert.equal(alpha, m + 2);
    assert.deepEqual([BT.length, BT[0].length, G.length, G[0].length, AT.length, AT[0].length], [
      alpha,
      alpha,
      alpha,
      3,
      m,
      alpha,
    ]);
    for (let trial = 0; trial < 5; trial++) {
      const d = Array.from({ length: alpha }, () => Array.from({ length: alpha }, rand));
      const g = Array.from({ length: 3 }, () => Array.from({ length: 3 }, rand));
      const u = mul(mul(G, g), t(G)), v = mul(mul(BT, d), t(BT));
      const y = mul(mul(AT, u.map((r, i) => r.map((x, j) => x * v[i][j]))), t(AT));
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < m; j++) {
          let want = 0;
          for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) want += d[i + a][j + b] * g[a][b];
          assert.ok(Math.abs(y[i][j] - want) < 1e-12, `F(${m}) output (${i}, ${j}): ${y[i][j]} vs ${want}`);
        }
      }
    }
    assert.deepEqual(AT.map((r) => r[1]), Array(m).fill(1), `F(${m}): Aᵀ's column of the point 1`);
  }
});
