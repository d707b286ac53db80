/**
 * Training data as BasicSR's paired dataset sees it: HR images cut into random `gtSize` crops,
 * flipped and transposed at random (BasicSR's `augment`: hflip, vflip, rot90 as a transpose),
 * with the LR made by MATLAB's bicubic from the 8-bit crop (BasicSR reads LR images that MATLAB
 * made from 8-bit HR images; making them per crop differs from that only near the crop's borders),
 * or, given an LR folder (BasicSR's `dataroot_lq`: DIV2K's unknown degradations, one's own
 * camera pairs), the matching crop of each image's own LR, flipped and transposed alike.
 * Decoded images stay in memory; batches are made ahead of the training step by a queue.
 * Decoding is passed in (an {@link ImageDecoder}: core/image_io's for the CLI, a PNG-only one for
 * bundles, where image_io's wasm and native codecs cannot come along).
 * Every batch draws from its own random stream, seeded by (seed, step): a run is reproducible and
 * a resumed run draws the same batches as an uninterrupted one, however far ahead the queue ran.
 * @module
 */
import type { RgbaImage } from "../core/image_io.ts";
import { imresizeArray } from "../core/imresize.ts";
import { Rng } from "./rng.ts";

/** A decoded image, RGB 8-bit, rows top to bottom. */
export interface RgbImage {
  name: string;
  width: number;
  height: number;
  rgb: Uint8Array;
  /** Its own LR (`width / scale` x `height / scale`), where the data is paired. */
  lq?: RgbImage;
}

/** A batch, NHWC float32 in [0, 1]. */
export interface Batch {
  step: number;
  n: number;
  /** [n, gtSize/scale, gtSize/scale, 3] */
  lq: Float32Array;
  /** [n, gtSize, gtSize, 3] */
  gt: Float32Array;
  lqSize: number;
  gtSize: number;
}

/** How batches are cut. */
export interface CropOptions {
  batchSize: number;
  gtSize: number;
  scale: number;
  /** Random horizontal flips. */
  hflip: boolean;
  /** Random vertical flips and transposes (BasicSR's `use_rot`). */
  rot: boolean;
  seed: number;
}

// image_io's IMAGE_FILE, not imported: bundles leave image_io's codecs out (see above)
const IMAGE_EXT = /\.(png|jpe?g|webp)$/i;

/** Sorted image files of a folder; throws naming the folder when it has none. */
export async function listImages(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!IMAGE_EXT.test(e.name)) continue;
      if (e.isFile || (e.isSymlink && (await Deno.stat(`${dir}/${e.name}`)).isFile)) names.push(e.name);
    }
  } catch (err) {
    throw new Error(`${dir}: cannot read the folder (${(err as Error).message})`);
  }
  if (!names.length) throw new Error(`${dir}: no PNG, JPEG or WebP images`);
  return names.sort().map((n) => `${dir.replace(/\/$/, "")}/${n}`);
}

/** Decodes an image file's bytes; `name` is for error messages. */
export type ImageDecoder = (bytes: Uint8Array, name: string) => Promise<RgbaImage>;

/** Decodes one file to RGB (alpha dropped). */
export async function loadRgb(path: string, decode: ImageDecoder): Promise<RgbImage> {
  const img = await decode(await Deno.readFile(path), path);
  const rgb = new Uint8Array(img.width * img.height * 3);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = img.data[j];
    rgb[i + 1] = img.data[j + 1];
    rgb[i + 2] = img.data[j + 2];
  }
  return { name: path.split("/").pop()!, width: img.width, height: img.height, rgb };
}

/**
 * Decodes the images of a folder once (the cache the crops are cut from). Images smaller than
 * `minSide` cannot give a crop: they are left out with a warning, and none left is an error.
 */
export async function loadImageFolder(
  dir: string,
  options: { decode: ImageDecoder; minSide?: number; maxImages?: number },
): Promise<RgbImage[]> {
  let files = await listImages(dir);
  if (options.maxImages) files = files.slice(0, options.maxImages);
  const out: RgbImage[] = [];
  for (const f of files) {
    const img = await loadRgb(f, options.decode);
    if (options.minSide && Math.min(img.width, img.height) < options.minSide) {
      console.warn(
        `warning: ${f} is ${img.width}x${img.height}, smaller than the ${options.minSide} px crop: left out`,
      );
      continue;
    }
    out.push(img);
  }
  if (!out.length) throw new Error(`${dir}: no image is at least ${options.minSide} px on each side`);
  return out;
}

/** Cuts `size`² pixels at (top, left), flips and transposes them, as 8-bit RGB. */
export function cropAugment(
  img: RgbImage,
  at: { top: number; left: number; size: number },
  aug: { hflip: boolean; vflip: boolean; transpose: boolean },
): Uint8Array {
  const { top, left, size } = at;
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      // output (y, x) reads the source pixel BasicSR's augment order would put there:
      // hflip, then vflip, then transpose
      let sy = aug.transpose ? x : y, sx = aug.transpose ? y : x;
      if (aug.vflip) sy = size - 1 - sy;
      if (aug.hflip) sx = size - 1 - sx;
      const s = ((top + sy) * img.width + left + sx) * 3, d = (y * size + x) * 3;
      out[d] = img.rgb[s];
      out[d + 1] = img.rgb[s + 1];
      out[d + 2] = img.rgb[s + 2];
    }
  }
  return out;
}

/** MATLAB bicubic downscale of an 8-bit RGB square, kept 8-bit as a saved LR PNG is. */
export function downscale(rgb: Uint8Array, size: number, scale: number): { rgb: Float64Array; size: number } {
  const r = imresizeArray(rgb, { width: size, height: size, channels: 3 }, { scale: 1 / scale, uint8: true });
  return { rgb: r.data, size: r.shape.width };
}

/** The stem an HR file's LR may carry: the same, DIV2K's `0001` → `0001x4`, SelfExSR's `_HR` → `_LR`. */
function lrStems(hrStem: string, scale: number): string[] {
  return [hrStem, `${hrStem}x${scale}`, ...(/_HR$/.test(hrStem) ? [hrStem.replace(/_HR$/, "_LR")] : [])];
}

const stemOf = (path: string) => path.split("/").pop()!.replace(/\.[^.]+$/, "");

/**
 * Pairs each HR image with its LR from `lrDir` (by name: see {@link lrStems}), checking that the LR
 * is the HR's size divided by `scale`; HR sides up to `scale - 1` pixels over that are cropped off,
 * as BasicSR's `mod_crop` does. A missing LR or a size that does not fit is an error naming the
 * files.
 */
export async function attachLrImages(
  hr: RgbImage[],
  lrDir: string,
  options: { decode: ImageDecoder; scale: number },
): Promise<RgbImage[]> {
  const { scale } = options;
  const byStem = new Map((await listImages(lrDir)).map((f) => [stemOf(f), f]));
  return await Promise.all(hr.map(async (img) => {
    const lrPath = lrStems(stemOf(img.name), scale).map((s) => byStem.get(s)).find((f) => f);
    if (!lrPath) {
      throw new Error(
        `${lrDir}: no LR image for ${img.name} (looked for ${lrStems(stemOf(img.name), scale).join(", ")})`,
      );
    }
    const lq = await loadRgb(lrPath, options.decode);
    const w = lq.width * scale, h = lq.height * scale;
    if (w > img.width || h > img.height || img.width - w >= scale || img.height - h >= scale) {
      throw new Error(
        `${lrPath} is ${lq.width}x${lq.height}: not the x${scale} LR of ${img.name} (${img.width}x${img.height})`,
      );
    }
    return { ...cropRgb(img, { top: 0, left: 0, width: w, height: h }), lq };
  }));
}

/** The `width` x `height` pixels at (top, left). */
function cropRgb(img: RgbImage, at: { top: number; left: number; width: number; height: number }): RgbImage {
  const { top, left, width, height } = at;
  if (top === 0 && left === 0 && width === img.width && height === img.height) return img;
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * img.width + left) * 3;
    rgb.set(img.rgb.subarray(from, from + width * 3), y * width * 3);
  }
  return { name: img.name, width, height, rgb };
}

/** The batch of training step `step` (0-based): a pure function of the images, options and step. */
export function makeBatch(images: RgbImage[], options: CropOptions, step: number): Batch {
  const { batchSize: n, gtSize, scale } = options;
  if (gtSize % scale) throw new Error(`gt_size ${gtSize} is not a multiple of the scale ${scale}`);
  const lqSize = gtSize / scale;
  const rng = new Rng(options.seed, step + 1);
  const gt = new Float32Array(n * gtSize * gtSize * 3);
  const lq = new Float32Array(n * lqSize * lqSize * 3);
  for (let b = 0; b < n; b++) {
    const img = images[rng.int(images.length)];
    // BasicSR crops the LR on its grid and the HR at scale times that: keep the crop on the LR grid
    const top = rng.int(Math.floor((img.height - gtSize) / scale) + 1) * scale;
    const left = rng.int(Math.floor((img.width - gtSize) / scale) + 1) * scale;
    const hflip = options.hflip && rng.random() < 0.5;
    const vflip = options.rot && rng.random() < 0.5;
    const transpose = options.rot && rng.random() < 0.5;
    const hr = cropAugment(img, { top, left, size: gtSize }, { hflip, vflip, transpose });
    const lr = img.lq
      ? cropAugment(img.lq, { top: top / scale, left: left / scale, size: lqSize }, {
        hflip,
        vflip,
        transpose,
      })
      : downscale(hr, gtSize, scale).rgb;
    const gOff = b * hr.length, lOff = b * lr.length;
    for (let i = 0; i < hr.length; i++) gt[gOff + i] = hr[i] / 255;
    for (let i = 0; i < lr.length; i++) lq[lOff + i] = lr[i] / 255;
  }
  return { step, n, lq, gt, lqSize, gtSize };
}

/**
 * Batches made ahead: `next()` hands out step after step while up to `depth` later batches are
 * being made in macrotasks, which run whenever the training loop awaits. On webgpu that is not
 * while the GPU works: Deno 2.9.6's mapAsync blocks the thread until the GPU is done, so batches
 * are made in the gaps between steps (11.7 ms for batch 16 at 128 px on this project's 2-core machine).
 */
export class BatchQueue {
  private readonly pending = new Map<number, Promise<Batch>>();
  private step: number;

  constructor(
    private readonly images: RgbImage[],
    private readonly options: CropOptions,
    queue: { startStep: number; depth?: number },
  ) {
    this.step = queue.startStep;
    this.depth = queue.depth ?? 2;
  }

  private readonly depth: number;

  /** The batch of the next step. */
  next(): Promise<Batch> {
    const step = this.step++;
    for (let s = step; s <= step + this.depth; s++) this.ensure(s);
    const p = this.pending.get(step)!;
    this.pending.delete(step);
    return p;
  }

  private ensure(step: number): void {
    if (this.pending.has(step)) return;
    this.pending.set(
      step,
      new Promise((resolve, reject) =>
        setTimeout(() => {
          try {
            resolve(makeBatch(this.images, this.options, step));
          } catch (e) {
            reject(e);
          }
        }, 0)
      ),
    );
  }
}

/** One validation pair, float32 NHWC [0, 1] with n = 1. */
export interface ValPair {
  name: string;
  lq: Float32Array;
  lqWidth: number;
  lqHeight: number;
  /** The 8-bit HR the metrics compare against. */
  gt: RgbImage;
}

/**
 * Validation pairs: the centre `crop`² of each image (0: the whole image), cut to a multiple
 * of the scale, and its own LR's matching crop where it has one, else its MATLAB-bicubic LR.
 */
export function makeValPairs(images: RgbImage[], options: { scale: number; crop: number }): ValPair[] {
  const { scale, crop } = options;
  return images.map((img) => {
    let w = img.width - (img.width % scale), h = img.height - (img.height % scale);
    if (crop) {
      w = Math.min(w, crop - (crop % scale));
      h = Math.min(h, crop - (crop % scale));
    }
    // a paired LR needs the crop on its grid
    const grid = img.lq ? scale : 1;
    const top = Math.floor((img.height - h) / 2 / grid) * grid;
    const left = Math.floor((img.width - w) / 2 / grid) * grid;
    const gt = cropRgb(img, { top, left, width: w, height: h });
    const lq = img.lq
      ? cropRgb(img.lq, { top: top / scale, left: left / scale, width: w / scale, height: h / scale }).rgb
      : imresizeArray(gt.rgb, { width: w, height: h, channels: 3 }, { scale: 1 / scale, uint8: true }).data;
    return {
      name: img.name,
      lq: Float32Array.from(lq, (v) => v / 255),
      lqWidth: w / scale,
      lqHeight: h / scale,
      gt: { name: img.name, width: w, height: h, rgb: gt.rgb },
    };
  });
}
