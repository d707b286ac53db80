/**
 * The ESRGAN toolkit's core: the RRDBNet generator, weight formats and backends.
 * @module
 */
export * from "./state_dict.ts";
export * from "./rrdbnet_arch.ts";
export * from "./backend.ts";
export * from "./weights/safetensors.ts";
export * from "./weights/model_file.ts";
export { resolveModel, SHIPPED_MODELS, shippedModelPath } from "./weights/shipped.ts";
export * from "./discriminator_arch.ts";
export * from "./vgg19_arch.ts";
export * from "./losses/mod.ts";
export * from "./image_io.ts";
export * from "./tile.ts";
export * from "./upscaler.ts";
export * from "./upscale_image.ts";
export * from "./metrics.ts";
export * from "./imresize.ts";
export * from "./eval.ts";
