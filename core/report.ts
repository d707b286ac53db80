/**
 * Side-by-side crops for a person to compare SR outputs: the same window of every panel (LR shown
 * with nearest-neighbour enlargement, bicubic, each model, HR) in one row, optionally labelled.
 *
 * Labels are drawn with imagescript's wasm TrueType rasteriser, from a font file the caller gives
 * (or the first of a few common system fonts); without one the panels stay unlabelled and the
 * caller lists their order instead.
 * @module
 */
import fontlib from "imagescript/wasm/node/font.js";
import type { RgbaImage } from "./image_io.ts";
import { lumaBT601 } from "./metrics.ts";
import { cropImage } from "./eval.ts";

/** A window in HR pixels. */
export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** One panel of a comparison: an image already cropped to the window, and its label. */
export interface Panel {
  label: string;
  image: RgbaImage;
}

/**
 * The `size` x `size` window (or smaller, for small images) where `test` differs most from `reference`
 * in Y, on a grid of `align` pixels so that it maps onto whole LR pixels: where the methods differ.
 */
export function chooseCrop(
  reference: RgbaImage,
  test: RgbaImage,
  options: { size: number; align: number },
): Rect {
  const { width: w, height: h } = reference;
  const { align } = options;
  const side = (n: number) => Math.max(align, Math.min(options.size, n - (n % align)));
  const cw = Math.min(side(w), w);
  const ch = Math.min(side(h), h);
  // Summed-area table of the squared Y difference.
  const sat = new Float64Array((w + 1) * (h + 1));
  const a = reference.data;
  const b = test.data;
  for (let y = 0; y < h; y++) {
    let row = 0;
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      const d = lumaBT601(a[i], a[i + 1], a[i + 2]) - lumaBT601(b[i], b[i + 1], b[i + 2]);
      row += d * d;
      sat[(y + 1) * (w + 1) + x + 1] = sat[y * (w + 1) + x + 1] + row;
    }
  }
  let best = { x: 0, y: 0, err: -1 };
  for (let y = 0; y + ch <= h; y += align) {
    for (let x = 0; x + cw <= w; x += align) {
      const err = sat[(y + ch) * (w + 1) + x + cw] - sat[y * (w + 1) + x + cw] - sat[(y + ch) * (w + 1) + x] +
        sat[y * (w + 1) + x];
      if (err > best.err) best = { x, y, err };
    }
  }
  return { x: best.x, y: best.y, width: cw, height: ch };
}

/** Nearest-neighbour enlargement by an integer factor (to show pixels as pixels). */
export function enlargeNearest(img: RgbaImage, factor: number): RgbaImage {
  if (!Number.isInteger(factor) || factor < 1) {
    throw new Error(`enlargeNearest: factor must be a whole number ≥ 1`);
  }
  const width = img.width * factor;
  const height = img.height * factor;
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    const sy = Math.floor(y / factor);
    for (let x = 0; x < width; x++) {
      const s = 4 * (sy * img.width + Math.floor(x / factor));
      data.set(img.data.subarray(s, s + 4), 4 * (y * width + x));
    }
  }
  return { width, height, data };
}

/** Crops `rect` (HR pixels) from an HR-size image, or from an LR image (rect divided by `scale`, then enlarged). */
export function cropPanel(img: RgbaImage, rect: Rect, options: { scale?: number } = {}): RgbaImage {
  const s = options.scale ?? 1;
  if (s === 1) return cropImage(img, rect);
  const lr = cropImage(img, { x: rect.x / s, y: rect.y / s, width: rect.width / s, height: rect.height / s });
  return enlargeNearest(lr, s);
}

/** Fonts tried when none is given (Linux, macOS, Windows). */
const SYSTEM_FONTS = [
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
  "/usr/share/fonts/TTF/DejaVuSans.ttf",
  "/usr/share/fonts/dejavu/DejaVuSans.ttf",
  "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
  "/System/Library/Fonts/Supplemental/Arial.ttf",
  "C:\\Windows\\Fonts\\arial.ttf",
];

/** Reads `path`, or the first common system font found; null when there is none. */
export async function findFont(path?: string): Promise<{ path: string; bytes: Uint8Array } | null> {
  if (path) return { path, bytes: await Deno.readFile(path) };
  for (const p of SYSTEM_FONTS) {
    try {
      return { path: p, bytes: await Deno.readFile(p) };
    } catch {
      // try the next one
    }
  }
  return null;
}

type TextRaster = { width: number; height: number; buffer: Uint8Array };
type FontModule = {
  Font: new (scale: number, bytes: Uint8Array) => { free(): void };
  Layout: new () => {
    reset(o: Record<string, unknown>): void;
    append(font: unknown, text: string, o: { scale: number }): void;
    rasterize(r: number, g: number, b: number): TextRaster;
    free(): void;
  };
};
let fontModule: Promise<FontModule> | undefined;

/**
 * imagescript's font glue reads `Deno.core.encode`, which Deno 2 no longer exposes: it is provided
 * for the moment the glue captures it, then removed again.
 */
function loadFontModule(): Promise<FontModule> {
  fontModule ??= (async () => {
    const d = Deno as unknown as { core?: unknown };
    const added = d.core === undefined;
    if (added) {
      const te = new TextEncoder();
      const td = new TextDecoder();
      Object.defineProperty(Deno, "core", {
        value: { encode: (s: string) => te.encode(s), decode: (b: Uint8Array) => td.decode(b) },
        configurable: true,
      });
    }
    try {
      return (await fontlib.init()) as FontModule;
    } finally {
      if (added) delete d.core;
    }
  })();
  return fontModule;
}

/** White text on black, `size` px high, as an RGBA image. */
async function renderLabel(
  font: Uint8Array,
  text: string,
  size: number,
  maxWidth: number,
): Promise<RgbaImage> {
  const { Font, Layout } = await loadFontModule();
  const f = new Font(size, font);
  const layout = new Layout();
  try {
    layout.reset({
      max_width: maxWidth,
      max_height: Infinity,
      wrap_style: "char",
      vertical_align: "left",
      horizontal_align: "top",
      wrap_hard_breaks: true,
    });
    layout.append(f, text, { scale: size });
    const r = layout.rasterize(255, 255, 255);
    return {
      width: r.width,
      height: r.height,
      data: new Uint8ClampedArray(r.buffer.buffer, 0, r.width * r.height * 4),
    };
  } finally {
    f.free();
    layout.free();
  }
}

/** Draws `src` onto `dst` at (x, y), blending by src alpha, clipped to `dst` and to `maxWidth` columns. */
function blit(dst: RgbaImage, src: RgbaImage, x0: number, y0: number, maxWidth = Infinity): void {
  for (let y = 0; y < src.height; y++) {
    const dy = y0 + y;
    if (dy < 0 || dy >= dst.height) continue;
    for (let x = 0; x < Math.min(src.width, maxWidth); x++) {
      const dx = x0 + x;
      if (dx < 0 || dx >= dst.width) continue;
      const s = 4 * (y * src.width + x);
      const d = 4 * (dy * dst.width + dx);
      const a = src.data[s + 3] / 255;
      for (let c = 0; c < 3; c++) dst.data[d + c] = src.data[s + c] * a + dst.data[d + c] * (1 - a);
      dst.data[d + 3] = 255;
    }
  }
}

/** Options of {@link sideBySide}. */
export interface SideBySideOptions {
  /** Font file bytes for labels; without it no labels are drawn. */
  font?: Uint8Array;
  /** Pixels between panels. Default 4. */
  gap?: number;
  /** Integer nearest-neighbour zoom of every panel, to make pixels visible. Default 1. */
  zoom?: number;
}

/** Puts same-size panels in a row on black, each with its label (wrapped to the panel) above when a font is given. */
export async function sideBySide(panels: Panel[], options: SideBySideOptions = {}): Promise<RgbaImage> {
  if (panels.length === 0) throw new Error("sideBySide: no panels");
  const zoom = options.zoom ?? 1;
  const gap = options.gap ?? 4;
  const images = panels.map((p) => (zoom === 1 ? p.image : enlargeNearest(p.image, zoom)));
  const pw = images[0].width;
  const ph = images[0].height;
  if (images.some((im) => im.width !== pw || im.height !== ph)) {
    throw new Error("sideBySide: panels differ in size");
  }
  const labelSize = 14;
  const labels = options.font
    ? await Promise.all(panels.map((p) => renderLabel(options.font!, p.label, labelSize, pw)))
    : [];
  const top = labels.length ? Math.max(...labels.map((l) => l.height)) + 2 * gap : 0;
  const out: RgbaImage = {
    width: panels.length * pw + (panels.length + 1) * gap,
    height: top + ph + (top ? gap : 2 * gap),
    data: new Uint8ClampedArray(0),
  };
  out.data = new Uint8ClampedArray(out.width * out.height * 4);
  for (let i = 3; i < out.data.length; i += 4) out.data[i] = 255;
  for (const [i, im] of images.entries()) {
    const x = gap + i * (pw + gap);
    if (labels[i]) blit(out, labels[i], x, gap, pw);
    blit(out, im, x, top || gap);
  }
  return out;
}
