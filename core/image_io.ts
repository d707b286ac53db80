/**
 * Image files in and out: PNG (fast-png: every colour type and bit depth, interlaced too), JPEG
 * decoding (imagescript's wasm decoder), WebP decoding (libwebp as jSquash builds it for wasm), JPEG
 * and WebP encoding (imagescript's native codec where FFI is allowed, else jSquash's MozJPEG and
 * libwebp in wasm), and a header reader that gives format and size without decoding, so that
 * oversized images are refused before any pixel buffer is allocated.
 *
 * imagescript's package entry loads a native addon at import time (Deno then needs `--allow-ffi` for any
 * use), so this module imports its wasm JPEG decoder directly and loads the native codec only when JPEG
 * or WebP output is asked for. Without FFI (Deno Deploy, `--deny-ffi`, a platform without its binary)
 * the wasm encoders take over, 1.5-7x slower (a 2048x1365 photo here: JPEG q90 90 → 662 ms, 11% smaller;
 * lossless WebP 1.5 → 2.3 s; WebP q80 186 → 275 ms). imagescript's wasm PNG decoder is not used: it rejects
 * some valid files (fixed-Huffman streams of small images); imagescript 1.3.1 cannot decode WebP at all.
 * @module
 */
import { convertIndexedToRgb, decode as decodePngData, type DecodedPng, encode as encodePng } from "fast-png";
import jpeglib from "imagescript/wasm/node/jpeg.js";
import decodeWebpData, { init as initWebpDecoder } from "@jsquash/webp/decode.js";
import encodeWebpData, { init as initWebpEncoder } from "@jsquash/webp/encode.js";
import encodeJpegData, { init as initJpegEncoder } from "@jsquash/jpeg/encode.js";
// @ts-types="./types/exifr.d.ts"
import exifr from "exifr";

/** An 8-bit image, RGBA interleaved, rows top to bottom. Grayscale images come as equal R, G, B. */
export interface RgbaImage {
  width: number;
  height: number;
  data: Uint8ClampedArray;
  /**
   * A 16-bit PNG's pixels at full depth, laid out as `data` (which holds them rounded to 8 bits).
   * The Upscaler carries it through and {@link encodeImage} writes it to PNG, as Real-ESRGAN keeps
   * 16-bit input 16-bit; JPEG and WebP take `data`.
   */
  data16?: Uint16Array;
}

/** File names this module decodes (PNG, JPEG, WebP), by extension, any case. */
export const IMAGE_FILE: RegExp = /\.(png|jpe?g|webp)$/i;

/** File formats this module knows. */
export type ImageFormat = "png" | "jpeg" | "webp";

/** What the first bytes of an image file tell. */
export interface ImageHeader {
  format: ImageFormat;
  width: number;
  height: number;
}

/** Options for {@link readImageHeader} and {@link decodeImage}. */
export interface DecodeOptions {
  /** The file's name, put in front of error messages. */
  name?: string;
  /** Refuse images with more pixels than this (checked from the header, before decoding). */
  maxPixels?: number;
}

/** Options for {@link encodeImage}. */
export interface EncodeImageOptions {
  format: ImageFormat;
  /** JPEG: 1-100 (default 90). WebP: 0-100, absent for lossless. Ignored for PNG. */
  quality?: number;
  /** JPEG and WebP: which encoder (default: {@link jpegWebpEncoder}'s choice). */
  encoder?: JpegWebpEncoder;
}

/**
 * The JPEG/WebP encoders: "native" (imagescript's libjpeg-turbo and libwebp, through FFI) or "wasm"
 * (jSquash's MozJPEG and libwebp builds).
 */
export type JpegWebpEncoder = "native" | "wasm";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Formats recognised only to name them in the error. */
const OTHER_SIGNATURES: [string, number[]][] = [
  ["GIF", [0x47, 0x49, 0x46, 0x38]],
  ["BMP", [0x42, 0x4d]],
  ["TIFF", [0x49, 0x49, 0x2a, 0x00]],
  ["TIFF", [0x4d, 0x4d, 0x00, 0x2a]],
];

const startsWith = (b: Uint8Array, sig: number[], at = 0) =>
  b.length >= at + sig.length && sig.every((v, i) => b[at + i] === v);
const ascii = (b: Uint8Array, at: number, n: number) => String.fromCharCode(...b.subarray(at, at + n));

/** An error whose message starts with the file name when one is known. */
function fail(name: string | undefined, reason: string): Error {
  return new Error(name ? `${name}: ${reason}` : reason);
}

/**
 * Reads format, width and height from the first bytes (PNG IHDR, JPEG SOFn, WebP VP8/VP8L/VP8X)
 * without decoding. Throws an Error naming the reason for empty, truncated, non-image or
 * unsupported data.
 */
export function readImageHeader(bytes: Uint8Array, options: { name?: string } = {}): ImageHeader {
  const name = options.name;
  if (bytes.length === 0) throw fail(name, "empty file");
  if (startsWith(bytes, PNG_SIGNATURE.slice(0, Math.min(4, bytes.length)))) {
    return pngHeader(bytes, name);
  }
  if (bytes[0] === 0xff && (bytes.length < 2 || bytes[1] === 0xd8)) return jpegHeader(bytes, name);
  if (startsWith(bytes, [0x52, 0x49, 0x46, 0x46]) && (bytes.length < 12 || ascii(bytes, 8, 4) === "WEBP")) {
    return webpHeader(bytes, name);
  }
  const other = OTHER_SIGNATURES.find(([, sig]) => startsWith(bytes, sig));
  if (other) throw fail(name, `unsupported image format ${other[0]} (PNG, JPEG and WebP are supported)`);
  throw fail(name, "not an image (no PNG, JPEG or WebP signature)");
}

function pngHeader(b: Uint8Array, name?: string): ImageHeader {
  if (b.length < 8 + 8 + 13) throw fail(name, "truncated PNG (the file ends inside the header)");
  if (!startsWith(b, PNG_SIGNATURE)) throw fail(name, "corrupt PNG signature");
  if (ascii(b, 12, 4) !== "IHDR") throw fail(name, "corrupt PNG (the first chunk is not IHDR)");
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  if (!width || !height) throw fail(name, `corrupt PNG (size ${width}x${height})`);
  return { format: "png", width, height };
}

function jpegHeader(b: Uint8Array, name?: string): ImageHeader {
  // Walk the marker segments up to the first frame header (SOF0..SOF15 but DHT, JPG and DAC).
  let i = 2;
  while (i < b.length) {
    if (b[i] !== 0xff) throw fail(name, `corrupt JPEG (no marker at byte ${i})`);
    while (i < b.length && b[i] === 0xff) i++; // fill bytes
    if (i >= b.length) break;
    const marker = b[i++];
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue; // no length field
    if (marker === 0xd9 || marker === 0xda) {
      throw fail(name, "corrupt JPEG (image data before any frame header)");
    }
    if (i + 2 > b.length) break;
    const length = (b[i] << 8) | b[i + 1];
    if (length < 2) throw fail(name, "corrupt JPEG (bad segment length)");
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isSof) {
      if (i + 7 > b.length) break;
      const height = (b[i + 3] << 8) | b[i + 4];
      const width = (b[i + 5] << 8) | b[i + 6];
      if (!width || !height) {
        throw fail(name, `unsupported JPEG (size ${width}x${height} in the frame header)`);
      }
      return { format: "jpeg", width, height };
    }
    i += length;
  }
  throw fail(name, "truncated JPEG (the file ends before the frame header)");
}

function webpHeader(b: Uint8Array, name?: string): ImageHeader {
  if (b.length < 30) throw fail(name, "truncated WebP (the file ends inside the header)");
  const chunk = ascii(b, 12, 4);
  const d = 20; // chunk payload
  if (chunk === "VP8X") {
    const width = 1 + (b[d + 4] | (b[d + 5] << 8) | (b[d + 6] << 16));
    const height = 1 + (b[d + 7] | (b[d + 8] << 8) | (b[d + 9] << 16));
    return { format: "webp", width, height };
  }
  if (chunk === "VP8 ") {
    if (b[d + 3] !== 0x9d || b[d + 4] !== 0x01 || b[d + 5] !== 0x2a) {
      throw fail(name, "corrupt WebP (bad VP8 start code)");
    }
    const width = (b[d + 6] | (b[d + 7] << 8)) & 0x3fff;
    const height = (b[d + 8] | (b[d + 9] << 8)) & 0x3fff;
    return { format: "webp", width, height };
  }
  if (chunk === "VP8L") {
    if (b[d] !== 0x2f) throw fail(name, "corrupt WebP (bad VP8L signature)");
    const bits = b[d + 1] | (b[d + 2] << 8) | (b[d + 3] << 16) | (b[d + 4] << 24);
    return { format: "webp", width: 1 + (bits & 0x3fff), height: 1 + ((bits >>> 14) & 0x3fff) };
  }
  throw fail(name, `corrupt WebP (unknown chunk "${chunk}")`);
}

/**
 * Decodes a PNG, JPEG or WebP file to RGBA. The header is checked first (format, size against
 * `maxPixels`), so bad or oversized input fails before decoding. Errors name the file and reason.
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeOptions = {}): Promise<RgbaImage> {
  const { name, maxPixels } = options;
  const header = readImageHeader(bytes, { name });
  const pixels = header.width * header.height;
  if (maxPixels !== undefined && pixels > maxPixels) {
    throw fail(
      name,
      `too many pixels: ${header.width}x${header.height} is ${megapixels(pixels)}, over the limit of ${
        megapixels(maxPixels)
      }`,
    );
  }
  let img: RgbaImage;
  if (header.format === "png") img = decodePng(bytes, name);
  else if (header.format === "jpeg") img = await decodeJpeg(bytes, name);
  else img = await decodeWebp(bytes, name);
  if (img.width !== header.width || img.height !== header.height) {
    throw fail(name, `corrupt ${header.format.toUpperCase()} (decoded size differs from the header)`);
  }
  // a camera's EXIF orientation: what viewers show, and what the output (which has no EXIF) must be.
  // An unreadable EXIF block is ignored, as viewers ignore it.
  const orientation = await exifr.orientation(bytes).catch(() => undefined);
  return orientation ? applyOrientation(img, orientation) : img;
}

/**
 * The image as EXIF orientation `o` (1-8) says to display it: 2 mirrors it left-right, 3 turns it
 * 180°, 4 mirrors it top-bottom, 5 transposes it, 6 turns it 90° clockwise, 7 transverses it, 8 turns
 * it 90° counter-clockwise. 1 (or any other value) leaves it as it is.
 */
export function applyOrientation(img: RgbaImage, o: number): RgbaImage {
  if (!(o >= 2 && o <= 8)) return img;
  const { width: W, height: H, data } = img;
  const swap = o >= 5;
  const w = swap ? H : W, h = swap ? W : H;
  const out = new Uint32Array(w * h);
  const src = data.byteOffset % 4
    ? new Uint32Array(data.slice().buffer)
    : new Uint32Array(data.buffer, data.byteOffset, W * H);
  // (x, y) of the output from (sx, sy) of the input
  const from: (x: number, y: number) => number = [
    (x: number, y: number) => y * W + (W - 1 - x),
    (x: number, y: number) => (H - 1 - y) * W + (W - 1 - x),
    (x: number, y: number) => (H - 1 - y) * W + x,
    (x: number, y: number) => x * W + y,
    (x: number, y: number) => (H - 1 - x) * W + y,
    (x: number, y: number) => (H - 1 - x) * W + (W - 1 - y),
    (x: number, y: number) => x * W + (W - 1 - y),
  ][o - 2];
  const src16 = img.data16, out16 = src16 && new Uint16Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, s = from(x, y);
      out[i] = src[s];
      if (out16) { for (let k = 0; k < 4; k++) out16[4 * i + k] = src16![4 * s + k]; }
    }
  }
  return {
    width: w,
    height: h,
    data: new Uint8ClampedArray(out.buffer),
    ...(out16 ? { data16: out16 } : {}),
  };
}

/** libwebp's wasm module, compiled on the first WebP decoded (read from the package, not fetched). */
let webpReady: Promise<void> | undefined;

async function decodeWebp(bytes: Uint8Array, name?: string): Promise<RgbaImage> {
  // VP8X's animation flag: libwebp's still-image decoder would only say "Decoding error"
  if (ascii(bytes, 12, 4) === "VP8X" && bytes[20] & 0x02) {
    throw fail(name, "animated WebP is not supported (export one frame as a still image)");
  }
  // a failed load (a missing read permission: not the image's fault) is tried again next time
  webpReady ??= (async () => {
    const wasm = new URL(import.meta.resolve("@jsquash/webp/codec/dec/webp_dec.wasm"));
    await initWebpDecoder(await WebAssembly.compile(await Deno.readFile(wasm)));
  })().catch((e) => {
    webpReady = undefined;
    throw new Error(`the WebP decoder did not load: ${(e as Error).message}`);
  });
  await webpReady;
  let decoded: ImageData;
  try {
    decoded = await decodeWebpData(bytes.slice().buffer);
  } catch (e) {
    throw fail(name, `corrupt WebP (${(e as Error).message})`);
  }
  // libwebp's output is 8-bit RGBA (ImageData's type also allows float16)
  return { width: decoded.width, height: decoded.height, data: decoded.data as Uint8ClampedArray };
}

const megapixels = (n: number) => n < 1e5 ? `${n} pixels` : `${(n / 1e6).toFixed(1)} MP`;

function decodePng(bytes: Uint8Array, name?: string): RgbaImage {
  // Walking the chunk list first names truncation precisely (the decoder only says "inflate failed").
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8;
  let ended = false;
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = ascii(bytes, at + 4, 4);
    if (at + 12 + length > bytes.length) {
      throw fail(name, `truncated PNG (the file ends inside the ${type} chunk)`);
    }
    at += 12 + length;
    if (type === "IEND") {
      ended = true;
      break;
    }
  }
  if (!ended) throw fail(name, "truncated PNG (no IEND chunk)");
  let png: DecodedPng;
  try {
    png = decodePngData(bytes);
  } catch (e) {
    throw fail(name, `corrupt PNG data (${(e as Error).message.replace(/[:\s]+$/, "")})`);
  }
  try {
    return pngToRgba(png);
  } catch (e) {
    throw fail(name, `unsupported PNG (${(e as Error).message})`);
  }
}

/** Any PNG layout (gray, gray+alpha, RGB, RGBA, indexed; 1-16 bits) to 8-bit RGBA. */
function pngToRgba(png: DecodedPng): RgbaImage {
  const { width, height, depth } = png;
  const n = width * height;
  const out = new Uint8ClampedArray(n * 4);
  if (png.palette) {
    const rgb = convertIndexedToRgb(png);
    const c = png.palette[0].length;
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < 3; k++) out[4 * i + k] = rgb[c * i + k];
      out[4 * i + 3] = c === 4 ? rgb[c * i + 3] : 255;
    }
    return { width, height, data: out };
  }
  const channels = png.channels;
  if (![1, 2, 3, 4].includes(channels)) throw new Error(`${channels} channels`);
  if (depth === 16) return rgba16(png);
  // Samples as 8 bits: 1/2/4-bit gray is packed per row and scaled.
  const samples = new Uint8Array(n * channels);
  const raw = png.data;
  if (depth === 8) samples.set(raw);
  else {
    const rowBytes = Math.ceil((width * channels * depth) / 8);
    const max = (1 << depth) - 1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width * channels; x++) {
        const bit = x * depth;
        const byte = raw[y * rowBytes + (bit >> 3)];
        const v = (byte >> (8 - depth - (bit & 7))) & max;
        samples[y * width * channels + x] = Math.round((v * 255) / max);
      }
    }
  }
  // tRNS without a palette: one colour (in file units) that is fully transparent.
  const key = png.transparency;
  for (let i = 0; i < n; i++) {
    const s = i * channels;
    const gray = channels <= 2;
    out[4 * i] = samples[s];
    out[4 * i + 1] = gray ? samples[s] : samples[s + 1];
    out[4 * i + 2] = gray ? samples[s] : samples[s + 2];
    out[4 * i + 3] = channels === 2 ? samples[s + 1] : channels === 4 ? samples[s + 3] : 255;
    if (key && (channels === 1 || channels === 3)) {
      let match = true;
      for (let k = 0; k < channels && match; k++) {
        match = rawSample(raw, i * channels + k, depth, width * channels) === key[k];
      }
      if (match) out[4 * i + 3] = 0;
    }
  }
  return { width, height, data: out };
}

/** A 16-bit gray, gray+alpha, RGB or RGBA PNG as RGBA, at full depth and rounded to 8 bits. */
function rgba16(png: DecodedPng): RgbaImage {
  const { width, height, channels } = png;
  const n = width * height, raw = png.data as Uint16Array, key = png.transparency;
  const data16 = new Uint16Array(n * 4);
  for (let i = 0; i < n; i++) {
    const s = i * channels, gray = channels <= 2;
    data16[4 * i] = raw[s];
    data16[4 * i + 1] = gray ? raw[s] : raw[s + 1];
    data16[4 * i + 2] = gray ? raw[s] : raw[s + 2];
    data16[4 * i + 3] = channels === 2 ? raw[s + 1] : channels === 4 ? raw[s + 3] : 65535;
    // tRNS without a palette: one colour that is fully transparent
    if (key && (channels === 1 || channels === 3) && key.every((v, k) => raw[s + k] === v)) {
      data16[4 * i + 3] = 0;
    }
  }
  return { width, height, data: to8Bits(data16), data16 };
}

/** 16-bit samples rounded to 8 bits. */
export function to8Bits(data16: Uint16Array): Uint8ClampedArray {
  const out = new Uint8ClampedArray(data16.length);
  for (let i = 0; i < data16.length; i++) out[i] = Math.round(data16[i] / 257);
  return out;
}

/** Sample `index` in the file's units (for comparing against the tRNS colour key). */
function rawSample(raw: ArrayLike<number>, index: number, depth: number, perRow: number): number {
  if (depth >= 8) return raw[index];
  const y = Math.floor(index / perRow), x = index % perRow;
  const bit = x * depth;
  return (raw[y * Math.ceil((perRow * depth) / 8) + (bit >> 3)] >> (8 - depth - (bit & 7))) &
    ((1 << depth) - 1);
}

async function decodeJpeg(bytes: Uint8Array, name?: string): Promise<RgbaImage> {
  let fb: { width: number; height: number; format: number; buffer: Uint8Array };
  // Loading the codec can fail for reasons of its own (a missing read permission): not the image's fault.
  const codec = await jpeglib.init();
  try {
    fb = codec.decode(bytes);
  } catch (e) {
    const ended = bytes.subarray(-64).some((v, i, a) => v === 0xff && a[i + 1] === 0xd9);
    throw fail(
      name,
      ended ? `corrupt JPEG data (${(e as Error).message})` : "truncated JPEG (no end-of-image marker)",
    );
  }
  const { width, height, format, buffer } = fb;
  const out = new Uint8ClampedArray(width * height * 4);
  // imagescript's pixel formats: 0 grayscale, 1 RGB, 2 CMYK (Adobe's inverted convention).
  if (format === 0) {
    for (let i = 0; i < width * height; i++) {
      out[4 * i] = out[4 * i + 1] = out[4 * i + 2] = buffer[i];
      out[4 * i + 3] = 255;
    }
  } else if (format === 1) {
    for (let i = 0; i < width * height; i++) {
      out[4 * i] = buffer[3 * i];
      out[4 * i + 1] = buffer[3 * i + 1];
      out[4 * i + 2] = buffer[3 * i + 2];
      out[4 * i + 3] = 255;
    }
  } else if (format === 2) {
    for (let i = 0; i < width * height; i++) {
      const k = 1 - buffer[4 * i + 3] / 255;
      for (let c = 0; c < 3; c++) out[4 * i + c] = 255 * (1 - buffer[4 * i + c] / 255) * k;
      out[4 * i + 3] = 255;
    }
  } else {
    throw fail(name, `unsupported JPEG colour format ${format}`);
  }
  return { width, height, data: out };
}

type NativeCodec = {
  encode_async(
    data: Uint8ClampedArray,
    o: { width: number; height: number; quality: number | null },
  ): Promise<Uint8Array>;
};
let nativeCodecs: Promise<{ jpeg: NativeCodec; webp: NativeCodec }> | undefined;

/**
 * The encoder JPEG and WebP output gets by default: "native" when imagescript's native codec loads
 * (tried once), else "wasm", with the reason the native one did not load.
 */
export async function jpegWebpEncoder(): Promise<{ encoder: JpegWebpEncoder; why?: string }> {
  defaultEncoder ??= loadNativeCodecs().then(
    () => ({ encoder: "native" as const }),
    (e) => ({ encoder: "wasm" as const, why: (e as Error).message }),
  );
  return await defaultEncoder;
}
let defaultEncoder: Promise<{ encoder: JpegWebpEncoder; why?: string }> | undefined;

/** jSquash's wasm encoders, compiled on first use from the packages' files (not fetched). */
let wasmEncoders: Promise<void> | undefined;

function loadWasmEncoders(): Promise<void> {
  const compile = async (specifier: string) =>
    await WebAssembly.compile(await Deno.readFile(new URL(import.meta.resolve(specifier))));
  wasmEncoders ??= (async () => {
    await initJpegEncoder(await compile("@jsquash/jpeg/codec/enc/mozjpeg_enc.wasm"));
    // Deno's V8 has wasm SIMD, which the package's init picks its glue by
    await initWebpEncoder(await compile("@jsquash/webp/codec/enc/webp_enc_simd.wasm"));
  })().catch((e) => {
    wasmEncoders = undefined;
    throw new Error(`the wasm JPEG/WebP encoders did not load: ${(e as Error).message}`);
  });
  return wasmEncoders;
}

async function encodeWasm(img: RgbaImage, format: "jpeg" | "webp", quality?: number): Promise<Uint8Array> {
  await loadWasmEncoders();
  // jSquash takes ImageData; it reads only these three fields
  const pixels = { data: img.data, width: img.width, height: img.height } as unknown as ImageData;
  const out = format === "jpeg"
    ? await encodeJpegData(pixels, { quality: quality ?? 90 })
    : await encodeWebpData(pixels, quality === undefined ? { lossless: 1 } : { quality });
  return new Uint8Array(out);
}

/** imagescript's native JPEG/WebP encoders, loaded on first use (they need FFI in Deno). */
function loadNativeCodecs(): Promise<{ jpeg: NativeCodec; webp: NativeCodec }> {
  nativeCodecs ??= import("imagescript/codecs/node/index.js").then(
    (m) => m.default ?? m,
    (e) => {
      nativeCodecs = undefined;
      throw new Error(
        `JPEG and WebP encoding need imagescript's native codec, which did not load (in Deno, allow FFI: ` +
          `--allow-ffi): ${(e as Error).message.split("\n")[0]}`,
      );
    },
  );
  return nativeCodecs;
}

/**
 * Encodes RGBA pixels as PNG (lossless, alpha kept), JPEG (alpha dropped) or WebP (lossless when
 * `quality` is absent). JPEG and WebP: see {@link JpegWebpEncoder}.
 */
export async function encodeImage(img: RgbaImage, options: EncodeImageOptions): Promise<Uint8Array> {
  const { width, height, data } = img;
  if (data.length !== width * height * 4 || (img.data16 && img.data16.length !== data.length)) {
    throw new Error(
      `encodeImage: ${img.data16?.length ?? data.length} values do not make a ${width}x${height} RGBA image`,
    );
  }
  const quality = options.quality;
  if (options.format === "png" && img.data16) {
    const opaque = isOpaque(img);
    const pixels = opaque ? dropAlpha(img.data16) : img.data16;
    return encodePng({ width, height, data: pixels, channels: opaque ? 3 : 4, depth: 16 });
  }
  if (options.format === "png") {
    const opaque = isOpaque(img);
    // Opaque images go out as RGB: a quarter smaller, same pixels.
    const pixels = opaque ? dropAlpha(data) : new Uint8Array(data.buffer, data.byteOffset, data.length);
    return encodePng({ width, height, data: pixels, channels: opaque ? 3 : 4, depth: 8 });
  }
  if (options.format === "jpeg") {
    if (quality !== undefined && !(quality >= 1 && quality <= 100)) {
      throw new Error(`JPEG quality must be 1-100, not ${quality}`);
    }
    const encoder = options.encoder ?? (await jpegWebpEncoder()).encoder;
    if (encoder === "wasm") return await encodeWasm(img, "jpeg", quality);
    return await (await loadNativeCodecs()).jpeg.encode_async(data, {
      width,
      height,
      quality: quality ?? 90,
    });
  }
  if (options.format === "webp") {
    if (quality !== undefined && !(quality >= 0 && quality <= 100)) {
      throw new Error(`WebP quality must be 0-100, not ${quality}`);
    }
    const encoder = options.encoder ?? (await jpegWebpEncoder()).encoder;
    if (encoder === "wasm") return await encodeWasm(img, "webp", quality);
    return await (await loadNativeCodecs()).webp.encode_async(data, {
      width,
      height,
      quality: quality ?? null,
    });
  }
  throw new Error(`unknown image format "${options.format}"`);
}

/** Whether every pixel has alpha 255. */
export function isOpaque(img: RgbaImage): boolean {
  const d = img.data16 ?? img.data, full = img.data16 ? 65535 : 255;
  for (let i = 3; i < d.length; i += 4) if (d[i] !== full) return false;
  return true;
}

function dropAlpha(data: Uint8ClampedArray | Uint16Array): Uint8Array | Uint16Array {
  const n = data.length / 4;
  const out = data instanceof Uint16Array ? new Uint16Array(n * 3) : new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    out[3 * i] = data[4 * i];
    out[3 * i + 1] = data[4 * i + 1];
    out[3 * i + 2] = data[4 * i + 2];
  }
  return out;
}

/** The format a file name's extension asks for (`.png`, `.jpg`/`.jpeg`, `.webp`), or undefined. */
export function formatFromPath(path: string): ImageFormat | undefined {
  const ext = path.toLowerCase().match(/\.([a-z]+)$/)?.[1];
  return ext === "png"
    ? "png"
    : ext === "jpg" || ext === "jpeg"
    ? "jpeg"
    : ext === "webp"
    ? "webp"
    : undefined;
}
