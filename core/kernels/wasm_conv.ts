/**
 * tfjs-wasm's convolutions on our CPU kernels (wasm/rrdb_cpu.c): `Conv2D`, `FusedConv2D` (bias;
 * linear, ReLU or LeakyReLU 0.2), `Conv2DBackpropInput` and `Conv2DBackpropFilter` for
 * - 3x3 stride-1 "same" convs, in Winograd F(4x4, 3x3) (wasm_conv_winograd.ts): VGG19's, and the
 *   discriminator's at full resolution;
 * - 4x4 stride-2 convs, as 2x2 convs of four times the channels (wasm_conv_stride2.ts): the
 *   discriminator's downsampling.
 *
 * The gan stage on the CPU runs VGG19 and the discriminator as tfjs ops, whose convolutions on
 * XNNPACK took most of its step (forwards at some 50 GFLOP/s, gradients at 5-40, each call
 * repacking its filter). Every call here copies its operands into the kernels' own memory (maps
 * with a zero border), packs the filter there unless it has it already (wasm_conv_runtime.ts) and
 * runs on the pool's threads while the calling thread waits (tfjs kernels are synchronous).
 * Anything else (other filters, strides, paddings, dilations, activations, NCHW) goes to the kernel
 * registered before.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { ACT } from "./wasm_layer.ts";
import { type ConvAttrs, convInfo, type WasmKernel, WasmKernelSwap } from "./wasm_kernel_swap.ts";
import { configureRuntime, disposeRuntime, type WasmConvOptions } from "./wasm_conv_runtime.ts";
import { convolve3x3, filterGrad3x3, type WasmBackend } from "./wasm_conv_winograd.ts";
import { conv4x4s2, conv4x4s2FilterGrad, conv4x4s2InputGrad } from "./wasm_conv_stride2.ts";

export { FILTER_CACHE_BYTES, type WasmConvOptions } from "./wasm_conv_runtime.ts";

type Info = tf.TensorInfo;
type KernelArgs = Parameters<WasmKernel>[0];

const swap = new WasmKernelSwap();
let handled = 0;

/** Convolutions these kernels have run since the process started, not passed on (for tests). */
export function wasmConvCalls(): number {
  return handled;
}

/**
 * Runs tfjs-wasm's 3x3 stride-1 "same" and 4x4 stride-2 convolutions and their gradients on our
 * CPU kernels; other convolutions keep the kernels registered before this call. A second call
 * changes nothing until {@link useStockWasmConvKernels}.
 */
export function useWasmConvKernels(wanted: WasmConvOptions = {}): void {
  if (swap.active) return;
  configureRuntime(wanted);
  const kernels = {
    Conv2D: conv2d,
    FusedConv2D: conv2d,
    Conv2DBackpropInput: backpropInput,
    Conv2DBackpropFilter: backpropFilter,
  };
  swap.install(kernels, () => handled++);
}

/** Puts back the kernels {@link useWasmConvKernels} replaced and stops its threads. */
export function useStockWasmConvKernels(): void {
  swap.restore();
  disposeRuntime();
}

/**
 * Which of ours a conv of `filterShape` on `xShape` is: a 3x3 stride-1 one padded by 1 all round
 * (Winograd), a 4x4 stride-2 one (direct, any padding), or none.
 */
function kindOf(
  xShape: number[],
  filterShape: number[],
  attrs: ConvAttrs,
  dtype: string,
): { kind: "3x3" | "4x4/2"; info: tf.backend_util.Conv2DInfo } | null {
  if ((attrs.dataFormat ?? "NHWC") !== "NHWC" || dtype !== "float32") return null;
  const dilations = attrs.dilations ?? 1;
  if ([dilations].flat().some((d) => d !== 1)) return null;
  const [kh, kw] = filterShape;
  if (!(kh === 3 && kw === 3) && !(kh === 4 && kw === 4)) return null;
  const info = convInfo(xShape, filterShape, attrs);
  const { strideHeight: sh, strideWidth: sw, padInfo: { top, bottom, left, right } } = info;
  if (kh === 4) return sh === 2 && sw === 2 ? { kind: "4x4/2", info } : null;
  const same = top === 1 && bottom === 1 && left === 1 && right === 1;
  return sh === 1 && sw === 1 && same ? { kind: "3x3", info } : null;
}

/** The epilogue's activation for a fused conv's attributes; null: not one of the kernels'. */
function activation(attrs: ConvAttrs): number | null {
  switch (attrs.activation ?? "linear") {
    case "linear":
      return ACT.none;
    case "relu":
      return ACT.relu;
    case "leakyrelu":
      // the kernels' LeakyReLU has RRDBNet's slope (0.2 as a float32, as tfjs passes it)
      return Math.fround(attrs.leakyreluAlpha ?? 0.2) === Math.fround(0.2) ? ACT.leaky02 : null;
    default:
      return null;
  }
}

function conv2d(args: KernelArgs): Info | null {
  const { x, filter, bias, preluActivationWeights } = args.inputs as Record<string, Info | undefined>;
  const attrs = args.attrs as unknown as ConvAttrs;
  const act = activation(attrs), conv = kindOf(x!.shape, filter!.shape, attrs, x!.dtype);
  if (act === null || preluActivationWeights || !conv) return null;
  if (bias && bias.shape.reduce((a, b) => a * b, 1) !== filter!.shape[3]) return null;
  const backend = args.backend as WasmBackend;
  if (conv.kind === "4x4/2") return conv4x4s2(backend, x!, filter!, { info: conv.info, bias, act });
  return convolve3x3(backend, x!, filter!, { bias, act, inputGrad: false });
}

function backpropInput(args: KernelArgs): Info | null {
  const { dy, filter } = args.inputs as { dy: Info; filter: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { inputShape: number[] };
  const conv = kindOf(attrs.inputShape, filter.shape, attrs, dy.dtype);
  if (!conv) return null;
  const backend = args.backend as WasmBackend;
  if (conv.kind === "4x4/2") return conv4x4s2InputGrad(backend, dy, filter, { info: conv.info });
  return convolve3x3(backend, dy, filter, { act: ACT.none, inputGrad: true });
}

function backpropFilter(args: KernelArgs): Info | null {
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { filterShape: number[] };
  const conv = kindOf(x.shape, attrs.filterShape, attrs, x.dtype);
  if (!conv) return null;
  const backend = args.backend as WasmBackend;
  if (conv.kind === "4x4/2") {
    // in the Winograd domain a small map's rounding and nine taps cost more than XNNPACK's four
    // (an 8x8 output of 512 channels: 61 against 33 ms here; a 16x16 one of 256: 19 against 32)
    const { outHeight, outWidth } = conv.info;
    if (outHeight < 16 || outWidth < 16) return null;
    return conv4x4s2FilterGrad(backend, x, dy, { info: conv.info });
  }
  return filterGrad3x3(backend, x, dy);
}
