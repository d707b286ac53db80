/**
 * The image side of an upscale, around the net (Real-ESRGAN's `RealESRGANer.pre_process` and
 * `post_process`): an RGBA image split into the colours the net sees and what is set aside (its
 * alpha, whether it is gray or opaque), and the net's output put back together as an RGBA image at
 * the scale asked for.
 * @module
 */
import type { RgbaImage } from "./image_io.ts";
import { imresizeArray } from "./imresize.ts";

/**
 * Resamples an interleaved float image (any channel count) to `width` x `height`. The one place
 * that picks the resampler: MATLAB-compatible bicubic, antialiased when shrinking.
 */
export function resample(
  data: Float32Array,
  from: { width: number; height: number; channels: number },
  to: { width: number; height: number },
): Float32Array {
  if (from.width === to.width && from.height === to.height) return data;
  return Float32Array.from(imresizeArray(data, from, { width: to.width, height: to.height }).data);
}

/** An RGBA image as the net takes it, and what {@link postProcess} puts back. */
export interface NetInput {
  width: number;
  height: number;
  /** Interleaved RGB in [0, 1]. */
  rgb: Float32Array;
  /** Alpha in [0, 1], one value per pixel. */
  alpha: Float32Array;
  /** R = G = B everywhere: the output is made gray again. */
  gray: boolean;
  /** Alpha at its maximum everywhere: the alpha need not be upscaled. */
  opaque: boolean;
  /** A 16-bit image (`data16`): the output gets `data16` too. */
  deep: boolean;
}

/** Splits an RGBA image (8-bit, or 16-bit where it has `data16`) into the net's input and what is set aside. */
export function preProcess(img: RgbaImage): NetInput {
  const { width: w, height: h, data16 } = img;
  if (img.data.length !== w * h * 4 || (data16 && data16.length !== w * h * 4)) {
    throw new Error(`upscale: ${img.data.length} bytes for a ${w}x${h} RGBA image`);
  }
  const data = data16 ?? img.data, full = data16 ? 65535 : 255;
  const rgb = new Float32Array(w * h * 3);
  const alpha = new Float32Array(w * h);
  let gray = true, opaque = true;
  for (let i = 0; i < w * h; i++) {
    const r = data[4 * i], g = data[4 * i + 1], b = data[4 * i + 2], a = data[4 * i + 3];
    rgb[3 * i] = r / full;
    rgb[3 * i + 1] = g / full;
    rgb[3 * i + 2] = b / full;
    alpha[i] = a / full;
    if (r !== g || g !== b) gray = false;
    if (a !== full) opaque = false;
  }
  return { width: w, height: h, rgb, alpha, gray, opaque, deep: !!data16 };
}

/** The alpha as a gray RGB image, for the net (Real-ESRGAN's alpha_upsampler "realesrgan"). */
export function alphaAsRgb(input: NetInput): Float32Array {
  const { alpha } = input;
  const out = new Float32Array(alpha.length * 3);
  for (let i = 0; i < alpha.length; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = alpha[i];
  return out;
}

/**
 * The net's output for {@link alphaAsRgb} (`out`, `scale` times the input's size) back to one
 * channel: its luma, except where the input's alpha is flat (its 3x3 neighbourhood one value:
 * inside fully transparent or opaque areas), which keeps that value exactly. The net leaves a haze
 * of a few levels there, the faint ghost of whatever colour lies under transparent pixels
 * (bench/alpha_masks.ts's masks: 43% of the pixels 4 px or more from an edge were off 0 or 255,
 * 13% after; SSIM 0.732 → 0.764).
 */
export function alphaFromNet(input: NetInput, out: { rgb: Float32Array; scale: number }): Float32Array {
  const { width: w, height: h } = input, s = out.scale;
  const W = w * s, H = h * s;
  if (out.rgb.length !== W * H * 3) {
    throw new Error(`alphaFromNet: ${out.rgb.length} values for ${W}x${H} RGB`);
  }
  const flat = flatValues(input.alpha, w, h, 1);
  const alpha = new Float32Array(W * H);
  for (let Y = 0, i = 0; Y < H; Y++) {
    for (let X = 0; X < W; X++, i++) {
      const v = flat[Math.floor(Y / s) * w + Math.floor(X / s)];
      alpha[i] = v >= 0 ? v : luma(out.rgb, i);
    }
  }
  return alpha;
}

/**
 * The RGBA image from the net's output (`rgb`, `scale` times the input's size, and the upscaled
 * alpha unless the input was opaque), at `outscale` times the input's size (resampled from the
 * net's; default the net's scale): gray inputs come back gray, 16-bit ones 16-bit.
 */
export function postProcess(
  input: NetInput,
  hr: { rgb: Float32Array; alpha?: Float32Array; scale: number },
  options: { outscale?: number } = {},
): RgbaImage {
  const { width: w, height: h, gray, opaque, deep } = input;
  const { rgb, alpha, scale: s } = hr;
  const W = w * s, H = h * s, outscale = options.outscale ?? s;
  if (rgb.length !== W * H * 3) throw new Error(`postProcess: ${rgb.length} values for ${W}x${H} RGB`);
  if (!opaque && alpha?.length !== W * H) {
    throw new Error(`postProcess: no ${W}x${H} alpha for a transparent image`);
  }
  const to16 = (v: number) => Math.round(Math.min(1, Math.max(0, v)) * 65535);
  if (outscale === s) {
    // Straight to integers: no float copy of an output that may have hundreds of megapixels. A
    // Uint8ClampedArray store of an f32 value v * 255 gives Math.round's byte (the only tie, 127.5,
    // rounds up either way; NaN gives 0), a third of the time; luma is f64, so it keeps Math.round.
    const n = W * H;
    const out = new Uint8ClampedArray(n * 4);
    const out16 = deep ? new Uint16Array(n * 4) : undefined;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      let r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
      if (gray) {
        // As Real-ESRGAN does for gray input: the net's RGB back to one luma channel.
        r = g = b = luma(rgb, i);
        out[j] = out[j + 1] = out[j + 2] = Math.round(r * 255);
      } else {
        out[j] = r * 255;
        out[j + 1] = g * 255;
        out[j + 2] = b * 255;
      }
      const a = opaque ? 1 : alpha![i];
      out[j + 3] = a * 255;
      if (out16) {
        out16[j] = to16(r);
        out16[j + 1] = to16(g);
        out16[j + 2] = to16(b);
        out16[j + 3] = to16(a);
      }
    }
    return { width: W, height: H, data: out, ...(out16 ? { data16: out16 } : {}) };
  }
  const rgba = new Float32Array(W * H * 4);
  for (let i = 0; i < W * H; i++) {
    const y = gray ? luma(rgb, i) : 0;
    for (let c = 0; c < 3; c++) rgba[4 * i + c] = gray ? y : rgb[3 * i + c];
    rgba[4 * i + 3] = opaque ? 1 : alpha![i];
  }
  const outW = Math.max(1, Math.round(w * outscale));
  const outH = Math.max(1, Math.round(h * outscale));
  const resized = resample(rgba, { width: W, height: H, channels: 4 }, { width: outW, height: outH });
  const out = new Uint8ClampedArray(outW * outH * 4);
  for (let i = 0; i < out.length; i++) out[i] = resized[i] * 255; // as Math.round, for f32 (above)
  const out16 = deep ? Uint16Array.from(resized, to16) : undefined;
  // Bicubic overshoot must not make an opaque image slightly transparent.
  if (opaque) {
    for (let i = 3; i < out.length; i += 4) out[i] = 255;
    if (out16) { for (let i = 3; i < out16.length; i += 4) out16[i] = 65535; }
  }
  return { width: outW, height: outH, data: out, ...(out16 ? { data16: out16 } : {}) };
}

/** Rec. 601 luma of pixel `i` of interleaved RGB, as Real-ESRGAN turns RGB back to one channel. */
function luma(rgb: Float32Array, i: number): number {
  return 0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] + 0.114 * rgb[3 * i + 2];
}

/** Per pixel of a `w` x `h` plane: its value where every pixel within `r` (clipped) has it, else -1. */
function flatValues(plane: Float32Array, w: number, h: number, r: number): Float32Array {
  const out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = plane[y * w + x];
      let same = true;
      for (let yy = Math.max(0, y - r); yy <= Math.min(h - 1, y + r) && same; yy++) {
        for (let xx = Math.max(0, x - r); xx <= Math.min(w - 1, x + r); xx++) {
          if (plane[yy * w + xx] !== v) {
            same = false;
            break;
          }
        }
      }
      out[y * w + x] = same ? v : -1;
    }
  }
  return out;
}
