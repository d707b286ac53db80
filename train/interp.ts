/**
 * `deno task interp`'s work: two generator files (model files or training checkpoints, whose EMA
 * weights count) blended with {@link interpolateStateDicts} into a model file.
 * @module
 */
import { interpolateStateDicts } from "../core/interp.ts";
import { encodeModelFile, type WeightDType } from "../core/weights/model_file.ts";
import { parseSafetensors } from "../core/weights/safetensors.ts";
import { generatorWeights } from "./export.ts";

/** Blends file A and file B: (1 − alpha)·A + alpha·B, stored as `dtype` (default: A's, fp32 for checkpoints). */
export function interpolateModelFiles(
  a: { bytes: Uint8Array; name: string },
  b: { bytes: Uint8Array; name: string },
  options: { alpha: number; dtype?: WeightDType },
): Uint8Array {
  const sd = interpolateStateDicts(
    generatorWeights(a.bytes, a.name),
    generatorWeights(b.bytes, b.name),
    options,
  );
  const metaA = parseSafetensors(a.bytes, a.name).metadata;
  const dtype = options.dtype ??
    (["fp32", "fp16", "int8"].includes(metaA.dtype) ? metaA.dtype as WeightDType : "fp32");
  return encodeModelFile(sd, {
    dtype,
    metadata: {
      source: `network interpolation: (1 - ${options.alpha}) * ${
        a.name.split("/").pop()
      } + ${options.alpha} * ${b.name.split("/").pop()}`,
    },
  });
}
