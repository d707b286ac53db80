/**
 * Image codecs for training: core/image_io's (PNG, JPEG, WebP in; PNG out) for the CLI and tests,
 * and a PNG-only one on fast-png alone for bundles (`deno bundle` cannot carry image_io's wasm JPEG
 * decoder, which imagescript loads from its package folder, nor its native encoders).
 * @module
 */
import { decodeImage, encodeImage, type RgbaImage } from "../core/image_io.ts";
import type { ImageDecoder } from "./data.ts";

/** Decoding for the data and PNG encoding for the samples. */
export interface TrainCodec {
  decode: ImageDecoder;
  encodePng: (img: RgbaImage) => Promise<Uint8Array>;
}

/** core/image_io's codecs. */
export const imageIoCodec: TrainCodec = {
  decode: (bytes, name) => decodeImage(bytes, { name }),
  encodePng: (img) => encodeImage(img, { format: "png" }),
};
