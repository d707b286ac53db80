/**
 * tfjs-wasm convolutions in rrdb_cpu.c's Winograd F(4x4, 3x3) (wasm_conv.ts): a 3x3 "same" conv
 * or its input gradient (the conv with the flipped, transposed filter), and the filter gradient in
 * the Winograd domain, as the training step computes G's.
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import {
  align,
  type LayerRecord,
  NR,
  OP,
  PACK_INPUT_GRAD,
  roundUp,
  WGRAD_SCRATCH_FLOATS,
  wgradDUFloats,
  wgradMFloats,
  wgradVFloats,
  winogradScratchFloats,
} from "./wasm_layer.ts";
import {
  Arena,
  copyIn,
  copyOut,
  kernels,
  type Maps,
  withPackedFilter,
  writeBias,
} from "./wasm_conv_runtime.ts";
import type { KernelPool } from "./wasm_pool.ts";

type Info = tf.TensorInfo;
/** The wasm backend's calls the convolutions use. */
export interface WasmBackend {
  makeOutput(shape: number[], dtype: "float32"): Info;
  typedArrayFromHeap(info: Info): Float32Array;
}

/**
 * The conv of x [n, h, w, cin] by filter [3, 3, cin, cout] (+ bias, activation), or with
 * `inputGrad` the input gradient from dy [n, h, w, cout] (x's role): the conv by the flipped filter
 * with its channels swapped.
 */
export function convolve3x3(
  backend: WasmBackend,
  x: Info,
  filter: Info,
  o: { bias?: Info; act: number; inputGrad: boolean },
): Info {
  const [n, h, w, c] = x.shape;
  const [, , fin, fout] = filter.shape;
  const cout = o.inputGrad ? fin : fout;
  return winogradConv(backend, {
    n,
    h,
    w,
    cin: c,
    cout,
    filter: {
      tensor: filter,
      kind: "3x3",
      fin,
      fout,
      write: (dst, at) => dst.set(backend.typedArrayFromHeap(filter), at),
    },
    inputGrad: o.inputGrad,
    act: o.act,
    bias: o.bias,
    fill: (f, input) => copyIn(backend.typedArrayFromHeap(x), x.shape, f, input),
    result: (f, output) => {
      const out = backend.makeOutput([n, h, w, cout], "float32");
      copyOut(f, output, [n, h, w, cout], backend.typedArrayFromHeap(out));
      return out;
    },
  });
}

/** A Winograd F(4x4, 3x3) conv of n maps of h x w pixels (see {@link winogradConv}). */
export interface WinogradJob {
  n: number;
  h: number;
  w: number;
  /** Channels of the input maps and of the output. */
  cin: number;
  cout: number;
  /**
   * The filter, HWIO [3][3][fin][fout] as `write` puts it at dst[at], packed once per content of
   * `tensor` and `kind` (with `inputGrad`, flipped with its channels swapped: fin is cout).
   */
  filter: {
    tensor: Info;
    kind: string;
    fin: number;
    fout: number;
    write(dst: Float32Array, at: number): void;
  };
  inputGrad: boolean;
  act: number;
  bias?: Info;
  /** Writes every float of the input maps. */
  fill(f: Float32Array, input: Maps): void;
  /** Makes the result from the output maps (their pixels `cout` floats apart). */
  result(f: Float32Array, output: Maps): Info;
}

/** Runs a {@link WinogradJob} on the kernels' threads. */
export function winogradConv(backend: WasmBackend, job: WinogradJob): Info {
  const { n, h, w, cin, cout, filter } = job;
  const kind = `${filter.kind} ${job.inputGrad ? "input grad" : "forward"}`;
  const values = () => backend.typedArrayFromHeap(filter.tensor);
  const uFloats = 36 * roundUp(cin, 4) * roundUp(cout, NR);
  const { pool: p, arena, weight: u, pack } = withPackedFilter(filter.tensor, values, kind, uFloats);
  // the output's pixels are cout floats apart, so that it is copied out row by row
  const input = arena.maps(n, h, w, cin), output = arena.maps(n, h, w, cout, { cs: cout });
  const weights = pack ? arena.take(9 * filter.fin * filter.fout) : 0;
  const bias = arena.take(roundUp(cout, NR));
  const scratchFloats = align(4 * winogradScratchFloats(input.pw, input.cs)) / 4;
  const scratch = arena.take(scratchFloats * p.threads);
  const records: LayerRecord[] = [];
  if (pack) {
    records.push({
      kind: "pack",
      op: OP.pack,
      in: weights,
      realCin: filter.fin,
      ics: filter.fout,
      cin: input.cs,
      cout,
      out: u,
      ...(job.inputGrad ? { lrelu: PACK_INPUT_GRAD } : {}),
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
      lrelu: job.act,
      s0: 1,
      scratch,
      scratchFloats,
    });
  });
  arena.run(p, records, (f) => {
    job.fill(f, input);
    if (pack) filter.write(f, weights / 4);
    writeBias(f, bias, cout, job.bias && backend.typedArrayFromHeap(job.bias));
  });
  return job.result(p.floats(), output);
}

/** dW [3, 3, cin, cout] of the 3x3 "same" conv of x [n, h, w, cin] whose output's gradient is dy. */
export function filterGrad3x3(backend: WasmBackend, x: Info, dy: Info): Info {
  const [n, h, w, cin] = x.shape, cout = dy.shape[3];
  const { pool, filters } = kernels(), arena = new Arena(filters.top);
  const xm = arena.maps(n, h, w, cin), dym = arena.maps(n, h, w, cout);
  const grad = winogradFilterGrad(pool, arena, { x: xm, dy: dym, cin, cout }, (f) => {
    copyIn(backend.typedArrayFromHeap(x), x.shape, f, xm);
    copyIn(backend.typedArrayFromHeap(dy), dy.shape, f, dym);
  });
  const out = backend.makeOutput([3, 3, cin, cout], "float32");
  backend.typedArrayFromHeap(out).set(pool.floats().subarray(grad, grad + 9 * cin * cout));
  return out;
}

/**
 * Runs the filter gradient dW [3][3][cin][cout] of the 3x3 "same" conv whose input maps are `x`
 * and output-gradient maps `dy` (both laid out by `arena`, written by `fill`); returns dW's float
 * index in the kernels' memory.
 */
export function winogradFilterGrad(
  pool: KernelPool,
  arena: Arena,
  maps: { x: Maps; dy: Maps; cin: number; cout: number },
  fill: (f: Float32Array) => void,
): number {
  const { x: xm, dy: dym, cin, cout } = maps;
  const strips = xm.strips(), dys = dym.strips();
  const perStrip = (xm.hp / 4) * (strips[0].w / 4), tiles = strips.length * perStrip;
  const v = arena.take(wgradVFloats(xm.cs, tiles)), m = arena.take(wgradMFloats(cout, tiles));
  const du = arena.take(wgradDUFloats(xm.cs, cout));
  const grad = arena.take(9 * cin * cout), biasGrad = arena.take(roundUp(cout, 4));
  const scratchFloats = WGRAD_SCRATCH_FLOATS;
  const scratch = arena.take(scratchFloats * pool.threads);
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
  arena.run(pool, records, fill);
  return grad / 4;
}
