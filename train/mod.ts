/**
 * ESRGAN training: presets and options, data pipeline, the two-stage loop, checkpoints, export
 * and network interpolation.
 * @module
 */
export * from "./config.ts";
export * from "./schedule.ts";
export * from "./rng.ts";
export * from "./adam.ts";
export * from "./ema.ts";
export * from "./data.ts";
export * from "./checkpoint.ts";
export * from "./trainer.ts";
export * from "./train.ts";
export * from "./export.ts";
export * from "./interp.ts";
export * from "./log.ts";
export * from "./plot.ts";
export * from "./codecs.ts";
export * from "./png_codec.ts";
export * from "./cpu_kernels.ts";
