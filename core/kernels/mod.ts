/**
 * Kernels of our own for RRDBNet. WebGPU, on tfjs's webgpu backend: see register.ts (switching the
 * stock Conv2D / FusedConv2D / Conv2DBackpropInput / Conv2DBackpropFilter for ours),
 * webgpu_rrdb.ts (fused dense-block inference), webgpu_plan.ts (the same, prepared once per input
 * shape so a forward is one compute pass, optionally tuned per GPU), webgpu_filter_grad.ts (the 3x3
 * filter gradient), webgpu_adam.ts (fused Adam), webgpu_train_plan.ts (the
 * psnr training step as one prepared pass: forward, L1, backward by hand, Adam + EMA), webgpu_f16.ts
 * (a device with shader-f16, for the plan's half-precision forward), webgpu_winograd.ts (the plan's
 * 3x3 convolutions as Winograd F(2x2) / F(4x4), opt-in). CPU:
 * wasm_plan.ts (inference on wasm/rrdb_cpu.c: WebAssembly SIMD, Winograd, worker threads),
 * wasm_train_plan.ts (the psnr training step on the same kernels), wasm_conv.ts (tfjs-wasm's 3x3
 * and 4x4 stride-2 convolutions and their gradients on them: VGG19's and the discriminator's).
 * @module
 */
export {
  applyCustomKernelsEnv,
  customKernelStats,
  customWebGPUKernelsEnabled,
  disableCustomWebGPUKernels,
  enableCustomWebGPUKernels,
  isSame3x3,
  REPLACED_KERNELS,
} from "./register.ts";
export { type Activation, type ConvPrecision, type ConvTile, setConvTileOverride } from "./webgpu_conv3x3.ts";
export {
  DEFAULT_FILTER_GRAD_VARIANT,
  type FilterGradTile,
  type FilterGradVariant,
  setFilterGradVariant,
} from "./webgpu_filter_grad.ts";
export {
  CONV3X3_KERNEL,
  DENSE_BLOCK_KERNEL,
  fusedConv3x3,
  type FusedConv3x3Options,
  registerRRDBKernels,
  residualDenseBlock,
  rrdbnetForwardWebGPU,
} from "./webgpu_rrdb.ts";
export { type PlanWebGPUOptions, RRDBNetPlanWebGPU, TUNING_CANDIDATES } from "./webgpu_plan.ts";
export { castProgram, hasShaderF16, useWebGPUWithF16 } from "./webgpu_f16.ts";
export { WINOGRAD_GEMM_CANDIDATES, winogradCanRun, type WinogradSize } from "./webgpu_winograd.ts";
export { type AdamOptions, adamUpdateWebGPU, FusedAdamWebGPU } from "./webgpu_adam.ts";
export {
  type GradScalerState,
  RRDBNetTrainPlanWebGPU,
  type StepResult,
  type TrainPlanOptions,
} from "./webgpu_train_plan.ts";
export { UncapturedGPUError, watchUncapturedErrors } from "./webgpu_errors.ts";
export { type PlanProfile, RRDBNetPlanWasm, type WasmPlanOptions } from "./wasm_plan.ts";
export {
  FILTER_CACHE_BYTES,
  useStockWasmConvKernels,
  useWasmConvKernels,
  type WasmConvOptions,
} from "./wasm_conv.ts";
export { RRDBNetTrainPlanWasm } from "./wasm_train_plan.ts";
export { type KernelPoolOptions, MAX_MEMORY_BYTES } from "./wasm_pool.ts";
