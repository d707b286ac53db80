/**
 * A PNG-only codec on fast-png (pure JavaScript), for bundled programs such as bench/train_gpu.ts:
 * 8- and 16-bit grey, grey+alpha, RGB, RGBA and palette images in, RGBA PNG out.
 * @module
 */
import { convertIndexedToRgb, decode, encode } from "fast-png";
import type { RgbaImage } from "../core/image_io.ts";
import type { TrainCodec } from "./codecs.ts";

function decodePng(bytes: Uint8Array, name: string): RgbaImage {
  if (bytes[0] !== 0x89 || bytes[1] !== 0x50) {
    throw new Error(`${name}: not a PNG (this build reads PNG only)`);
  }
  let png;
  try {
    png = decode(bytes);
  } catch (e) {
    throw new Error(`${name}: corrupt PNG (${(e as Error).message})`);
  }
  const { width, height } = png;
  let data: ArrayLike<number> = png.data;
  let channels = png.channels;
  if (png.palette) {
    data = convertIndexedToRgb(png);
    channels = png.palette[0].length;
  } else if (png.depth < 8) {
    throw new Error(`${name}: ${png.depth}-bit PNG is not supported by this build's PNG reader`);
  }
  const shift = png.depth === 16 && !png.palette ? 8 : 0;
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    const at = i * channels;
    const v = (k: number) => data[at + k] >> shift;
    const grey = channels <= 2;
    out[4 * i] = v(0);
    out[4 * i + 1] = grey ? v(0) : v(1);
    out[4 * i + 2] = grey ? v(0) : v(2);
    out[4 * i + 3] = channels === 2 ? v(1) : channels === 4 ? v(3) : 255;
  }
  return { width, height, data: out };
}

/** fast-png decoding and encoding. */
export const pngCodec: TrainCodec = {
  decode: (bytes, name) => Promise.resolve(decodePng(bytes, name)),
  encodePng: (img) =>
    Promise.resolve(encode({ width: img.width, height: img.height, data: img.data, channels: 4, depth: 8 })),
};
