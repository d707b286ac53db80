/**
 * tfjs-wasm's 3x3 stride-1 "same" convolutions on our CPU kernels (wasm/rrdb_cpu.c's Winograd
 * F(4x4, 3x3)): `Conv2D`, `FusedConv2D` (bias; linear, ReLU or LeakyReLU 0.2), and both gradients,
 * `Conv2DBackpropInput` (the convolution with the flipped, transposed filters) and
 * `Conv2DBackpropFilter` (in the Winograd domain, as the training step computes G's).
 *
 * The gan stage on the CPU runs VGG19's and the discriminator's convolutions as tfjs ops: on
 * XNNPACK they took most of its step (forwards at some 50 GFLOP/s, input gradients below 40,
 * repacking each filter on every call). Every call copies its operands into the kernels' own
 * memory (maps with a zero border, sides rounded up to 4 with zeros), packs the filters there and
 * runs on the pool's threads while the calling thread waits (tfjs kernels are synchronous).
 * Anything else (other filters, strides, paddings, dilations, activations, NCHW) goes to the kernel
 * registered before.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  ACT,
  align,
  type LayerRecord,
  NR,
  OP,
  PACK_INPUT_GRAD,
  roundUp,
  wgradDUFloats,
  wgradMFloats,
  wgradVFloats,
  winogradScratchFloats,
} from "./wasm_layer.ts";
import {
  Arena,
  configureRuntime,
  copyIn,
  copyOut,
  disposeRuntime,
  kernels,
  type WasmConvOptions,
} from "./wasm_conv_runtime.ts";

import { conv4x4s2, conv4x4s2InputGrad, type WasmBackend } from "./wasm_conv_stride2.ts";

export { FILTER_CACHE_BYTES, type WasmConvOptions } from "./wasm_conv_runtime.ts";

type Info = tf.TensorInfo;
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };
interface ConvAttrs {
  strides: [number, number] | number;
  pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
  dataFormat?: "NHWC" | "NCHW";
  dilations?: [number, number] | number;
  dimRoundingMode?: "floor" | "round" | "ceil";
  activation?: string;
  leakyreluAlpha?: number;
}

/** The kernels replaced, by name (undefined: the backend had none). */
const replaced = new Map<string, tf.KernelConfig | undefined>();
let handled = 0;

/** Convolutions these kernels have run since the process started, not passed on (for tests). */
export function wasmConvCalls(): number {
  return handled;
}

/**
 * Runs tfjs-wasm's 3x3 stride-1 "same" convolutions and their gradients on our CPU kernels; other
 * convolutions keep the kernels registered before this call. A second call changes nothing until
 * {@link useStockWasmConvKernels}.
 */
export function useWasmConvKernels(wanted: WasmConvOptions = {}): void {
  if (replaced.size) return;
  configureRuntime(wanted);
  const kernels: [string, (args: KernelArgs) => Info | null][] = [
    ["Conv2D", conv2d],
    ["FusedConv2D", conv2d],
    ["Conv2DBackpropInput", backpropInput],
    ["Conv2DBackpropFilter", backpropFilter],
  ];
  for (const [name, ours] of kernels) {
    if (replaced.has(name)) continue;
    const old = tf.getKernel(name, "wasm");
    replaced.set(name, old);
    if (old) tf.unregisterKernel(name, "wasm");
    const kernelFunc = (args: KernelArgs) => {
      const out = ours(args);
      if (out) {
        handled++;
        return out;
      }
      if (!old) throw new Error(`the wasm backend has no ${name} kernel for this convolution`);
      return old.kernelFunc(args as Parameters<tf.KernelFunc>[0]);
    };
    tf.registerKernel({ kernelName: name, backendName: "wasm", kernelFunc: kernelFunc as tf.KernelFunc });
  }
}

/** Puts back the kernels {@link useWasmConvKernels} replaced and stops its threads. */
export function useStockWasmConvKernels(): void {
  for (const [name, config] of replaced) {
    tf.unregisterKernel(name, "wasm");
    if (config) tf.registerKernel(config);
  }
  replaced.clear();
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
  const info = tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    "channelsLast",
  );
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
  return convolve(backend, x!, filter!, { bias, act, inputGrad: false });
}

function backpropInput(args: KernelArgs): Info | null {
  const { dy, filter } = args.inputs as { dy: Info; filter: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { inputShape: number[] };
  const conv = kindOf(attrs.inputShape, filter.shape, attrs, dy.dtype);
  if (!conv) return null;
  const backend = args.backend as WasmBackend;
  if (conv.kind === "4x4/2") return conv4x4s2InputGrad(backend, dy, filter, { info: conv.info });
  return convolve(backend, dy, filter, { act: ACT.none, inputGrad: true });
}

/**
 * The conv of x [n, h, w, cin] by filter [3, 3, cin, cout] (+ bias, activation), or with
 * `inputGrad` the input gradient from dy [n, h, w, cout] (x's role): the conv by the flipped filter
 * with its channels swapped.
 */
function convolve(
  backend: WasmBackend,
  x: Info,
  filter: Info,
  o: { bias?: Info; act: number; inputGrad: boolean },
): Info {
  const [n, h, w, c] = x.shape;
  const [, , fin, fout] = filter.shape;
  const cout = o.inputGrad ? fin : fout;
  const { pool: p, filters } = kernels();
  const uFloats = 36 * roundUp(c, 4) * roundUp(cout, NR);
  const cached = filters.get(filter.dataId, o.inputGrad ? "input grad" : "forward", uFloats);
  const arena = new Arena(filters.top);
  // the output's pixels are cout floats apart, so that it is copied out row by row
  const input = arena.maps(n, h, w, c), output = arena.maps(n, h, w, cout, { cs: cout });
  const u = cached?.ptr ?? arena.take(uFloats), pack = !cached || cached.fresh;
  const weights = pack ? arena.take(9 * fin * fout) : 0;
  const bias = arena.take(roundUp(cout, NR));
  const scratchFloats = align(4 * winogradScratchFloats(input.pw, input.cs)) / 4;
  const scratch = arena.take(scratchFloats * p.threads);
  const records: LayerRecord[] = [];
  if (pack) {
    records.push({
      kind: "pack",
      op: OP.pack,
      in: weights,
      realCin: fin,
      ics: fout,
      cin: input.cs,
      cout,
      out: u,
      ...(o.inputGrad ? { lrelu: PACK_INPUT_GRAD } : {}),
    });
  }
  const outputs = output.strips();
  input.strips().forEach((strip, i) => {
    records.push({
      kind: "conv",
      op: OP.winograd,
      in: strip.ptr,
      ics: input.cs,
      cin: input.cs,
      h: input.hp,
      w: strip.w,
      weight: u,
      bias,
      out: outputs[i].ptr,
      ocs: cout,
      cout,
      lrelu: o.act,
      s0: 1,
      scratch,
      scratchFloats,
    });
  });
  const out = backend.makeOutput([n, h, w, cout], "float32");
  arena.run(p, records, (f) => {
    copyIn(backend.typedArrayFromHeap(x), [n, h, w, c], f, input);
    if (pack) f.set(backend.typedArrayFromHeap(filter), weights / 4);
    f.fill(0, bias / 4, bias / 4 + roundUp(cout, NR));
    if (o.bias) f.set(backend.typedArrayFromHeap(o.bias), bias / 4);
  });
  copyOut(p.floats(), output, [n, h, w, cout], backend.typedArrayFromHeap(out));
  return out;
}

function backpropFilter(args: KernelArgs): Info | null {
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as ConvAttrs & { filterShape: number[] };
  if (kindOf(x.shape, attrs.filterShape, attrs, x.dtype)?.kind !== "3x3") return null;
  const backend = args.backend as WasmBackend;
  const [n, h, w, cin] = x.shape, cout = dy.shape[3];
  const { pool: p, filters } = kernels(), arena = new Arena(filters.top);
  const xm = arena.maps(n, h, w, cin), dym = arena.maps(n, h, w, cout);
  const strips = xm.strips(), dys = dym.strips();
  const perStrip = (xm.hp / 4) * (strips[0].w / 4), tiles = strips.length * perStrip;
  const v = arena.take(wgradVFloats(xm.cs, tiles)), m = arena.take(wgradMFloats(cout, tiles));
  const du = arena.take(wgradDUFloats(xm.cs, cout));
  const grad = arena.take(9 * cin * cout), biasGrad = arena.take(roundUp(cout, 4));
  const scratchFloats = 2 * 144;
  const scratch = arena.take(scratchFloats * p.threads);
  const common = { cin: xm.cs, vchannels: xm.cs, cout, weight: v, bias: m, tiles };
  const records: LayerRecord[] = [];
  strips.forEach((strip, i) => {
    records.push({
      ...common,
      kind: "filter grad: transforms",
      op: OP.wgradTransform,
      in: strip.ptr,
      ics: xm.cs,
      h: xm.hp,
      w: strip.w,
      out: dys[i].ptr,
      ocs: dym.cs,
      t0: i * perStrip,
      gscale: 1,
      scratch,
      scratchFloats,
    });
  });
  records.push({ ...common, kind: "filter grad: products", op: OP.wgradGemm, out: du });
  records.push({
    ...common,
    kind: "filter grad: G'dUG",
    op: OP.wgradFinal,
    in: du,
    realCin: cin,
    grad,
    biasGrad,
    scratch,
    scratchFloats,
  });
  arena.run(p, records, (f) => {
    copyIn(backend.typedArrayFromHeap(x), x.shape, f, xm);
    copyIn(backend.typedArrayFromHeap(dy), dy.shape, f, dym);
  });
  const out = backend.makeOutput([3, 3, cin, cout], "float32");
  backend.typedArrayFromHeap(out).set(p.floats().subarray(grad / 4, grad / 4 + 9 * cin * cout));
  return out;
}
