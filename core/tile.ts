/**
 * Tiling for the upscaler: cut the low-resolution image into tiles that overlap by `pad` pixels on
 * each inner side, run each through the net, and blend the outputs with linear feathering across
 * each overlap, so that no seam shows and memory stays bounded by the tile size.
 *
 * Why feathering rather than Real-ESRGAN's crop: cropping each tile's pad leaves a hard edge where
 * two tiles' outputs (each slightly off near its own border) meet; a linear cross-fade over the whole
 * overlap hides that edge, and each tile's weight falls to zero exactly at its own border, where its
 * output is least reliable.
 * @module
 */

/** One tile along one axis: the core it is responsible for, and the padded span the net sees. */
export interface TileSpan {
  /** Core [start, end) in input pixels. */
  start: number;
  end: number;
  /** Padded span [inStart, inEnd): the core widened by `pad` and clipped to the image. */
  inStart: number;
  inEnd: number;
}

/**
 * Splits an axis of `size` pixels into near-equal cores of at most `tile` pixels (equal parts avoid
 * a sliver of a last tile), each widened by `pad`. `tile` ≤ 0 or ≥ `size` gives one span.
 */
export function planTiles(size: number, tile: number, pad: number): TileSpan[] {
  if (!(size > 0)) throw new Error(`planTiles: size ${size}`);
  if (pad < 0 || !Number.isInteger(pad)) throw new Error(`tile pad must be a whole number ≥ 0, not ${pad}`);
  if (!Number.isInteger(tile)) throw new Error(`tile must be a whole number, not ${tile}`);
  const n = tile <= 0 || tile >= size ? 1 : Math.ceil(size / tile);
  const spans: TileSpan[] = [];
  for (let k = 0; k < n; k++) {
    const start = Math.round((k * size) / n);
    const end = Math.round(((k + 1) * size) / n);
    spans.push({ start, end, inStart: Math.max(0, start - pad), inEnd: Math.min(size, end + pad) });
  }
  return spans;
}

/**
 * Feathering weights over one tile's output span (`scale` output pixels per input pixel): 1 in
 * the middle, a linear ramp across each overlap with a neighbour, reaching zero at the tile's own
 * border. Two neighbours' ramps over the same overlap sum to 1 pixel by pixel.
 */
export function featherWeights(spans: TileSpan[], k: number, scale: number): Float32Array {
  const span = spans[k];
  const n = (span.inEnd - span.inStart) * scale;
  const left = k > 0 ? (spans[k - 1].inEnd - span.inStart) * scale : 0;
  const right = k < spans.length - 1 ? (span.inEnd - spans[k + 1].inStart) * scale : 0;
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = 1;
    if (left > 0) v = Math.min(v, (i + 0.5) / left);
    if (right > 0) v = Math.min(v, (n - i - 0.5) / right);
    w[i] = v;
  }
  return w;
}

/** Accumulates weighted tile outputs into a full output image, then normalises by the weights. */
export class TileBlender {
  readonly width: number;
  readonly height: number;
  readonly channels: number;
  readonly batch: number;
  private readonly sum: Float32Array;
  private readonly weight: Float32Array;

  /** An empty output of `batch` images of `width` x `height` x `channels`. */
  constructor(shape: { batch?: number; width: number; height: number; channels: number }) {
    this.batch = shape.batch ?? 1;
    this.width = shape.width;
    this.height = shape.height;
    this.channels = shape.channels;
    this.sum = new Float32Array(this.batch * this.width * this.height * this.channels);
    this.weight = new Float32Array(this.width * this.height);
  }

  /**
   * Adds one tile's output (`batch` x `wy.length` x `wx.length` x channels, NHWC) whose top-left
   * corner is at (`y0`, `x0`), weighted by `wy[i] * wx[j]`.
   */
  add(data: ArrayLike<number>, at: { y0: number; x0: number; wy: Float32Array; wx: Float32Array }): void {
    const { y0, x0, wy, wx } = at;
    const { width: W, height: H, channels: C, batch, sum, weight } = this;
    const th = wy.length, tw = wx.length;
    if (data.length !== batch * th * tw * C) {
      throw new Error(`TileBlender: tile holds ${data.length} values, expected ${batch * th * tw * C}`);
    }
    if (y0 < 0 || x0 < 0 || y0 + th > H || x0 + tw > W) {
      throw new Error("TileBlender: tile outside the image");
    }
    // This runs on the main thread for every output value, between a GPU's tiles: a tile's core,
    // which it alone covers at weight 1 (featherWeights), is copied, not multiplied and added.
    const typed = data instanceof Float32Array ? data : undefined;
    for (let i = 0; i < th; i++) {
      const wi = wy[i], p0 = (y0 + i) * W + x0;
      for (let j = 0; j < tw;) {
        let e = j;
        while (e < tw && wi * wx[e] === 1 && weight[p0 + e] === 0) e++;
        if (e > j) {
          for (let b = 0; b < batch; b++) {
            const src = ((b * th + i) * tw + j) * C, dst = (b * H * W + p0 + j) * C, n = (e - j) * C;
            if (typed) sum.set(typed.subarray(src, src + n), dst);
            else for (let k = 0; k < n; k++) sum[dst + k] = data[src + k];
          }
          weight.fill(1, p0 + j, p0 + e);
          j = e;
          continue;
        }
        const w = wi * wx[j];
        weight[p0 + j] += w;
        for (let b = 0; b < batch; b++) {
          const src = ((b * th + i) * tw + j) * C, dst = (b * H * W + p0 + j) * C;
          for (let c = 0; c < C; c++) sum[dst + c] += w * data[src + c];
        }
        j++;
      }
    }
  }

  /**
   * The blended image (NHWC), normalised in place (the blender's own buffer: add nothing after).
   * Throws if a pixel got no weight (tiles did not cover it).
   */
  result(): Float32Array {
    const { width: W, height: H, channels: C, batch, sum, weight } = this;
    for (let p = 0; p < W * H; p++) {
      const w = weight[p];
      if (w === 1) continue;
      if (!(w > 0)) throw new Error(`TileBlender: pixel ${p % W},${Math.floor(p / W)} not covered`);
      for (let b = 0; b < batch; b++) {
        const o = (b * H * W + p) * C;
        for (let c = 0; c < C; c++) sum[o + c] /= w;
      }
      weight[p] = 1;
    }
    return sum;
  }
}
