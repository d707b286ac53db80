/**
 * Convolution gradients for tfjs's wasm backend that run on its fast forward convolution.
 *
 * The backend's stock `Conv2DBackpropInput` is a plain loop (2.4 GFLOP/s on 2 threads here) and it
 * has no `Conv2DBackpropFilter` at all, while its `Conv2D` (XNNPACK) reaches ~57 GFLOP/s. Both
 * gradients are convolutions in disguise, so the discriminator's and VGG's backward (the gan stage
 * on the CPU) run as forward convolutions:
 * - filter gradient: dW[kh, kw, ci, co] = Σ_{b,o} x[b, s·o + k, ci] · dy[b, o, co] is a convolution
 *   of x with the image's channels as the batch and the batch as channels ([ci, H, W, B]) by dy as
 *   the filter ([Ho, Wo, B, co]) dilated by the stride: its output is [ci, kh, kw, co].
 * - input gradient (kernel a multiple of the stride): pixel s·m + a of the padded input only meets
 *   taps a + s·t, so each of the s² phases is a (k/s)x(k/s) convolution of dy with the flipped,
 *   transposed taps; the s² phases run as one convolution with s²·ci outputs, interleaved
 *   after: as many products as the forward, where zero-inserting would take s² times as
 *   many.
 * Kernels are called directly on the backend (no tfjs ops inside a kernel) and every intermediate
 * is freed. NHWC, float32, no dilation; anything else goes to the stock kernel, or fails as it would.
 * The trainer installs core/kernels/wasm_conv.ts over these: our CPU kernels take VGG's and the
 * discriminator's convolutions, and leave these the rest (D's 4x4 filter gradients of outputs
 * under 16x16, any other shape).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type ConvAttrs,
  convInfo,
  type WasmKernel,
  WasmKernelSwap,
} from "../core/kernels/wasm_kernel_swap.ts";

type Info = tf.TensorInfo;
interface WasmBackend {
  readSync(dataId: tf.DataId): Float32Array;
  makeOutput(shape: number[], dtype: "float32"): Info;
  typedArrayFromHeap(info: Info): Float32Array;
  disposeData(dataId: tf.DataId): boolean;
}
type KernelArgs = Parameters<WasmKernel>[0];

/** Runs the wasm backend's own kernel `name`. */
function run(backend: WasmBackend, name: string, inputs: tf.NamedTensorInfoMap, attrs: object): Info {
  const k = tf.getKernel(name, "wasm");
  if (!k) throw new Error(`the wasm backend has no ${name} kernel`);
  return k.kernelFunc({ inputs, backend, attrs } as unknown as Parameters<tf.KernelFunc>[0]) as Info;
}

/** A chain of kernels, each on the previous result; frees every result but the last. */
function chain(backend: WasmBackend, start: Info, steps: ((x: Info) => Info | null)[]): Info {
  let x = start;
  for (const step of steps) {
    const y = step(x);
    if (!y) continue;
    if (x !== start) backend.disposeData(x.dataId);
    x = y;
  }
  return x;
}

/** Pads (or slices: negative amounts) the spatial dims of an NHWC tensor; null when nothing changes. */
function padOrCrop(
  backend: WasmBackend,
  x: Info,
  rows: [number, number],
  cols: [number, number],
): Info | null {
  if (rows.every((r) => r === 0) && cols.every((c) => c === 0)) return null;
  const [n, , , c] = x.shape;
  const grow = (a: number) => Math.max(0, a);
  let padded: Info = x;
  if (rows.some((r) => r > 0) || cols.some((c) => c > 0)) {
    padded = run(backend, "PadV2", { x }, {
      paddings: [[0, 0], rows.map(grow), cols.map(grow), [0, 0]],
      constantValue: 0,
    });
  }
  if (rows.every((r) => r >= 0) && cols.every((c) => c >= 0)) return padded;
  const [ph, pw] = [padded.shape[1], padded.shape[2]];
  const cut = (a: number) => Math.max(0, -a);
  const out = run(backend, "Slice", { x: padded }, {
    begin: [0, cut(rows[0]), cut(cols[0]), 0],
    size: [n, ph - cut(rows[0]) - cut(rows[1]), pw - cut(cols[0]) - cut(cols[1]), c],
  });
  if (padded !== x) backend.disposeData(padded.dataId);
  return out;
}

const swap = new WasmKernelSwap();

function backpropFilter(args: KernelArgs): Info {
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { filterShape: number[] };
  const backend = args.backend as WasmBackend;
  if ((attrs.dataFormat ?? "NHWC") !== "NHWC" || x.dtype !== "float32") {
    throw new Error("wasm Conv2DBackpropFilter: NHWC float32 only");
  }
  const info = convInfo(x.shape, attrs.filterShape, attrs);
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const { top, left } = info.padInfo;
  // exactly the rows and columns the convolution read
  const needH = sh * (info.outHeight - 1) + kh, needW = sw * (info.outWidth - 1) + kw;
  return chain(backend, x, [
    (t) => padOrCrop(backend, t, [top, needH - top - info.inHeight], [left, needW - left - info.inWidth]),
    (t) => run(backend, "Transpose", { x: t }, { perm: [3, 1, 2, 0] }),
    (t) => {
      const filter = run(backend, "Transpose", { x: dy }, { perm: [1, 2, 0, 3] });
      const out = run(backend, "Conv2D", { x: t, filter }, {
        strides: [1, 1],
        pad: "valid",
        dataFormat: "NHWC",
        dilations: [sh, sw],
      });
      backend.disposeData(filter.dataId);
      return out;
    },
    (t) => run(backend, "Transpose", { x: t }, { perm: [1, 2, 0, 3] }),
  ]);
}

function backpropInput(args: KernelArgs): Info | null {
  const { dy, filter } = args.inputs as { dy: Info; filter: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { inputShape: number[] };
  const backend = args.backend as WasmBackend;
  const [kh, kw, ci, co] = filter.shape;
  const info = convInfo(attrs.inputShape, filter.shape, attrs);
  const { strideHeight: s, strideWidth: sw } = info;
  if ((attrs.dataFormat ?? "NHWC") !== "NHWC" || s !== sw || kh % s || kw % s) {
    return null; // the stock kernel's
  }
  const { top, left } = info.padInfo;
  const th = kh / s, tw = kw / s;
  // phase rows m cover padded rows s·m .. s·m + s - 1 up to the input's last row
  const mh = Math.ceil((top + info.inHeight) / s), mw = Math.ceil((left + info.inWidth) / s);
  // the phases' filter: F[p, q, co, (a·s + b)·ci + c] = W[a + s(th-1-p), b + s(tw-1-q), c, co], from
  // W transposed to [kh, kw, co, ci] by the backend, so that each tap's rows of ci values move whole
  // (an element-wise loop here took ~100 ms for a 4x4x512x512 filter, more than the convolution)
  const wt = run(backend, "Transpose", { x: filter }, { perm: [0, 1, 3, 2] });
  const phases = backend.makeOutput([th, tw, co, s * s * ci], "float32");
  const w = backend.typedArrayFromHeap(wt), f = backend.typedArrayFromHeap(phases);
  for (let p = 0; p < th; p++) {
    for (let q = 0; q < tw; q++) {
      for (let o = 0; o < co; o++) {
        for (let a = 0; a < s; a++) {
          for (let b = 0; b < s; b++) {
            const src = (((a + s * (th - 1 - p)) * kw + b + s * (tw - 1 - q)) * co + o) * ci;
            f.set(w.subarray(src, src + ci), (((p * tw + q) * co + o) * s + a) * s * ci + b * ci);
          }
        }
      }
    }
  }
  backend.disposeData(wt.dataId);
  try {
    return chain(backend, dy, [
      (t) => padOrCrop(backend, t, [th - 1, mh - info.outHeight], [tw - 1, mw - info.outWidth]),
      (t) =>
        run(backend, "Conv2D", { x: t, filter: phases }, {
          strides: [1, 1],
          pad: "valid",
          dataFormat: "NHWC",
          dilations: [1, 1],
        }),
      (t) =>
        s === 1
          ? padOrCrop(backend, t, [-top, info.inHeight + top - mh], [-left, info.inWidth + left - mw])
          : interleavePhases(backend, t, s, attrs.inputShape, [top, left]),
    ]);
  } finally {
    backend.disposeData(phases.dataId);
  }
}

/**
 * The input gradient [n, h, w, ci] from the phases' output [n, mh, mw, s·s·ci]: padded pixel
 * (s·m + a, s·q + b) is phase (a, b) of phase pixel (m, q); `offset` is the padding (top, left).
 * One row copy per pixel: tfjs-wasm's DepthToSpace, element by element on one thread, took 82 ms
 * for a 2x128x128x64 gradient (the phases' convolution 22 ms).
 */
function interleavePhases(backend: WasmBackend, t: Info, s: number, shape: number[], offset: number[]): Info {
  const [n, h, w, ci] = shape;
  const [, mh, mw] = t.shape;
  const out = backend.makeOutput(shape, "float32");
  const src = backend.typedArrayFromHeap(t), dst = backend.typedArrayFromHeap(out);
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < h; y++) {
      const py = y + offset[0], m = Math.floor(py / s), a = py % s;
      for (let x = 0; x < w; x++) {
        const px = x + offset[1], q = Math.floor(px / s), b = px % s;
        const from = (((i * mh + m) * mw + q) * s * s + a * s + b) * ci;
        dst.set(src.subarray(from, from + ci), ((i * h + y) * w + x) * ci);
      }
    }
  }
  return out;
}

/**
 * Installs the fast convolution gradients on tfjs's wasm backend (idempotent). The gan stage on
 * the CPU needs them: without, the discriminator cannot train there at all.
 */
export function useFastWasmConvGrads(): void {
  swap.install({ Conv2DBackpropFilter: backpropFilter, Conv2DBackpropInput: backpropInput });
}

/** Puts the stock kernels back (tests compare with them). */
export function useStockWasmConvGrads(): void {
  swap.restore();
}
