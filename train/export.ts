/**
 * Export of a trained generator to the project's weight format (`encodeModelFile`: fp32, fp16 or
 * per-channel int8), from a checkpoint's EMA weights (what BasicSR ships as `params_ema`) or its raw
 * G weights; and byte shards for carriers with a file-size limit.
 * @module
 */
import { decodeModelFile, encodeModelFile, type WeightDType } from "../core/weights/model_file.ts";
import { parseSafetensors } from "../core/weights/safetensors.ts";
import type { StateDict } from "../core/state_dict.ts";
import { type Checkpoint, CHECKPOINT_FORMAT, decodeCheckpoint } from "./checkpoint.ts";

/** Options of {@link exportGenerator}. */
export interface ExportOptions {
  dtype: WeightDType;
  /** `ema` (default, BasicSR's params_ema) or `g` (the raw generator). */
  which?: "ema" | "g";
  metadata?: Record<string, string>;
}

/** A model file holding a checkpoint's generator. */
export function exportGenerator(ckpt: Checkpoint, options: ExportOptions): Uint8Array {
  const which = options.which ?? "ema";
  const sd = which === "ema" ? ckpt.netGEma : ckpt.netG;
  return encodeModelFile(sd, {
    dtype: options.dtype,
    metadata: {
      source: "esrgan-ts training",
      stage: String(ckpt.config.stage ?? ""),
      step: String(ckpt.step),
      weights: which === "ema" ? "EMA of G (decay " + String(ckpt.config.emaDecay ?? "") + ")" : "G",
      ...options.metadata,
    },
  });
}

/**
 * The generator weights of a file: a training checkpoint (its EMA weights) or a model file.
 * Throws naming `name` when it is neither.
 */
export function generatorWeights(bytes: Uint8Array, name: string): StateDict {
  const { metadata } = parseSafetensors(bytes, name);
  if (metadata.format === CHECKPOINT_FORMAT) return decodeCheckpoint(bytes, name).netGEma;
  return decodeModelFile(bytes, name).stateDict;
}

/**
 * Splits `bytes` into pieces of at most `maxBytes` (named `PATH.part-00`, `-01`, …; join them with
 * `cat PATH.part-* > PATH`); returns the paths. One piece when it fits.
 */
export async function writeShards(
  path: string,
  bytes: Uint8Array,
  options: { maxBytes: number },
): Promise<string[]> {
  if (bytes.length <= options.maxBytes) {
    await Deno.writeFile(path, bytes);
    return [path];
  }
  const paths: string[] = [];
  for (let i = 0, off = 0; off < bytes.length; i++, off += options.maxBytes) {
    const p = `${path}.part-${String(i).padStart(2, "0")}`;
    await Deno.writeFile(p, bytes.subarray(off, off + options.maxBytes));
    paths.push(p);
  }
  return paths;
}
