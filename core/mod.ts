/**
 * The ESRGAN toolkit's core: the RRDBNet generator, weight formats and backends.
 * @module
 */
export * from "./state_dict.ts";
export * from "./rrdbnet_arch.ts";
export * from "./backend.ts";
export * from "./weights/safetensors.ts";
export * from "./weights/model_file.ts";
