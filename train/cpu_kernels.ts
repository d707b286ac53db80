/**
 * A faster `Conv2DBackpropFilter` for tfjs's cpu backend. The stock kernel reads every operand
 * through `TensorBuffer.get` in the innermost loop and dominates CPU training (8 of 9 s of a tiny
 * gan step here); this one walks the typed arrays with the output channels innermost and
 * accumulates in float64. NHWC only; other layouts go to the stock kernel. Training on the cpu
 * backend installs it ({@link useFastCpuConvBackprop}); results match the stock kernel up to
 * float32 rounding (summation order), and are deterministic.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";

type CpuBackend = {
  data: { get(id: object): { values: Float32Array } };
  makeTensorInfo(shape: number[], dtype: string, values: Float32Array): tf.TensorInfo;
};

let stock: tf.KernelConfig | undefined;

function backpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }) {
  const { x, dy } = args.inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
  const attrs = args.attrs as unknown as {
    strides: [number, number] | number;
    pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
    dataFormat: "NHWC" | "NCHW";
    dimRoundingMode?: "floor" | "round" | "ceil";
    filterShape: [number, number, number, number];
  };
  if ((attrs.dataFormat ?? "NHWC") !== "NHWC" || x.dtype !== "float32") {
    return stock!.kernelFunc(args as Parameters<tf.KernelFunc>[0]);
  }
  const backend = args.backend as CpuBackend;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    "channelsLast",
  );
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, outChannels } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: fh, filterWidth: fw } = info;
  const top = info.padInfo.top, left = info.padInfo.left;
  const xv = backend.data.get(x.dataId).values, dyv = backend.data.get(dy.dataId).values;
  const acc = new Float64Array(fh * fw * inChannels * outChannels);
  for (let b = 0; b < batchSize; b++) {
    for (let yr = 0; yr < outHeight; yr++) {
      for (let yc = 0; yc < outWidth; yc++) {
        const dyOff = ((b * outHeight + yr) * outWidth + yc) * outChannels;
        for (let wr = 0; wr < fh; wr++) {
          const xr = yr * sh + wr - top;
          if (xr < 0 || xr >= inHeight) continue;
          for (let wc = 0; wc < fw; wc++) {
            const xc = yc * sw + wc - left;
            if (xc < 0 || xc >= inWidth) continue;
            const xOff = ((b * inHeight + xr) * inWidth + xc) * inChannels;
            const wBase = (wr * fw + wc) * inChannels * outChannels;
            for (let d1 = 0; d1 < inChannels; d1++) {
              const a = xv[xOff + d1];
              if (a === 0) continue; // post-LeakyReLU/ReLU inputs are often exactly 0
              const w = wBase + d1 * outChannels;
              for (let d2 = 0; d2 < outChannels; d2++) acc[w + d2] += a * dyv[dyOff + d2];
            }
          }
        }
      }
    }
  }
  return backend.makeTensorInfo(attrs.filterShape, "float32", Float32Array.from(acc));
}

/** Replaces the cpu backend's Conv2DBackpropFilter with the fast one (idempotent). */
export function useFastCpuConvBackprop(): void {
  if (stock) return;
  stock = tf.getKernel("Conv2DBackpropFilter", "cpu");
  if (!stock) throw new Error("the cpu backend has no Conv2DBackpropFilter kernel to replace");
  tf.unregisterKernel("Conv2DBackpropFilter", "cpu");
  tf.registerKernel({
    kernelName: "Conv2DBackpropFilter",
    backendName: "cpu",
    kernelFunc: backpropFilter as tf.KernelFunc,
  });
}

/** Puts the stock kernel back. */
export function useStockCpuConvBackprop(): void {
  if (!stock) return;
  tf.unregisterKernel("Conv2DBackpropFilter", "cpu");
  tf.registerKernel(stock);
  stock = undefined;
}
