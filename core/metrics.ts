/**
 * PSNR and SSIM as the SR literature reports them: BasicSR's `calculate_psnr` / `calculate_ssim`
 * with `test_y_channel=True` and `crop_border=scale`. Both work on uint8-range values: the Y
 * channel of ITU-R BT.601 as MATLAB's `rgb2ycbcr` computes it (16..235, kept as float, not rounded),
 * or, with `yChannel: false`, the R, G and B channels. SSIM is Wang et al.'s, with the 11x11
 * Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2 and C2 = (0.03*255)^2, averaged
 * over the channels. Everything is float64 on typed arrays.
 * @module
 */
import type { RgbaImage } from "./image_io.ts";

/** Options shared by the metrics. */
export interface MetricOptions {
  /** Pixels dropped on each side before measuring; the SR convention is the scale factor. Default 0. */
  cropBorder?: number;
  /** Measure the BT.601 Y channel (default true), else R, G and B. */
  yChannel?: boolean;
  /**
   * When both images are grayscale (R = G = B everywhere), measure their gray values (0..255) instead
   * of rgb2ycbcr's Y (16..235), as MATLAB evaluation scripts do for files stored with one channel
   * (they skip rgb2ycbcr there; an RGB file with equal channels still gets it, so callers following
   * MATLAB set this per file). Default false (BasicSR). A grayscale pair's PSNR drops by
   * 20 log10(255/219) = 1.32 dB; this is how the paper's Set14 bicubic 26.00 dB arises.
   */
  grayAsLuma?: boolean;
}

/** One or more float64 planes of the same size. */
interface Planes {
  width: number;
  height: number;
  planes: Float64Array[];
}

/** MATLAB `rgb2ycbcr`'s luma of an 8-bit RGB triple, unrounded, in 16..235. */
export function lumaBT601(r: number, g: number, b: number): number {
  return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255;
}

/** The BT.601 Y plane (16..235, float) of an RGBA image; alpha is ignored. */
export function rgbToY(img: RgbaImage): Float64Array {
  const n = img.width * img.height;
  const y = new Float64Array(n);
  const d = img.data;
  for (let i = 0; i < n; i++) y[i] = lumaBT601(d[4 * i], d[4 * i + 1], d[4 * i + 2]);
  return y;
}

/** Whether R = G = B at every pixel. */
export function isGrayscale(img: RgbaImage): boolean {
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i] !== d[i + 2]) return false;
  return true;
}

/** Cropped measurement planes of an image; `gray` takes the R channel as the plane. */
function toPlanes(img: RgbaImage, options: MetricOptions, gray = false): Planes {
  const crop = options.cropBorder ?? 0;
  if (!Number.isInteger(crop) || crop < 0) {
    throw new Error(`cropBorder must be a non-negative integer, got ${crop}`);
  }
  const width = img.width - 2 * crop;
  const height = img.height - 2 * crop;
  if (width <= 0 || height <= 0) {
    throw new Error(`a ${img.width}x${img.height} image has nothing left after cropping ${crop} px per side`);
  }
  const useY = options.yChannel ?? true;
  const planes = Array.from({ length: useY ? 1 : 3 }, () => new Float64Array(width * height));
  const d = img.data;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const s = 4 * ((y + crop) * img.width + x + crop);
      const o = y * width + x;
      if (gray) planes[0][o] = d[s];
      else if (useY) planes[0][o] = lumaBT601(d[s], d[s + 1], d[s + 2]);
      else for (let c = 0; c < 3; c++) planes[c][o] = d[s + c];
    }
  }
  return { width, height, planes };
}

function checkSameSize(a: RgbaImage, b: RgbaImage): void {
  if (a.width !== b.width || a.height !== b.height) {
    throw new Error(`images differ in size: ${a.width}x${a.height} vs ${b.width}x${b.height}`);
  }
}

/** PSNR of planes, peak 255: mean squared error over all planes together, as BasicSR. */
function psnrOfPlanes(a: Planes, b: Planes): number {
  let sum = 0;
  let n = 0;
  for (let c = 0; c < a.planes.length; c++) {
    const pa = a.planes[c];
    const pb = b.planes[c];
    for (let i = 0; i < pa.length; i++) {
      const d = pa[i] - pb[i];
      sum += d * d;
    }
    n += pa.length;
  }
  const mse = sum / n;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

/** OpenCV's `getGaussianKernel(11, 1.5)`: normalised 1-D Gaussian taps. */
function gaussianTaps(size = 11, sigma = 1.5): Float64Array {
  const taps = new Float64Array(size);
  const half = (size - 1) / 2;
  let sum = 0;
  for (let i = 0; i < size; i++) {
    taps[i] = Math.exp(-((i - half) ** 2) / (2 * sigma * sigma));
    sum += taps[i];
  }
  for (let i = 0; i < size; i++) taps[i] /= sum;
  return taps;
}

const WINDOW = gaussianTaps();

/** 'valid' filtering with the separable 11x11 window: (w-10) x (h-10) out. */
function filterValid(src: Float64Array, width: number, height: number): Float64Array {
  const k = WINDOW.length;
  const ow = width - k + 1;
  const oh = height - k + 1;
  const rows = new Float64Array(ow * height);
  for (let y = 0; y < height; y++) {
    const r = y * width;
    for (let x = 0; x < ow; x++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += WINDOW[t] * src[r + x + t];
      rows[y * ow + x] = s;
    }
  }
  const out = new Float64Array(ow * oh);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += WINDOW[t] * rows[(y + t) * ow + x];
      out[y * ow + x] = s;
    }
  }
  return out;
}

/** BasicSR's `_ssim` on one plane pair: the mean of the SSIM map. */
function ssimOfPlane(a: Float64Array, b: Float64Array, width: number, height: number): number {
  const c1 = (0.01 * 255) ** 2;
  const c2 = (0.03 * 255) ** 2;
  const n = a.length;
  const aa = new Float64Array(n);
  const bb = new Float64Array(n);
  const ab = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    aa[i] = a[i] * a[i];
    bb[i] = b[i] * b[i];
    ab[i] = a[i] * b[i];
  }
  const mu1 = filterValid(a, width, height);
  const mu2 = filterValid(b, width, height);
  const e11 = filterValid(aa, width, height);
  const e22 = filterValid(bb, width, height);
  const e12 = filterValid(ab, width, height);
  let sum = 0;
  for (let i = 0; i < mu1.length; i++) {
    const m1 = mu1[i];
    const m2 = mu2[i];
    const s1 = e11[i] - m1 * m1;
    const s2 = e22[i] - m2 * m2;
    const s12 = e12[i] - m1 * m2;
    sum += ((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1 * m1 + m2 * m2 + c1) * (s1 + s2 + c2));
  }
  return sum / mu1.length;
}

function ssimOfPlanes(a: Planes, b: Planes): number {
  if (a.width < WINDOW.length || a.height < WINDOW.length) {
    throw new Error(`SSIM needs at least 11x11 pixels after cropping, got ${a.width}x${a.height}`);
  }
  let sum = 0;
  for (let c = 0; c < a.planes.length; c++) sum += ssimOfPlane(a.planes[c], b.planes[c], a.width, a.height);
  return sum / a.planes.length;
}

/** Both images' measurement planes. */
function planePair(a: RgbaImage, b: RgbaImage, options: MetricOptions): [Planes, Planes] {
  checkSameSize(a, b);
  const gray = (options.grayAsLuma ?? false) && (options.yChannel ?? true) && isGrayscale(a) &&
    isGrayscale(b);
  return [toPlanes(a, options, gray), toPlanes(b, options, gray)];
}

/** PSNR in dB (peak 255) between two same-size images; Infinity when identical. */
export function psnr(a: RgbaImage, b: RgbaImage, options: MetricOptions = {}): number {
  return psnrOfPlanes(...planePair(a, b, options));
}

/** SSIM (1 when identical) between two same-size images of at least 11x11 after cropping. */
export function ssim(a: RgbaImage, b: RgbaImage, options: MetricOptions = {}): number {
  return ssimOfPlanes(...planePair(a, b, options));
}

/**
 * Detail, as SR papers' sharpness comparisons look at it: the mean absolute 4-neighbour Laplacian of
 * the measured plane(s) (Y by default), on 0..255 values. A blurry upscale scores below its HR image,
 * a GAN upscale near it (or above it, with invented texture); compare it with the HR's value.
 */
export function laplacianEnergy(img: RgbaImage, options: MetricOptions = {}): number {
  const { width, height, planes } = toPlanes(img, options);
  if (width < 3 || height < 3) {
    throw new Error(`laplacianEnergy: ${width}x${height} is under 3x3 after cropping`);
  }
  let sum = 0;
  for (const p of planes) {
    for (let y = 1; y < height - 1; y++) {
      for (let x = 1; x < width - 1; x++) {
        const i = y * width + x;
        sum += Math.abs(4 * p[i] - p[i - 1] - p[i + 1] - p[i - width] - p[i + width]);
      }
    }
  }
  return sum / (planes.length * (width - 2) * (height - 2));
}

/** PSNR and SSIM together, converting the images once. */
export function psnrSsim(
  a: RgbaImage,
  b: RgbaImage,
  options: MetricOptions = {},
): { psnr: number; ssim: number } {
  const [pa, pb] = planePair(a, b, options);
  return { psnr: psnrOfPlanes(pa, pb), ssim: ssimOfPlanes(pa, pb) };
}
