/**
 * Evaluating super-resolution models on benchmark folders the way the SR literature does: HR cropped
 * to LR size times the scale, the bicubic baseline made with MATLAB-compatible `imresize`, PSNR and
 * SSIM on the Y channel with `scale` pixels of border cropped (BasicSR's `calculate_psnr` /
 * `calculate_ssim` with `test_y_channel`).
 *
 * A dataset folder holds either `NAME_HR.png` files with matching `NAME_LR.png` (the official LR is
 * used; a missing one is made), or plain HR images whose LR is made with `imresize(HR, 1/scale)` after
 * cropping HR to a multiple of the scale.
 * @module
 */
import { join } from "node:path";
import { decodeImage, IMAGE_FILE, type RgbaImage } from "./image_io.ts";
import { imresize } from "./imresize.ts";
import { psnrSsim } from "./metrics.ts";

/** One image of a dataset, before loading. */
export interface DatasetEntry {
  /** The name reported: the file stem without `_HR`. */
  name: string;
  hrPath: string;
  /** The official LR file, when the folder has one. */
  lrPath?: string;
}

/** A benchmark folder, listed. */
export interface Dataset {
  name: string;
  dir: string;
  entries: DatasetEntry[];
}

/** A loaded HR/LR pair, HR cropped to exactly LR size times the scale. */
export interface ImagePair {
  name: string;
  hr: RgbaImage;
  lr: RgbaImage;
  /** True when the LR was made here with imresize rather than read from the folder. */
  lrMade: boolean;
  /** True when the HR file is stored with one channel (PNG grey, JPEG one component). */
  hrGrayFile: boolean;
}

/** Anything that turns an LR image into an image `scale` times larger. */
export interface SrModel {
  /** The name shown in tables and JSON. */
  name: string;
  upscale(lr: RgbaImage, options: { scale: number }): Promise<RgbaImage>;
}

/** PSNR (dB) and SSIM of one image. */
export interface ImageScore {
  name: string;
  psnr: number;
  ssim: number;
}

/** A model's scores on a dataset: means and per-image values. */
export interface ModelResult {
  psnr: number;
  ssim: number;
  images: ImageScore[];
}

/** All models' scores on one dataset, keyed by model name. */
export interface DatasetResult {
  models: Record<string, ModelResult>;
}

/** Everything `evaluateDataset` passes to `onImage`, for reports. */
export interface ImageOutputs {
  pair: ImagePair;
  /** Each model's output (HR size), keyed by model name. */
  outputs: Map<string, RgbaImage>;
  scores: Map<string, ImageScore>;
}

/** Options of {@link evaluateDataset}. */
export interface EvaluateOptions {
  scale: number;
  /**
   * Images whose HR file is stored with one channel are measured on their gray values, as MATLAB
   * scripts do (see `MetricOptions.grayAsLuma`): the paper's Set14 figure. Default false (BasicSR).
   */
  grayAsLuma?: boolean;
  /** Called after each image, with its pair and every model's output. */
  onImage?: (image: ImageOutputs, index: number, total: number) => void | Promise<void>;
  signal?: AbortSignal;
}

/**
 * Lists a dataset folder. A folder without images but with an `x{scale}` subfolder (the layout of
 * `data/bench/Set5/x4`) is looked into. Throws when nothing usable is found.
 */
export async function listDataset(dir: string, options: { scale: number; name?: string }): Promise<Dataset> {
  const files = await imageFiles(dir);
  if (files.length === 0) {
    const sub = join(dir, `x${options.scale}`);
    if ((await imageFiles(sub).catch(() => [])).length > 0) return listDataset(sub, options);
    throw new Error(`${dir}: no PNG, JPEG or WebP images`);
  }
  const base = dir.replace(/\/+$/, "").split("/");
  const last = base.at(-1) ?? dir;
  // "Set5/x4" is named after Set5.
  const name = options.name ?? (/^x\d+$/.test(last) && base.length > 1 ? base.at(-2)! : last);
  const stem = (f: string) => f.replace(IMAGE_FILE, "");
  const hrFiles = files.filter((f) => /_HR$/i.test(stem(f)));
  let entries: DatasetEntry[];
  if (hrFiles.length > 0) {
    const lrByStem = new Map(
      files.filter((f) => /_LR$/i.test(stem(f))).map((f) => [stem(f).slice(0, -3), f]),
    );
    entries = hrFiles.map((f) => {
      const key = stem(f).slice(0, -3);
      const lr = lrByStem.get(key);
      return { name: key, hrPath: join(dir, f), lrPath: lr ? join(dir, lr) : undefined };
    });
  } else {
    entries = files.filter((f) => !/_LR$/i.test(stem(f))).map((f) => ({
      name: stem(f),
      hrPath: join(dir, f),
    }));
  }
  return { name, dir, entries };
}

async function imageFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!IMAGE_FILE.test(e.name)) continue;
      // datasets are often folders of links to one copy of the benchmark files
      if (e.isFile || (e.isSymlink && (await Deno.stat(join(dir, e.name))).isFile)) out.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${dir}: no such folder`);
    if (e instanceof Deno.errors.NotADirectory) throw new Error(`${dir}: not a folder`);
    throw e;
  }
  return out.sort();
}

/** Top-left crop (the SR convention for fitting HR to LR times the scale). */
export function cropImage(
  img: RgbaImage,
  rect: { x: number; y: number; width: number; height: number },
): RgbaImage {
  const { x, y, width, height } = rect;
  if (x < 0 || y < 0 || x + width > img.width || y + height > img.height || width < 1 || height < 1) {
    throw new Error(`crop ${width}x${height}+${x}+${y} is outside a ${img.width}x${img.height} image`);
  }
  const data = new Uint8ClampedArray(width * height * 4);
  for (let r = 0; r < height; r++) {
    const s = 4 * ((y + r) * img.width + x);
    data.set(img.data.subarray(s, s + 4 * width), 4 * r * width);
  }
  return { width, height, data };
}

/** Reads an entry's HR (and LR, or makes it) and fits HR to LR size times the scale. */
export async function loadPair(entry: DatasetEntry, options: { scale: number }): Promise<ImagePair> {
  const { scale } = options;
  const read = async (path: string) => await decodeImage(await Deno.readFile(path), { name: path });
  const hrBytes = await Deno.readFile(entry.hrPath);
  let hr = await decodeImage(hrBytes, { name: entry.hrPath });
  let lr: RgbaImage;
  if (entry.lrPath) {
    lr = await read(entry.lrPath);
  } else {
    const w = hr.width - (hr.width % scale);
    const h = hr.height - (hr.height % scale);
    if (w < scale || h < scale) {
      throw new Error(`${entry.hrPath}: ${hr.width}x${hr.height} is too small for x${scale}`);
    }
    hr = w === hr.width && h === hr.height ? hr : cropImage(hr, { x: 0, y: 0, width: w, height: h });
    lr = imresize(hr, { scale: 1 / scale });
  }
  const w = lr.width * scale;
  const h = lr.height * scale;
  if (hr.width < w || hr.height < h) {
    throw new Error(
      `${entry.hrPath}: HR ${hr.width}x${hr.height} is smaller than LR ${lr.width}x${lr.height} times ${scale}`,
    );
  }
  if (hr.width !== w || hr.height !== h) hr = cropImage(hr, { x: 0, y: 0, width: w, height: h });
  return { name: entry.name, hr, lr, lrMade: !entry.lrPath, hrGrayFile: isGrayFile(hrBytes) };
}

/** Whether an image file stores one colour channel: PNG colour type 0 or 4, JPEG with one component. */
export function isGrayFile(bytes: Uint8Array): boolean {
  if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes.length > 25) return bytes[25] === 0 || bytes[25] === 4;
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    // Walk the JPEG segments to the frame header; its component count follows the size.
    let i = 2;
    while (i + 9 < bytes.length && bytes[i] === 0xff) {
      const marker = bytes[i + 1];
      const length = (bytes[i + 2] << 8) | bytes[i + 3];
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return bytes[i + 9] === 1;
      }
      i += 2 + length;
    }
  }
  return false;
}

/** The bicubic baseline: MATLAB `imresize(LR, scale)`. */
export function bicubicModel(): SrModel {
  return { name: "bicubic", upscale: (lr, { scale }) => Promise.resolve(imresize(lr, { scale })) };
}

/** The part of `Upscaler` (core/upscaler.ts) evaluation uses. */
export interface UpscalerLike {
  scale: number;
  upscale(
    img: RgbaImage,
    options: {
      outscale?: number;
      tile?: number;
      tta?: boolean;
      onProgress?: (done: number, total: number) => void;
    },
  ): Promise<RgbaImage>;
}

/**
 * Wraps an upscaler; it resamples to the evaluation scale only when its own scale differs.
 * `onProgress` gets the upscaler's tile progress.
 */
export function upscalerModel(
  name: string,
  upscaler: UpscalerLike,
  options: {
    tile?: number;
    tta?: boolean;
    onProgress?: (model: string, done: number, total: number) => void;
  } = {},
): SrModel {
  const onProgress = options.onProgress;
  return {
    name,
    upscale: (lr, { scale }) =>
      upscaler.upscale(lr, {
        tile: options.tile,
        tta: options.tta,
        outscale: scale === upscaler.scale ? undefined : scale,
        onProgress: onProgress && ((done, total) => onProgress(name, done, total)),
      }),
  };
}

/** Runs every model on every image of a dataset and scores it against HR (Y, border `scale` cropped). */
export async function evaluateDataset(
  dataset: Dataset,
  models: SrModel[],
  options: EvaluateOptions,
): Promise<DatasetResult> {
  const { scale } = options;
  const names = models.map((m) => m.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`two models are both named "${dup}"`);
  const perModel = new Map<string, ImageScore[]>(names.map((n) => [n, []]));
  const total = dataset.entries.length;
  for (const [index, entry] of dataset.entries.entries()) {
    options.signal?.throwIfAborted();
    const pair = await loadPair(entry, { scale });
    const outputs = new Map<string, RgbaImage>();
    const scores = new Map<string, ImageScore>();
    for (const model of models) {
      const sr = await model.upscale(pair.lr, { scale });
      if (sr.width !== pair.hr.width || sr.height !== pair.hr.height) {
        throw new Error(
          `${model.name} made ${sr.width}x${sr.height} from ${entry.name}'s ${pair.lr.width}x${pair.lr.height} LR; ` +
            `x${scale} needs ${pair.hr.width}x${pair.hr.height}`,
        );
      }
      const score = {
        name: entry.name,
        ...psnrSsim(sr, pair.hr, { cropBorder: scale, grayAsLuma: options.grayAsLuma && pair.hrGrayFile }),
      };
      outputs.set(model.name, sr);
      scores.set(model.name, score);
      perModel.get(model.name)!.push(score);
    }
    await options.onImage?.({ pair, outputs, scores }, index, total);
  }
  const result: DatasetResult = { models: {} };
  for (const [name, images] of perModel) {
    const mean = (f: (s: ImageScore) => number) => images.reduce((a, s) => a + f(s), 0) / images.length;
    result.models[name] = { psnr: mean((s) => s.psnr), ssim: mean((s) => s.ssim), images };
  }
  return result;
}

/** A Markdown table: one row per image and a mean row, PSNR (dB) / SSIM per model. */
export function markdownTable(datasetName: string, result: DatasetResult): string {
  const models = Object.keys(result.models);
  const fmt = (s: { psnr: number; ssim: number }) => `${s.psnr.toFixed(2)} / ${s.ssim.toFixed(4)}`;
  const lines = [
    `| ${datasetName} | ${models.join(" | ")} |`,
    `| --- | ${models.map(() => "---:").join(" | ")} |`,
  ];
  const images = models.length ? result.models[models[0]].images : [];
  for (const [i, image] of images.entries()) {
    lines.push(`| ${image.name} | ${models.map((m) => fmt(result.models[m].images[i])).join(" | ")} |`);
  }
  lines.push(`| **mean** | ${models.map((m) => `**${fmt(result.models[m])}**`).join(" | ")} |`);
  return lines.join("\n");
}
