/**
 * RRDBNet inference on WebGPU with fused kernels: each Residual Dense Block is five dispatches of
 * the 3x3 kernel and nothing else. The four grown feature maps live in one buffer
 * [n, h, w, 4·gc] that conv k writes at channel (k-1)·gc while reading the block input and the
 * channels grown before it (no `concat` copies); conv5 adds `0.2·x5 + x` in its store, and the
 * third block of an RRDB also the outer `0.2·out + x`. `conv_body` adds the trunk skip, and the
 * upsampling convs read their input through the nearest 2x resize. Per 23-block forward this is
 * 351 dispatches, where the stock path runs 814 kernels (351 convs, 276 concats, 92 multiplies,
 * 93 adds, 2 resizes; counted with `tf.profile`).
 *
 * Two kernels are registered for 'webgpu' (inference only, no gradients):
 * `ESRGANConv3x3` and `ESRGANResidualDenseBlock`.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { type Activation, conv3x3Forward, type Conv3x3Spec } from "./webgpu_conv3x3.ts";
import type { WebGPUBackendLike } from "./webgpu_program.ts";
import { pixelUnshuffle, type RRDBNet, unshuffleFactor, upsamplings } from "../rrdbnet_arch.ts";

/** Kernel name of the fused single convolution (3x3, bias, activation, upsample, residual). */
export const CONV3X3_KERNEL = "ESRGANConv3x3";
/** Kernel name of one Residual Dense Block (five convolutions, growth buffer, residuals). */
export const DENSE_BLOCK_KERNEL = "ESRGANResidualDenseBlock";

function conv3x3Kernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }) {
  const { x, filter, bias, residual } = args.inputs as Record<string, tf.TensorInfo | undefined>;
  const a = args.attrs ?? {};
  const up = !!a.upsample;
  const [n, hh, ww, c] = x!.shape;
  const inputs = [x!, filter!, ...(bias ? [bias] : []), ...(residual ? [residual] : [])];
  return conv3x3Forward(args.backend as WebGPUBackendLike, {
    n,
    h: up ? hh * 2 : hh,
    w: up ? ww * 2 : ww,
    c0: c,
    x0Stride: c,
    cout: filter!.shape[3],
    bias: !!bias,
    activation: (a.activation ?? "linear") as Activation,
    alpha: (a.alpha as number | undefined) ?? 0.2,
    res2Scale: residual ? ((a.residualScale as number | undefined) ?? 1) : undefined,
    upsample: up,
  }, { inputs });
}

/**
 * The layout a dense block's convs share without concatenations: conv k (1..4) reads the block input
 * `x` (nf channels) and the k − 1 growth slices written so far from one [n, h, w, 4·gc] buffer, and
 * writes its own gc channels, LeakyReLU 0.2, into slice k − 1 of that buffer.
 */
export function growthConvSpec(
  size: { n: number; h: number; w: number },
  nf: number,
  gc: number,
  k: number,
): Conv3x3Spec {
  return {
    ...size,
    c0: nf,
    x0Stride: nf,
    c1: (k - 1) * gc,
    x1Stride: 4 * gc,
    x1IsOutput: true,
    cout: gc,
    outStride: 4 * gc,
    outOffset: (k - 1) * gc,
    bias: true,
    activation: "leakyrelu",
    alpha: 0.2,
  };
}

/**
 * Conv 5 of a dense block: reads `x` and the whole growth buffer, writes nf channels as
 * `resScale`·conv + x, plus `skipScale`·skip when the block is an RRDB's last (its 0.2 residual fused).
 */
export function fuseConvSpec(
  size: { n: number; h: number; w: number },
  nf: number,
  gc: number,
  options: { resScale: number; skipScale?: number },
): Conv3x3Spec {
  return {
    ...size,
    c0: nf,
    x0Stride: nf,
    c1: 4 * gc,
    x1Stride: 4 * gc,
    cout: nf,
    bias: true,
    res1Scale: options.resScale,
    res2Scale: options.skipScale,
  };
}

function denseBlockKernel(
  args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap },
) {
  const backend = args.backend as WebGPUBackendLike;
  const ins = args.inputs as Record<string, tf.TensorInfo | undefined>;
  const a = args.attrs ?? {};
  const x = ins.x!;
  const [n, h, w, nf] = x.shape;
  const gc = ins.w1!.shape[3];
  const grow = backend.makeTensorInfo([n, h, w, 4 * gc], "float32");
  for (let k = 1; k <= 4; k++) {
    conv3x3Forward(backend, growthConvSpec({ n, h, w }, nf, gc, k), {
      inputs: [x, ins[`w${k}`]!, ins[`b${k}`]!],
      output: grow,
    });
  }
  const skip = ins.skip;
  const out = conv3x3Forward(
    backend,
    fuseConvSpec({ n, h, w }, nf, gc, {
      resScale: (a.resScale as number | undefined) ?? 0.2,
      skipScale: skip ? ((a.skipScale as number | undefined) ?? 0.2) : undefined,
    }),
    { inputs: [x, grow, ins.w5!, ins.b5!, ...(skip ? [skip] : [])] },
  );
  backend.disposeData(grow.dataId);
  return out;
}

let registered = false;

/** Registers {@link CONV3X3_KERNEL} and {@link DENSE_BLOCK_KERNEL} for 'webgpu' (idempotent). */
export function registerRRDBKernels(): void {
  if (registered) return;
  for (
    const [kernelName, kernelFunc] of [[CONV3X3_KERNEL, conv3x3Kernel], [
      DENSE_BLOCK_KERNEL,
      denseBlockKernel,
    ]] as const
  ) {
    if (!tf.getKernel(kernelName, "webgpu")) {
      tf.registerKernel({
        kernelName,
        backendName: "webgpu",
        kernelFunc: kernelFunc as unknown as tf.KernelFunc,
      });
    }
  }
  registered = true;
}

/** Options of {@link fusedConv3x3}. */
export interface FusedConv3x3Options {
  bias?: tf.Tensor1D;
  activation?: Activation;
  alpha?: number;
  /** Read `x` through a nearest-neighbour 2x upsampling. */
  upsample?: boolean;
  /** Adds `residual` after the activation: `out * residualScale + residual`. */
  residual?: tf.Tensor4D;
  residualScale?: number;
}

/** One fused 3x3 'same' convolution on WebGPU (inference only). */
export function fusedConv3x3(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  options: FusedConv3x3Options = {},
): tf.Tensor4D {
  registerRRDBKernels();
  const inputs: tf.NamedTensorMap = { x, filter };
  if (options.bias) inputs.bias = options.bias;
  if (options.residual) inputs.residual = options.residual;
  const attrs = {
    activation: options.activation ?? "linear",
    alpha: options.alpha ?? 0.2,
    upsample: !!options.upsample,
    residualScale: options.residualScale ?? 1,
  };
  return tf.engine().runKernel(CONV3X3_KERNEL, inputs, attrs) as tf.Tensor4D;
}

/**
 * One Residual Dense Block, `x5·resScale + x` (then `·skipScale + skip` when `skip` is given).
 * `weights` maps conv1..conv5 to HWIO filters and biases.
 */
export function residualDenseBlock(
  x: tf.Tensor4D,
  weights: { filters: tf.Tensor4D[]; biases: tf.Tensor1D[] },
  options: { skip?: tf.Tensor4D; resScale?: number; skipScale?: number } = {},
): tf.Tensor4D {
  registerRRDBKernels();
  const inputs: tf.NamedTensorMap = { x };
  weights.filters.forEach((f, i) => inputs[`w${i + 1}`] = f);
  weights.biases.forEach((b, i) => inputs[`b${i + 1}`] = b);
  if (options.skip) inputs.skip = options.skip;
  const attrs = { resScale: options.resScale ?? 0.2, skipScale: options.skipScale ?? 0.2 };
  return tf.engine().runKernel(DENSE_BLOCK_KERNEL, inputs, attrs) as tf.Tensor4D;
}

/**
 * `net.apply(x)` computed with the fused kernels above: same result (to float rounding), a
 * fraction of the dispatches. Needs the webgpu backend; inference only (no gradients).
 */
export function rrdbnetForwardWebGPU(net: RRDBNet, x: tf.Tensor4D): tf.Tensor4D {
  if (tf.getBackend() !== "webgpu") throw new Error("rrdbnetForwardWebGPU: the webgpu backend is not active");
  const p = (name: string) => {
    const v = net.params.get(name);
    if (!v) throw new Error(`rrdbnetForwardWebGPU: the net has no parameter ${name}`);
    return v;
  };
  const conv = (name: string, t: tf.Tensor4D, o: Omit<FusedConv3x3Options, "bias"> = {}) =>
    fusedConv3x3(t, p(`${name}.weight`) as tf.Tensor4D, { ...o, bias: p(`${name}.bias`) as tf.Tensor1D });
  return tf.tidy(() => {
    const u = unshuffleFactor(net.config);
    const input = u === 1 ? x : pixelUnshuffle(x, u);
    const feat = conv("conv_first", input);
    let body = feat;
    for (let b = 0; b < net.config.numBlock; b++) {
      let out = body;
      for (let r = 1; r <= 3; r++) {
        const name = `body.${b}.rdb${r}`;
        const weights = {
          filters: [1, 2, 3, 4, 5].map((c) => p(`${name}.conv${c}.weight`) as tf.Tensor4D),
          biases: [1, 2, 3, 4, 5].map((c) => p(`${name}.conv${c}.bias`) as tf.Tensor1D),
        };
        out = residualDenseBlock(out, weights, r === 3 ? { skip: body } : {});
      }
      body = out;
    }
    let up = conv("conv_body", body, { residual: feat });
    for (let k = 1; k <= upsamplings(net.config); k++) {
      up = conv(`conv_up${k}`, up, { upsample: true, activation: "leakyrelu" });
    }
    return conv("conv_last", conv("conv_hr", up, { activation: "leakyrelu" }));
  });
}
