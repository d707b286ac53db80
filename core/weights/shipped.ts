/**
 * The model files shipped in `weights/`, by name. The Real-ESRGAN names are those
 * realesrgan-ncnn-vulkan's `-n` takes for the same models.
 * @module
 */

/** The shipped models: name → what it is for. */
export const SHIPPED_MODELS: Readonly<Record<string, string>> = {
  "realesrgan-x4plus": "Real-ESRGAN x4plus: photos, real-world degradations (the default)",
  "realesrgan-x4plus-anime":
    "Real-ESRGAN x4plus anime (6 blocks): illustrations and anime, about 2.5x faster",
  "esrgan-psnr-x4": "this project's PSNR-oriented RRDB (L1): closest to the original in PSNR, softer",
  "esrgan-gan-x4": "this project's ESRGAN (GAN stage): more texture than the PSNR model",
};

/** The file of the shipped model `name`; throws, listing the shipped names, for any other name. */
export function shippedModelPath(name: string): string {
  if (!Object.hasOwn(SHIPPED_MODELS, name)) {
    throw new Error(
      `no shipped model "${name}"; the shipped ones: ${Object.keys(SHIPPED_MODELS).join(", ")}`,
    );
  }
  return decodeURIComponent(new URL(`../../weights/${name}.int8.safetensors`, import.meta.url).pathname);
}

/** `spec` where it names no shipped model, else that model's file: for settings that take either. */
export function resolveModel(spec: string): string {
  return Object.hasOwn(SHIPPED_MODELS, spec) ? shippedModelPath(spec) : spec;
}

/** The shipped default model (Real-ESRGAN x4plus, int8), as a file path. */
export const DEFAULT_MODEL: string = shippedModelPath("realesrgan-x4plus");
