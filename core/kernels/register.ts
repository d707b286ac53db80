/**
 * Switches tfjs's WebGPU kernels for 3x3 convolutions between the stock ones and ours, in one
 * process: `enableCustomWebGPUKernels()` registers ours for `Conv2D`, `FusedConv2D`,
 * `Conv2DBackpropInput` and `Conv2DBackpropFilter` on 'webgpu' (every tf op, gradient and model
 * then uses them), `disableCustomWebGPUKernels()` puts back the stock configs saved on the way in.
 * Shapes ours do not handle (not 3x3 / stride 1 / dilation 1 / 'same' / NHWC / float32, or an
 * activation other than linear, relu, leakyrelu) go to the stock kernel; {@link customKernelStats}
 * counts both, so a benchmark can show which ran.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { type Activation, conv3x3BackpropInput, conv3x3Forward } from "./webgpu_conv3x3.ts";
import { conv3x3BackpropFilter } from "./webgpu_filter_grad.ts";
import type { WebGPUBackendLike } from "./webgpu_program.ts";

/** The stock kernels we replace. */
export const REPLACED_KERNELS = [
  "Conv2D",
  "FusedConv2D",
  "Conv2DBackpropInput",
  "Conv2DBackpropFilter",
] as const;

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

const stock = new Map<string, tf.KernelConfig>();
let enabled = false;
const stats = { custom: {} as Record<string, number>, stock: {} as Record<string, number> };

const pair = (v: unknown): number[] => (Array.isArray(v) ? v as number[] : [v as number, v as number]);
const ones = (v: unknown) => v == null || pair(v).every((d) => d === 1);

/** Whether a convolution is one ours computes: 3x3, stride 1, dilation 1, 'same', NHWC, float32. */
export function isSame3x3(
  xShape: number[],
  filterShape: number[],
  attrs: tf.NamedAttrMap,
  dtype = "float32",
): boolean {
  const df = attrs.dataFormat;
  return xShape.length === 4 && filterShape.length === 4 && filterShape[0] === 3 && filterShape[1] === 3 &&
    dtype === "float32" && ones(attrs.strides) && ones(attrs.dilations) &&
    (df == null || df === "NHWC" || df === "channelsLast") && (attrs.pad === "same" || attrs.pad === 1) &&
    xShape[1] > 0 && xShape[2] > 0;
}

function count(kind: "custom" | "stock", name: string) {
  stats[kind][name] = (stats[kind][name] ?? 0) + 1;
}

function delegate(name: string, args: KernelArgs) {
  count("stock", name);
  return stock.get(name)!.kernelFunc(args as Parameters<tf.KernelFunc>[0]);
}

function conv2d(args: KernelArgs) {
  const { x, filter } = args.inputs as { x: tf.TensorInfo; filter: tf.TensorInfo };
  if (!isSame3x3(x.shape, filter.shape, args.attrs ?? {}, x.dtype)) return delegate("Conv2D", args);
  count("custom", "Conv2D");
  const [n, h, w, c] = x.shape;
  return conv3x3Forward(args.backend as WebGPUBackendLike, {
    n,
    h,
    w,
    c0: c,
    x0Stride: c,
    cout: filter.shape[3],
  }, {
    inputs: [x, filter],
  });
}

function fusedConv2d(args: KernelArgs) {
  const { x, filter, bias, preluActivationWeights } = args.inputs as Record<
    string,
    tf.TensorInfo | undefined
  >;
  const attrs = args.attrs ?? {};
  const act = (attrs.activation ?? "linear") as string;
  const cout = filter!.shape[3];
  const biasOk = !bias || (bias.shape.length === 1 && bias.shape[0] === cout && bias.dtype === "float32");
  if (
    !isSame3x3(x!.shape, filter!.shape, attrs, x!.dtype) || preluActivationWeights || !biasOk ||
    !["linear", "relu", "leakyrelu"].includes(act)
  ) return delegate("FusedConv2D", args);
  count("custom", "FusedConv2D");
  const [n, h, w, c] = x!.shape;
  const spec = {
    n,
    h,
    w,
    c0: c,
    x0Stride: c,
    cout,
    bias: !!bias,
    activation: act as Activation,
    alpha: (attrs.leakyreluAlpha as number | undefined) ?? 0.2,
  };
  return conv3x3Forward(args.backend as WebGPUBackendLike, spec, {
    inputs: bias ? [x!, filter!, bias] : [x!, filter!],
  });
}

function backpropInput(args: KernelArgs) {
  const { dy, filter } = args.inputs as { dy: tf.TensorInfo; filter: tf.TensorInfo };
  const attrs = args.attrs ?? {};
  const inShape = attrs.inputShape as number[];
  const sameSize = inShape?.[1] === dy.shape[1] && inShape?.[2] === dy.shape[2] &&
    inShape?.[3] === filter.shape[2];
  if (!sameSize || !isSame3x3(inShape, filter.shape, attrs, dy.dtype)) {
    return delegate("Conv2DBackpropInput", args);
  }
  count("custom", "Conv2DBackpropInput");
  return conv3x3BackpropInput(args.backend as WebGPUBackendLike, dy, filter);
}

function backpropFilter(args: KernelArgs) {
  const { x, dy } = args.inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
  const attrs = args.attrs ?? {};
  const fShape = attrs.filterShape as number[];
  const sameSize = x.shape[1] === dy.shape[1] && x.shape[2] === dy.shape[2] && fShape?.[3] === dy.shape[3];
  if (!sameSize || !isSame3x3(x.shape, fShape, attrs, x.dtype)) return delegate("Conv2DBackpropFilter", args);
  count("custom", "Conv2DBackpropFilter");
  return conv3x3BackpropFilter(args.backend as WebGPUBackendLike, x, dy);
}

const ours: Record<(typeof REPLACED_KERNELS)[number], (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]> =
  {
    Conv2D: conv2d,
    FusedConv2D: fusedConv2d,
    Conv2DBackpropInput: backpropInput,
    Conv2DBackpropFilter: backpropFilter,
  };

function swap(name: string, config: tf.KernelConfig) {
  if (tf.getKernel(name, "webgpu")) tf.unregisterKernel(name, "webgpu");
  tf.registerKernel(config);
}

/**
 * Registers our kernels on 'webgpu' (idempotent). `only` limits it to some of
 * {@link REPLACED_KERNELS} (e.g. forward only), the others staying stock.
 */
export function enableCustomWebGPUKernels(options: { only?: string[] } = {}): void {
  for (const name of REPLACED_KERNELS) {
    if (!stock.has(name)) {
      const config = tf.getKernel(name, "webgpu");
      if (!config) throw new Error(`core/kernels/register.ts: tfjs has no stock webgpu kernel ${name}`);
      stock.set(name, config);
    }
  }
  disableCustomWebGPUKernels();
  for (const name of REPLACED_KERNELS) {
    if (options.only && !options.only.includes(name)) continue;
    swap(name, {
      kernelName: name,
      backendName: "webgpu",
      kernelFunc: ours[name] as unknown as tf.KernelFunc,
    });
  }
  enabled = true;
}

/** Puts tfjs's stock kernels back (idempotent). */
export function disableCustomWebGPUKernels(): void {
  for (const [name, config] of stock) {
    if (tf.getKernel(name, "webgpu") !== config) swap(name, config);
  }
  enabled = false;
}

/** Whether our kernels are registered now. */
export function customWebGPUKernelsEnabled(): boolean {
  return enabled;
}

/**
 * Applies `ESRGAN_CUSTOM_KERNELS` from the environment: "1" enables, "0" disables, unset leaves
 * things as they are. Returns the state after.
 */
export function applyCustomKernelsEnv(): boolean {
  let flag: string | undefined;
  try {
    flag = Deno.env.get("ESRGAN_CUSTOM_KERNELS");
  } catch {
    flag = undefined; // no --allow-env: leave the choice to the caller
  }
  if (flag === "1") enableCustomWebGPUKernels();
  else if (flag === "0") disableCustomWebGPUKernels();
  return enabled;
}

/** How many calls each kernel served with ours and with the stock fallback since the last reset. */
export function customKernelStats(options: { reset?: boolean } = {}): typeof stats {
  const copy = { custom: { ...stats.custom }, stock: { ...stats.stock } };
  if (options.reset) {
    stats.custom = {};
    stats.stock = {};
  }
  return copy;
}
