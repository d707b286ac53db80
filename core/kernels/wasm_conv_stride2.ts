/**
 * 4x4 stride-2 convolutions (the discriminator's downsampling convs) and their gradients on our CPU
 * kernels, as 2x2 stride-1 convolutions of four times the channels:
 * - forward: pixel (m, q) of the output reads input rows 2m + a and columns 2q + b, a, b < 4, so
 *   it is a 2x2 conv (taps at +0, +1) of the space-to-depth input S[m, q, (a', b', c)] =
 *   x[2m + a', 2q + b', c] (a', b' < 2) with F[p, r, (a', b', c)] = W[2p + a', 2r + b', c];
 * - input gradient: padded pixel (2m + a, 2q + b) of x only meets taps a + 2t, b + 2u, so its four
 *   phases are one 2x2 conv (taps at -1, +0) of dy with 4·cin outputs, interleaved after, as
 *   train/wasm_conv_grads.ts does on XNNPACK;
 * - filter gradient: dF[p, r] = Σ S[m + p, q + r] dy[m, q] is taps (1 + p, 1 + r) of the 3x3
 *   "same" conv's filter gradient of S and dy, which the Winograd domain computes for all nine taps
 *   in fewer products (36 per 4x4 tile and channel pair) than direct products take for four (64).
 * The 2x2 convs run on the direct kernel (the 4x4 conv's products, none wasted: XNNPACK ran these
 * at 5-20 GFLOP/s here, most of it packing filters it had not seen), or on maps of 32x32 and more
 * in Winograd F(4x4, 3x3) as 3x3 convs with zero taps. Filters are rearranged here in JavaScript,
 * once per content (the packed filters' cache).
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import {
  Arena,
  copyIn,
  copyOut,
  kernels,
  type Maps,
  withPackedFilter,
  writeBias,
} from "./wasm_conv_runtime.ts";
import { ACT, type LayerRecord, NR, OP, roundUp, TAPS } from "./wasm_layer.ts";
import { type WasmBackend, winogradConv, winogradFilterGrad } from "./wasm_conv_winograd.ts";

type Info = tf.TensorInfo;
/** What tfjs's computeConv2DInfo says of the conv that these read. */
export interface Stride2Info {
  inHeight: number;
  inWidth: number;
  outHeight: number;
  outWidth: number;
  padInfo: { top: number; left: number };
}

/** The 4x4 stride-2 conv of x [n, h, w, cin] by filter [4, 4, cin, cout], + bias, activation. */
export function conv4x4s2(
  backend: WasmBackend,
  x: Info,
  filter: Info,
  o: { info: Stride2Info; bias?: Info; act: number },
): Info {
  const [n, , , ci] = x.shape, co = filter.shape[3];
  const { outHeight: oh, outWidth: ow } = o.info;
  const result = (f: Float32Array, out: Maps) => {
    const y = backend.makeOutput([n, oh, ow, co], "float32");
    copyOut(f, out, [n, oh, ow, co], backend.typedArrayFromHeap(y));
    return y;
  };
  if (winograd(oh, ow)) {
    return winogradConv(backend, {
      n,
      h: oh + 1,
      w: ow + 1,
      cin: 4 * ci,
      cout: co,
      filter: asThreeByThree(backend, filter),
      inputGrad: false,
      act: o.act,
      bias: o.bias,
      fill: (f, s) => spaceToDepth(backend.typedArrayFromHeap(x), x.shape, o.info, f, s),
      result,
    });
  }
  const packed = 4 * 4 * ci * roundUp(co, NR);
  return run(backend, filter, "4x4/2 forward", packed, (arena) => {
    // one row and column more than the output: the taps at +1 read them
    const s = arena.maps(n, oh + 1, ow + 1, 4 * ci, { direct: true });
    const out = arena.maps(n, oh + 1, ow + 1, co, { cs: co, direct: true });
    return {
      input: s,
      output: out,
      cin: 4 * ci,
      cout: co,
      taps: TAPS.ahead2x2,
      act: o.act,
      pack: (w, dst, at) => packForward(w, ci, co, dst, at),
      fill: (f) => spaceToDepth(backend.typedArrayFromHeap(x), x.shape, o.info, f, s),
      bias: o.bias && backend.typedArrayFromHeap(o.bias),
      result: (f) => result(f, out),
    };
  });
}

/** The input gradient [n, h, w, cin] of the 4x4 stride-2 conv by filter from dy [n, oh, ow, cout]. */
export function conv4x4s2InputGrad(
  backend: WasmBackend,
  dy: Info,
  filter: Info,
  o: { info: Stride2Info },
): Info {
  const [n, oh, ow, co] = dy.shape, ci = filter.shape[2];
  const { inHeight: h, inWidth: w, padInfo: { top, left } } = o.info;
  // phase pixel (m, q) holds padded pixels 2m + a, 2q + b up to the input's last row and column
  const mh = Math.ceil((top + h) / 2), mw = Math.ceil((left + w) / 2);
  const result = (f: Float32Array, phases: Maps) => {
    const dx = backend.makeOutput([n, h, w, ci], "float32");
    interleave(f, phases, [n, h, w, ci], [top, left], backend.typedArrayFromHeap(dx));
    return dx;
  };
  if (winograd(mh, mw)) {
    return winogradConv(backend, {
      n,
      h: mh,
      w: mw,
      cin: co,
      cout: 4 * ci,
      filter: asThreeByThree(backend, filter),
      inputGrad: true,
      act: ACT.none,
      fill: (f, d) => copyIn(backend.typedArrayFromHeap(dy), dy.shape, f, d),
      result,
    });
  }
  const packed = 4 * co * roundUp(4 * ci, NR);
  return run(backend, filter, "4x4/2 input grad", packed, (arena) => {
    const d = arena.maps(n, mh, mw, co, { direct: true });
    const phases = arena.maps(n, mh, mw, 4 * ci, { direct: true });
    return {
      input: d,
      output: phases,
      cin: co,
      cout: 4 * ci,
      taps: TAPS.behind2x2,
      act: ACT.none,
      pack: (wt, dst, at) => packPhases(wt, ci, co, dst, at),
      fill: (f) => copyIn(backend.typedArrayFromHeap(dy), [n, oh, ow, co], f, d),
      result: (f) => result(f, phases),
    };
  });
}

/** dW [4, 4, cin, cout] of the 4x4 stride-2 conv of x whose output's gradient is dy. */
export function conv4x4s2FilterGrad(backend: WasmBackend, x: Info, dy: Info, o: { info: Stride2Info }): Info {
  const [n, , , ci] = x.shape, co = dy.shape[3];
  const { outHeight: oh, outWidth: ow } = o.info;
  const { pool, filters } = kernels(), arena = new Arena(filters.top);
  // S's and dy's maps alike: the same conv's geometry
  const s = arena.maps(n, oh + 1, ow + 1, 4 * ci), d = arena.maps(n, oh + 1, ow + 1, co);
  const k = 4 * ci;
  const grad = winogradFilterGrad(pool, arena, { x: s, dy: d, cin: k, cout: co }, (f) => {
    spaceToDepth(backend.typedArrayFromHeap(x), x.shape, o.info, f, s);
    copyIn(backend.typedArrayFromHeap(dy), dy.shape, f, d);
  });
  const out = backend.makeOutput([4, 4, ci, co], "float32");
  const dw = backend.typedArrayFromHeap(out), f = pool.floats();
  // dW[2p + a, 2r + b, c] = dK[1 + p, 1 + r, (a, b, c)]: a block of cin x cout values per tap
  for (let kh = 0; kh < 4; kh++) {
    for (let kw = 0; kw < 4; kw++) {
      const from = grad + embeddedRow(kh, kw, ci) * co;
      dw.set(f.subarray(from, from + ci * co), (kh * 4 + kw) * ci * co);
    }
  }
  return out;
}

/**
 * Whether a 2x2 conv producing an h x w map runs in Winograd F(4x4, 3x3) as a 3x3 one with zero taps:
 * 36 products per 4x4 tile and channel pair against the direct kernel's 64, for large maps; small
 * ones lose it to the rounding of their sides to 4 and to streaming 9x the filter's size.
 */
function winograd(h: number, w: number): boolean {
  return h >= WINOGRAD_MIN_SIDE && w >= WINOGRAD_MIN_SIDE;
}
const WINOGRAD_MIN_SIDE = 32;

/**
 * The 4x4 filter as the 3x3 one of the space-to-depth forward: E[1 + p, 1 + r, (a, b, c)] =
 * W[2p + a, 2r + b, c], zero at row and column 0. Its input-gradient packing (flipped, channels
 * swapped) is the phases' filter: E[2 - p, 2 - r] = W[2(1 - p) + a, 2(1 - r) + b].
 */
function asThreeByThree(backend: WasmBackend, filter: Info) {
  const [, , ci, co] = filter.shape, k4 = 4 * ci;
  return {
    tensor: filter,
    kind: "4x4/2 as 3x3",
    fin: k4,
    fout: co,
    write(dst: Float32Array, at: number) {
      const w = backend.typedArrayFromHeap(filter);
      dst.fill(0, at, at + 9 * k4 * co);
      for (let kh = 0; kh < 4; kh++) {
        for (let kw = 0; kw < 4; kw++) {
          const row = embeddedRow(kh, kw, ci), src = (kh * 4 + kw) * ci * co;
          dst.set(w.subarray(src, src + ci * co), at + row * co);
        }
      }
    },
  };
}

/**
 * Where tap (kh, kw) of the 4x4 filter's input channel 0 sits in the 3x3 one of the space-to-depth
 * input ([3][3][4·cin] rows of cout values): tap (1 + kh/2, 1 + kw/2), channel ((kh%2)·2 + kw%2)·cin.
 */
function embeddedRow(kh: number, kw: number, ci: number): number {
  return ((1 + (kh >> 1)) * 3 + 1 + (kw >> 1)) * 4 * ci + ((kh & 1) * 2 + (kw & 1)) * ci;
}

interface Job {
  input: Maps;
  output: Maps;
  cin: number;
  cout: number;
  taps: number;
  act: number;
  /** Writes the packed filter [cout/8][2][2][cin][8] from the HWIO one at dst[at]. */
  pack(w: Float32Array, dst: Float32Array, at: number): void;
  /** Writes the input maps. */
  fill(f: Float32Array): void;
  bias?: Float32Array;
  /** Makes the output from the kernels' memory. */
  result(f: Float32Array): Info;
}

/** Lays out a job's maps after its packed filter (kept as `kind`), runs the direct conv on them. */
function run(
  backend: WasmBackend,
  filter: Info,
  kind: string,
  packedFloats: number,
  make: (arena: Arena) => Job,
): Info {
  const values = () => backend.typedArrayFromHeap(filter);
  const { pool, arena, weight, pack } = withPackedFilter(filter, values, kind, packedFloats);
  const job = make(arena);
  const bias = arena.take(roundUp(job.cout, NR));
  const outputs = job.output.strips();
  const records: LayerRecord[] = job.input.strips().map((strip, i) => ({
    kind: "conv",
    op: OP.conv,
    in: strip.ptr,
    ics: job.input.cs,
    cin: job.cin,
    h: job.input.hp,
    w: strip.w,
    weight,
    bias,
    out: outputs[i].ptr,
    ocs: job.output.cs,
    cout: job.cout,
    lrelu: job.act,
    s0: 1,
    taps: job.taps,
  }));
  arena.run(pool, records, (f) => {
    if (pack) job.pack(values(), f, weight / 4);
    job.fill(f);
    writeBias(f, bias, job.cout, job.bias);
  });
  return job.result(pool.floats());
}

/** F[p, r, (a, b, c), o] = W[2p + a, 2r + b, c, o] as [cout/8][2][2][4·cin][8]. */
function packForward(w: Float32Array, ci: number, co: number, dst: Float32Array, at: number): void {
  const blocks = roundUp(co, NR) / NR, k4 = 4 * ci;
  dst.fill(0, at, at + blocks * 4 * k4 * NR);
  for (let kh = 0; kh < 4; kh++) {
    for (let kw = 0; kw < 4; kw++) {
      const tap = (kh >> 1) * 2 + (kw >> 1), k0 = ((kh & 1) * 2 + (kw & 1)) * ci;
      for (let c = 0; c < ci; c++) {
        const src = ((kh * 4 + kw) * ci + c) * co;
        for (let o = 0; o < co; o++) {
          dst[at + (((o >> 3) * 4 + tap) * k4 + k0 + c) * NR + (o & 7)] = w[src + o];
        }
      }
    }
  }
}

/**
 * The phases' filter P[p, r, o, (a, b, c)] = W[a + 2(1 - p), b + 2(1 - r), c, o] (taps at -1, +0
 * of the phase pixel) as [4·cin/8][2][2][cout][8].
 */
function packPhases(w: Float32Array, ci: number, co: number, dst: Float32Array, at: number): void {
  const k4 = 4 * ci;
  for (let kh = 0; kh < 4; kh++) {
    for (let kw = 0; kw < 4; kw++) {
      const tap = (1 - (kh >> 1)) * 2 + (1 - (kw >> 1)), j0 = ((kh & 1) * 2 + (kw & 1)) * ci;
      for (let c = 0; c < ci; c++) {
        const src = ((kh * 4 + kw) * ci + c) * co, j = j0 + c;
        const base = at + ((j >> 3) * 4 + tap) * co * NR + (j & 7);
        for (let o = 0; o < co; o++) dst[base + o * NR] = w[src + o];
      }
    }
  }
  // output channels past 4·cin in the last block (none when cin is even)
  for (let j = k4; j < roundUp(k4, NR); j++) {
    for (let tap = 0; tap < 4; tap++) {
      const base = at + ((j >> 3) * 4 + tap) * co * NR + (j & 7);
      for (let o = 0; o < co; o++) dst[base + o * NR] = 0;
    }
  }
}

/** Writes every float of `s`: S[m, q, (a, b, c)] = x[2m + a - top, 2q + b - left, c], zero outside x. */
function spaceToDepth(x: Float32Array, shape: number[], info: Stride2Info, f: Float32Array, s: Maps): void {
  const [n, h, w, c] = shape, { top, left } = info.padInfo;
  f.fill(0, s.ptr / 4, s.ptr / 4 + s.floats);
  const rows = s.hp, cols = s.wp;
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < rows; m++) {
      for (let a = 0; a < 2; a++) {
        const y = 2 * m + a - top;
        if (y < 0 || y >= h) continue;
        for (let q = 0; q < cols; q++) {
          const x0 = 2 * q - left, dst = s.pixel(i, m, q) + 2 * a * c;
          const from = Math.max(x0, 0), to = Math.min(x0 + 2, w);
          if (from >= to) continue;
          const src = ((i * h + y) * w + from) * c;
          f.set(x.subarray(src, src + (to - from) * c), dst + (from - x0) * c);
        }
      }
    }
  }
}

/** dx [n, h, w, c] from the phases: padded pixel (2m + a, 2q + b) is phase (a, b) of pixel (m, q). */
function interleave(
  f: Float32Array,
  phases: Maps,
  shape: number[],
  offset: number[],
  dx: Float32Array,
): void {
  const [n, h, w, c] = shape;
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < h; y++) {
      const py = y + offset[0], m = py >> 1, a = py & 1;
      for (let x = 0; x < w; x++) {
        const px = x + offset[1], from = phases.pixel(i, m, px >> 1) + ((a * 2 + (px & 1)) * c);
        dx.set(f.subarray(from, from + c), ((i * h + y) * w + x) * c);
      }
    }
  }
}
