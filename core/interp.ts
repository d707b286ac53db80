/**
 * Network interpolation (ESRGAN paper §3.4, xinntao/ESRGAN `net_interp.py`): blends two generators
 * of one architecture parameter by parameter, θ = (1 − α)·θ_A + α·θ_B, where the paper's A is the
 * PSNR-oriented net and B the GAN one (α = 0.8 in its figures). α = 0 gives A, α = 1 gives B.
 * @module
 */
import { assertSameLayout, type StateDict } from "./state_dict.ts";

/** (1 − alpha)·a + alpha·b for every tensor; throws when the layouts differ. */
export function interpolateStateDicts(a: StateDict, b: StateDict, options: { alpha: number }): StateDict {
  const { alpha } = options;
  if (!Number.isFinite(alpha)) throw new Error(`interpolation alpha must be a number, got ${alpha}`);
  assertSameLayout(a, b);
  const out: StateDict = new Map();
  for (const [k, ta] of a) {
    const tb = b.get(k)!;
    const data = new Float32Array(ta.data.length);
    for (let i = 0; i < data.length; i++) data[i] = (1 - alpha) * ta.data[i] + alpha * tb.data[i];
    out.set(k, { shape: [...ta.shape], data });
  }
  return out;
}
