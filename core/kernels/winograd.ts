/**
 * Winograd's minimal filtering for 3x3 convolutions, F(m x m, 3x3) (Lavin & Gray, "Fast Algorithms
 * for Convolutional Neural Networks", 2016): an m x m output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for
 * the (m + 2)² input tile d and the 3x3 filter g, (m + 2)² multiplies instead of 9m². F(2x2): 2.25x
 * fewer, exact in any precision; F(4x4): 4x fewer, its transforms scale values by up to 10x (with
 * f16 storage and f32 arithmetic still as close to f32 as a direct f16 forward: see
 * webgpu_winograd.ts's winogradCanRun). Interpolation points 0, ±1, ±2 (and ∞), as wasm/rrdb_cpu.c uses.
 * @module
 */

/** The transforms of F(m x m, 3x3): Bᵀ (α x α), G (α x 3), Aᵀ (m x α), α = m + 2. */
export interface WinogradMatrices {
  m: number;
  alpha: number;
  BT: number[][];
  G: number[][];
  AT: number[][];
}

/** F(2x2, 3x3) and F(4x4, 3x3). */
export const WINOGRAD: Record<2 | 4, WinogradMatrices> = {
  2: {
    m: 2,
    alpha: 4,
    BT: [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    G: [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    AT: [[1, 1, 1, 0], [0, 1, -1, -1]],
  },
  4: {
    m: 4,
    alpha: 6,
    BT: [
      [4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1],
    ],
    G: [
      [1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1],
    ],
    AT: [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
  },
};
