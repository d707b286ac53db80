/**
 * Kernels of our own registered on tfjs's wasm backend in place of its own: each may hand a call
 * back to the kernel it replaced, and all can be put back (tests compare with the originals). And
 * what tfjs's convolution kernels are told (their attributes, the geometry they mean).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** A kernel that returns null to pass the call to the kernel it replaced. */
export type WasmKernel = (
  args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap },
) => tf.TensorInfo | null;

/** A set of replaced wasm kernels. */
export class WasmKernelSwap {
  /** The kernels replaced, by name (undefined: the backend had none). */
  private readonly replaced = new Map<string, tf.KernelConfig | undefined>();

  /** Whether any kernel is replaced now. */
  get active(): boolean {
    return this.replaced.size > 0;
  }

  /**
   * Registers `ours` for each name not replaced yet; `onOurs` is called after each call it served
   * itself.
   */
  install(kernels: Record<string, WasmKernel>, onOurs?: () => void): void {
    for (const [name, ours] of Object.entries(kernels)) {
      if (this.replaced.has(name)) continue;
      const old = tf.getKernel(name, "wasm");
      this.replaced.set(name, old);
      if (old) tf.unregisterKernel(name, "wasm");
      const kernelFunc = (args: Parameters<tf.KernelFunc>[0]) => {
        const out = ours(args);
        if (out) {
          onOurs?.();
          return out;
        }
        if (!old) throw new Error(`the wasm backend has no ${name} kernel for this call`);
        return old.kernelFunc(args);
      };
      tf.registerKernel({ kernelName: name, backendName: "wasm", kernelFunc });
    }
  }

  /** Puts the replaced kernels back. */
  restore(): void {
    for (const [name, config] of this.replaced) {
      tf.unregisterKernel(name, "wasm");
      if (config) tf.registerKernel(config);
    }
    this.replaced.clear();
  }
}

/** The attributes tfjs passes its convolution kernels (and their gradients). */
export interface ConvAttrs {
  strides: [number, number] | number;
  pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
  dataFormat?: "NHWC" | "NCHW";
  dilations?: [number, number] | number;
  dimRoundingMode?: "floor" | "round" | "ceil";
  /** FusedConv2D's. */
  activation?: string;
  leakyreluAlpha?: number;
}

/** The geometry of an NHWC conv of `filterShape` on `xShape` (sizes, strides, padding), dilation aside. */
export function convInfo(
  xShape: number[],
  filterShape: number[],
  attrs: ConvAttrs,
): tf.backend_util.Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    "channelsLast",
  );
}
