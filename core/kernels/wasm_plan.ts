/**
 * RRDBNet inference on the CPU kernels (wasm/rrdb_cpu.c through wasm_pool.ts): the weights packed
 * once into the shared memory, the feature maps laid out per input shape, and every forward one
 * list of layers that the pool's threads run together. Fused as the WebGPU plan is: bias and
 * LeakyReLU in the convolution, the residual scalings (0.2, and 0.04 + 0.2 for a block's last
 * dense block) in its epilogue, the dense blocks' concatenations as channel slices of one buffer,
 * the upsampled tail (two maps at 4x the resolution, most of a patch's memory) in bands of rows.
 * Weights are read when the plan is made, from a tfjs net or straight from a state dict (then tfjs
 * never holds a copy: 67 MB for x4plus): make a new plan after changing the net's parameters.
 * @module
 */
import {
  checkRRDBNetWeights,
  RRDBNet,
  type RRDBNetConfig,
  type RRDBNetWeights,
  unshuffleFactor,
  upsamplings,
} from "../rrdbnet_arch.ts";
import { numel, type TensorData } from "../state_dict.ts";
import { oihwToHwio } from "../tf_layout.ts";
import type { LazyTensorData } from "../weights/model_file.ts";
import { KernelPool, type KernelPoolOptions } from "./wasm_pool.ts";
import type { RunRequest } from "./wasm_barrier.ts";
import {
  align,
  ARENA_BASE,
  type LayerRecord,
  NR,
  OP,
  RECORD_BYTES,
  roundUp,
  winogradScratchFloats,
  writeRecords,
} from "./wasm_layer.ts";

/** Bytes of one layer record (rrdb_cpu.c's `Layer`). */
const LAYER_BYTES = RECORD_BYTES;
const OP_CONV = OP.conv, OP_UPSAMPLE = OP.upsample;
/** LR rows a tail band computes beyond those it keeps, on each side that is no image edge. */
const TAIL_HALO = 1;
/**
 * LR rows a band keeps at least, whatever the memory: the halo's recomputation stays within an
 * eighth of the tail's arithmetic (an x8 net's tail is a quarter of its forward, an x4's 8%).
 */
const TAIL_MIN_KEPT = 16;
/**
 * Default memory for the upsampled tail's band maps (see {@link WasmPlanOptions.tailBandBytes}): at
 * the endpoint's 176² patches 32 MiB took 31 MiB less than 64 in the same time (about 18 LR rows a
 * band, 2 of them recomputed); larger patches keep TAIL_MIN_KEPT rows whatever it is.
 */
export const TAIL_BAND_BYTES = 32 * 2 ** 20;

/** How often (ms) a run reports its progress where asked (see {@link RRDBNetPlanWasm.run}). */
export const PROGRESS_MS = 250;

/** Options of {@link RRDBNetPlanWasm.run}. */
export interface WasmRunOptions {
  /** Aborting stops the run between layers. */
  signal?: AbortSignal;
  /** Gets the share of the batch's work done (0 to 1, by multiply-adds) while the threads run. */
  onProgress?: (share: number) => void;
  /** How often onProgress is called (default {@link PROGRESS_MS}). */
  progressMs?: number;
}

/** Options for {@link RRDBNetPlanWasm}. */
export interface WasmPlanOptions extends KernelPoolOptions {
  /**
   * Memory for the upsampled tail's maps (conv_up1 on): the tail runs in bands of rows that fit it,
   * recomputing TAIL_HALO LR rows on each inner side of a band (default {@link TAIL_BAND_BYTES}; a
   * patch whose tail fits runs whole).
   */
  tailBandBytes?: number;
  /**
   * Keep the convolutions' weights as they are (HWIO) and make each one's Winograd filters just
   * before it, on every run, instead of once: 4x less memory for them (x4plus: 67 instead of 268
   * MB) for some time per patch (see the README). For hosts short of memory (Deno Deploy).
   */
  packEachRun?: boolean;
}

interface PackedConv {
  weight: number;
  bias: number;
  cin: number;
  cout: number;
  /** Packed for rrdb_cpu.c's Winograd F(4x4, 3x3) (inputs in multiples of 4 channels), else direct. */
  winograd: boolean;
  /** With packEachRun, a Winograd conv's HWIO weights (`weight` is then the shared filter scratch). */
  hwio?: number;
}

/** A feature map: padded origin (byte offset) of its first channel, pixel stride in floats. */
interface Map2D {
  ptr: number;
  cs: number;
  h: number;
  w: number;
}

interface Conv {
  op: typeof OP_CONV;
  name: string;
  input: Map2D;
  output: Map2D;
  lrelu?: boolean;
  s0?: number;
  r1?: [Map2D, number];
  r2?: [Map2D, number];
}

interface Upsample {
  op: typeof OP_UPSAMPLE;
  input: Map2D;
  output: Map2D;
  channels: number;
}

interface Layout {
  key: string;
  h: number;
  w: number;
  input: Map2D;
  output: Map2D;
  layers: number;
  count: number;
  /** Each record's kind, for profile(). */
  kinds: string[];
  /** The share of the forward's work done once record k has run (multiply-adds; run()'s progress). */
  doneAfter: Float64Array;
}

/** Time per kind of layer (see {@link RRDBNetPlanWasm.profile}). */
export interface PlanProfile {
  kernels: { name: string; ms: number; count: number }[];
  all_ms: number;
}

/** RRDBNet's forward on the CPU kernels, for inputs of any shape. Dispose it: it holds threads. */
export class RRDBNetPlanWasm {
  readonly config: RRDBNetConfig;
  private readonly pool: KernelPool;
  private readonly convs = new Map<string, PackedConv>();
  private readonly weightsEnd: number;
  private layout?: Layout;
  private queue: Promise<void>;
  /** The Winograd filters' packing, which every run waits for (and fails with, if it failed). */
  private readonly packed: Promise<void>;

  private readonly tailBandBytes: number;
  private readonly packEachRun: boolean;

  constructor(net: RRDBNet | RRDBNetWeights, options: WasmPlanOptions = {}) {
    if (!(net instanceof RRDBNet)) checkRRDBNetWeights(net.config, net.weights);
    this.config = net.config;
    this.tailBandBytes = options.tailBandBytes ?? TAIL_BAND_BYTES;
    this.packEachRun = options.packEachRun ?? false;
    this.pool = new KernelPool(options);
    try {
      const { end, winograd } = this.pack(net);
      this.weightsEnd = end;
      // the Winograd filters are made on the pool's threads, in the background: runs wait for them
      this.packed = winograd.count ? this.pool.run(winograd) : Promise.resolve();
      this.queue = this.packed.catch(() => {});
    } catch (e) {
      this.pool.dispose();
      throw e;
    }
  }

  /**
   * Packs every convolution's weights and bias from ARENA_BASE on; returns where they end, and the
   * layer records that turn the Winograd convolutions' HWIO weights, staged past that end (where
   * the maps go later), into U = G g Gᵀ: rrdb_cpu.c's OP_PACK, the training step's, vectorised and
   * on every thread (in JavaScript this took 330-490 ms of x4plus's start; the kernels compute U in
   * f32, as the training step always has). With packEachRun the HWIO weights stay, after a scratch
   * for the largest conv's U, and no records: each run's list packs before each conv.
   */
  private pack(net: RRDBNet | RRDBNetWeights): { end: number; winograd: RunRequest } {
    const weights = hwioConvs(net);
    const packEachRun = this.packEachRun;
    let bytes = 0, staged = 0, scratch = 0;
    for (const { shape } of weights) {
      const [, , cin, cout] = shape;
      const winograd = cin % 4 === 0, u = 4 * 36 * cin * roundUp(cout, NR);
      bytes += 4 * roundUp(cout, NR) + (!winograd ? 4 * 9 * cin * roundUp(cout, NR) : packEachRun ? 0 : u);
      if (winograd) staged += 4 * 9 * cin * cout;
      if (winograd) scratch = Math.max(scratch, u);
    }
    // packing each run, the HWIO weights stay and one scratch takes each conv's filters in turn
    const filters = packEachRun ? align(ARENA_BASE + bytes) : 0, hwioAt = align(filters + scratch);
    const end = packEachRun ? align(hwioAt + staged) : align(ARENA_BASE + bytes);
    let at = ARENA_BASE, stage = packEachRun ? hwioAt : end;
    const records: LayerRecord[] = [];
    this.pool.reserve(packEachRun ? end : end + staged);
    const f = this.pool.floats();
    for (const { conv, shape, weight, bias } of weights) {
      const [kh, kw, cin, cout] = shape;
      if (kh !== 3 || kw !== 3) {
        throw new Error(`${conv}.weight: a ${kh}x${kw} filter, the CPU kernels want 3x3`);
      }
      const winograd = cin % 4 === 0;
      const size = !winograd ? 9 * cin * roundUp(cout, NR) : packEachRun ? 0 : 36 * cin * roundUp(cout, NR);
      const packed: PackedConv = {
        weight: winograd && packEachRun ? filters : at,
        bias: at + 4 * size,
        cin,
        cout,
        winograd,
      };
      const hwio = weight();
      if (winograd) {
        f.set(hwio, stage / 4);
        if (packEachRun) packed.hwio = stage;
        else records.push(packRecord(packed, stage));
        stage += 4 * hwio.length;
      } else packFilter(hwio, cin, cout, f, packed.weight / 4);
      f.set(bias(), packed.bias / 4);
      this.convs.set(conv, packed);
      at = packed.bias + 4 * roundUp(cout, NR);
    }
    // the maps go where the weights were staged, unless they stay
    const recordsAt = align(packEachRun ? end : end + staged);
    this.pool.reserve(recordsAt + records.length * LAYER_BYTES);
    writeRecords(this.pool.memory, recordsAt, records);
    return { end, winograd: { layers: recordsAt, count: records.length, stride: LAYER_BYTES } };
  }

  /** Threads the forward runs on. */
  get threads(): number {
    return this.pool.threads;
  }

  /**
   * The net on a batch NHWC [n, h, w, numInCh] (sides divisible by the pixel-unshuffle of scales 2
   * and 1): [n, h·s, w·s, numOutCh], not clamped. Aborting stops between layers. `onProgress` gets
   * the share of the batch's work done (0 to 1, by multiply-adds) every `progressMs` (default
   * {@link PROGRESS_MS}) while the threads run; not after the end, nor where they run on the calling
   * thread.
   */
  run(
    x: Float32Array,
    shape: number[],
    options: WasmRunOptions = {},
  ): Promise<Float32Array> {
    return this.serialized(() => this.runNow(x, shape, options));
  }

  /** Concurrent callers (the edge endpoint's requests) take turns: the maps are shared. */
  private serialized<T>(work: () => Promise<T>): Promise<T> {
    const result = this.queue.then(work);
    this.queue = result.then(() => {}, () => {});
    return result;
  }

  private async runNow(
    x: Float32Array,
    shape: number[],
    options: WasmRunOptions,
  ): Promise<Float32Array> {
    const { signal, onProgress } = options;
    await this.packed;
    const [n, hh, ww, c] = shape;
    const { numInCh, numOutCh } = this.config;
    const u = unshuffleFactor(this.config);
    if (c !== numInCh) throw new Error(`RRDBNetPlanWasm: ${c} channels, the net wants ${numInCh}`);
    if (hh % u || ww % u) throw new Error(`RRDBNetPlanWasm: sides must be divisible by ${u}`);
    if (x.length !== n * hh * ww * c) throw new Error(`RRDBNetPlanWasm: ${x.length} values for [${shape}]`);
    const layout = this.layoutFor(hh / u, ww / u);
    const { input, output } = layout;
    const H = output.h, W = output.w;
    const result = new Float32Array(n * H * W * numOutCh);
    for (let b = 0; b < n; b++) {
      let f = this.pool.floats();
      // pixel (Y, X) channel k goes to LR pixel (Y/u, X/u), channel k·u² + (Y%u)·u + X%u (BasicSR)
      const src = x.subarray(b * hh * ww * c);
      for (let Y = 0; Y < hh; Y++) {
        for (let X = 0; X < ww; X++) {
          const dst = input.ptr / 4 + (((Y / u | 0) + 1) * (input.w + 2) + (X / u | 0) + 1) * input.cs;
          const sub = (Y % u) * u + (X % u);
          for (let k = 0; k < c; k++) f[dst + k * u * u + sub] = src[(Y * ww + X) * c + k];
        }
      }
      const done = () => layout.doneAfter[this.pool.layersDone - 1] ?? 0;
      const timer = onProgress &&
        setInterval(() => onProgress((b + done()) / n), options.progressMs ?? PROGRESS_MS);
      try {
        await this.pool.run({ layers: layout.layers, count: layout.count, stride: LAYER_BYTES }, signal);
      } finally {
        clearInterval(timer);
      }
      f = this.pool.floats();
      const out = result.subarray(b * H * W * numOutCh);
      for (let Y = 0; Y < H; Y++) {
        const row = output.ptr / 4 + ((Y + 1) * (W + 2) + 1) * output.cs;
        out.set(f.subarray(row, row + W * numOutCh), Y * W * numOutCh);
      }
    }
    return result;
  }

  /**
   * Time per kind of layer for the last input shape run, each layer run on its own (so each pays
   * the threads' start and join), and all_ms: the whole list run at once. Values are garbage after.
   */
  profile(): Promise<PlanProfile> {
    return this.serialized(() => this.profileNow());
  }

  private async profileNow(): Promise<PlanProfile> {
    const layout = this.layout;
    if (!layout) throw new Error("RRDBNetPlanWasm: profile() after a run");
    const kinds = new Map<string, { ms: number; count: number }>();
    for (let i = 0; i < layout.count; i++) {
      const t0 = performance.now();
      await this.pool.run({ layers: layout.layers + i * LAYER_BYTES, count: 1, stride: LAYER_BYTES });
      const k = kinds.get(layout.kinds[i]) ?? { ms: 0, count: 0 };
      kinds.set(layout.kinds[i], { ms: k.ms + performance.now() - t0, count: k.count + 1 });
    }
    const t0 = performance.now();
    await this.pool.run({ layers: layout.layers, count: layout.count, stride: LAYER_BYTES });
    const all_ms = performance.now() - t0;
    return { kernels: [...kinds].map(([name, k]) => ({ name, ...k })).sort((a, b) => b.ms - a.ms), all_ms };
  }

  /** Stops the threads. */
  dispose(): void {
    this.pool.dispose();
  }

  /**
   * LR rows per band of the upsampled tail for an h x w LR map: h where the tail fits in
   * tailBandBytes (or has no upsampling), else what fits, but at least TAIL_MIN_KEPT rows kept.
   */
  private tailBandRows(h: number, w: number): number {
    const U = upsamplings(this.config), nf = this.config.numFeat;
    if (U === 0) return h;
    // per LR row: each level's two maps, 2^k rows of (2^k·w + 2) pixels
    let perRow = 0;
    for (let k = 1; k <= U; k++) perRow += 2 * 2 ** k * (2 ** k * w + 2) * nf * 4;
    const fit = Math.floor(this.tailBandBytes / perRow);
    // even, so that every level's band is a multiple of 4 rows: no Winograd tile reads past a view
    const n = 2 * Math.floor(Math.max(fit, 2 * TAIL_HALO + TAIL_MIN_KEPT) / 2);
    return Math.min(h, n);
  }

  /** Buffers and layer records for an LR size (after unshuffle); the last one is kept. */
  private layoutFor(h: number, w: number): Layout {
    const key = `${h}x${w}`;
    if (this.layout?.key === key) return this.layout;
    const { numFeat: nf, numGrowCh: gc, numBlock, numOutCh } = this.config;
    const cin = this.convs.get("conv_first")!.cin;
    const U = upsamplings(this.config), S = 2 ** U;
    let at = this.weightsEnd;
    // four spare zero rows past the border: Winograd's last tiles read them when a side is no multiple
    // of 4, and the wrap from the last row's end into the next
    const map = (c: number, mh: number, mw: number): Map2D => {
      const m = { ptr: at, cs: c, h: mh, w: mw };
      at = align(at + 4 * (mh + 6) * (mw + 2) * c);
      return m;
    };
    const slice = (m: Map2D, c0: number): Map2D => ({ ...m, ptr: m.ptr + 4 * c0 });
    // rows [y0, y0 + n) of a map, as a map whose border rows are its neighbours'
    const rows = (m: Map2D, y0: number, n: number): Map2D => ({
      ...m,
      ptr: m.ptr + 4 * y0 * (m.w + 2) * m.cs,
      h: n,
    });
    const dc = nf + 4 * gc;
    const input = map(cin, h, w), feat = map(nf, h, w);
    // a block's three dense blocks in two maps: the first holds the block's input x (kept for the
    // block's residual) and past it rdb1's growth, later rdb3's input and growth; rdb2 has its own
    const first = map(nf + dc, h, w);
    const dense = [first, map(dc, h, w), slice(first, nf)];
    // the trunk's output, feat + conv_body(...), in place over feat
    const body = feat;
    const output = map(numOutCh, S * h, S * w);
    // the upsampled tail in bands of N LR rows: per x2 upsampling the nearest-neighbour copy and the
    // conv's output, at the band's size (the last level's two maps were most of a patch's memory)
    const N = this.tailBandRows(h, w);
    const levels = Array.from({ length: U }, (_, k) => {
      const m = 2 ** (k + 1);
      // level 1's copy has two more rows on each side, the band's LR neighbours' (at an image edge
      // the body's zero border), so that conv_up1 reads real border rows and needs no halo
      const extra = k ? 0 : 2, whole = map(nf, m * N + 2 * extra, m * w);
      return { whole, up: rows(whole, extra, m * N), conv: map(nf, m * N, m * w) };
    });
    const end = at;
    // Winograd's work space per thread: one row of tiles transformed, one register block's products, T
    let scratchFloats = 0;

    const layers: (Conv | Upsample)[] = [];
    const conv = (name: string, input: Map2D, output: Map2D, more: Partial<Conv> = {}) =>
      layers.push({ op: OP_CONV, name, input, output, ...more });
    // twice: one copy stays for the trunk's residual, the other is block 0's input
    conv("conv_first", input, feat);
    conv("conv_first", input, dense[0]);
    for (let b = 0; b < numBlock; b++) {
      for (let r = 0; r < 3; r++) {
        const d = dense[r];
        for (let k = 1; k <= 4; k++) {
          conv(`body.${b}.rdb${r + 1}.conv${k}`, d, slice(d, nf + (k - 1) * gc), { lrelu: true });
        }
        if (r < 2) conv(`body.${b}.rdb${r + 1}.conv5`, d, dense[r + 1], { s0: 0.2, r1: [d, 1] });
        // the block's output, x + 0.2·(x3 + 0.2·conv5), in place over the block's input x
        else conv(`body.${b}.rdb3.conv5`, d, dense[0], { s0: 0.04, r1: [d, 0.2], r2: [dense[0], 1] });
      }
    }
    conv("conv_body", dense[0], body, { r1: [feat, 1] });
    // Each band computes rows [a, a + N) and keeps [r0, r1). From level 2 on, the rows next to a band
    // edge that is no image edge see zeros there instead of their neighbours (2^(U-1) + 1 output rows
    // by conv_last), so kept rows stay TAIL_HALO LR rows (2^U output rows) away from such an edge.
    // Every band is N rows, the last one moved up, so that the row under a band is the maps' zero
    // border, never a stale row of the band before.
    for (let r0 = 0, r1 = 0; r0 < h; r0 = r1) {
      const a = Math.min(Math.max(0, r0 - TAIL_HALO), h - N);
      r1 = a + N === h ? h : a + N - TAIL_HALO;
      let x = body;
      levels.forEach((l, k) => {
        // level 1 from the band's rows of the body and one more on each side, into the whole map
        const [from, to] = k ? [x, l.up] : [rows(body, a - 1, N + 2), l.whole];
        layers.push({ op: OP_UPSAMPLE, input: from, output: to, channels: nf });
        conv(`conv_up${k + 1}`, l.up, l.conv, { lrelu: true });
        x = l.conv;
      });
      // conv_hr writes over a map that is free by then: the last upsampling's copy (none: rdb2's, in
      // the one band a net without upsampling has)
      const spare = U ? levels[U - 1].up : dense[1];
      conv("conv_hr", x, spare, { lrelu: true });
      // conv_last reads the kept rows through a view whose border rows are the band's own neighbours
      conv("conv_last", rows(spare, (r0 - a) * S, (r1 - r0) * S), rows(output, r0 * S, (r1 - r0) * S));
    }

    for (const l of layers) {
      const p = l.op === OP_CONV ? this.convs.get(l.name) : undefined;
      if (p?.winograd) {
        scratchFloats = Math.max(scratchFloats, winogradScratchFloats(l.input.w, p.cin));
      }
    }
    scratchFloats = align(4 * scratchFloats) / 4;
    const scratch = end;
    const records = align(scratch + 4 * scratchFloats * this.pool.threads);
    const list: LayerRecord[] = [];
    for (const layer of layers) {
      const common = {
        in: layer.input.ptr,
        ics: layer.input.cs,
        h: layer.input.h,
        w: layer.input.w,
        out: layer.output.ptr,
        ocs: layer.output.cs,
      };
      if (layer.op === OP_UPSAMPLE) {
        list.push({ kind: "upsample x2", op: OP.upsample, cin: layer.channels, ...common });
        continue;
      }
      const p = this.convs.get(layer.name);
      if (!p) throw new Error(`RRDBNetPlanWasm: the net has no ${layer.name}`);
      if (p.hwio !== undefined) list.push(packRecord(p, p.hwio));
      list.push({
        kind: `conv3x3 ${layer.name.replace(/^body\.\d+\.rdb\d\./, "dense ")}`,
        op: p.winograd ? OP.winograd : OP.conv,
        ...common,
        cin: p.cin,
        weight: p.weight,
        bias: p.bias,
        cout: p.cout,
        lrelu: layer.lrelu ? 1 : 0,
        s0: layer.s0 ?? 1,
        ...(layer.r1 ? { r1: layer.r1[0].ptr, r1cs: layer.r1[0].cs, s1: layer.r1[1] } : {}),
        ...(layer.r2 ? { r2: layer.r2[0].ptr, r2cs: layer.r2[0].cs, s2: layer.r2[1] } : {}),
        ...(p.winograd ? { scratch, scratchFloats } : {}),
      });
    }
    this.pool.reserve(records + list.length * LAYER_BYTES);
    // the zero borders ("same" padding) of every map
    this.pool.floats().fill(0, this.weightsEnd / 4, end / 4);
    writeRecords(this.pool.memory, records, list);
    const kinds = list.map((r) => r.kind);
    this.layout = {
      key,
      h,
      w,
      input,
      output,
      layers: records,
      count: list.length,
      kinds,
      doneAfter: shares(list),
    };
    return this.layout;
  }
}

/**
 * Each conv's weight in HWIO and its bias, read when asked. A state dict's weights are decoded
 * (where a lazy model file allows: see LazyTensorData) and transposed into two scratch arrays that
 * every conv reuses, so a returned weight is valid until the next call: read this way, x4plus left
 * 130 MB of short-lived arrays resident.
 */
function hwioConvs(net: RRDBNet | RRDBNetWeights): {
  conv: string;
  shape: number[];
  weight(): Float32Array;
  bias(): Float32Array;
}[] {
  const names = [...(net instanceof RRDBNet ? net.params : net.weights).keys()]
    .filter((name) => name.endsWith(".weight"))
    .map((name) => name.slice(0, -".weight".length));
  if (net instanceof RRDBNet) {
    const read = (name: string) => net.params.get(name)!.dataSync() as Float32Array;
    return names.map((conv) => ({
      conv,
      shape: net.params.get(`${conv}.weight`)!.shape,
      weight: () => read(`${conv}.weight`),
      bias: () => read(`${conv}.bias`),
    }));
  }
  const largest = Math.max(...names.map((conv) => numel(net.weights.get(`${conv}.weight`)!.shape)));
  const raw = new Float32Array(largest), hwio = new Float32Array(largest);
  return names.map((conv) => {
    const w = net.weights.get(`${conv}.weight`)! as TensorData & Partial<LazyTensorData>;
    const [cout, cin, kh, kw] = w.shape, n = numel(w.shape);
    return {
      conv,
      shape: [kh, kw, cin, cout],
      weight: () => {
        const oihw = w.decodeInto ? raw.subarray(0, n) : w.data;
        w.decodeInto?.(oihw);
        return oihwToHwio(oihw, w.shape, hwio.subarray(0, n));
      },
      bias: () => net.weights.get(`${conv}.bias`)!.data,
    };
  });
}

/**
 * After each record, the share of all the records' work done: a conv's multiply-adds (cin · cout
 * per pixel), an upsampling's copies and a filter's packing counted alike, per value.
 */
function shares(list: LayerRecord[]): Float64Array {
  const cost = (r: LayerRecord) =>
    r.op === OP.upsample
      ? r.cin! * r.h! * r.w! * 4
      : r.op === OP.pack
      ? r.cin! * r.cout! * 9
      : r.cin! * r.cout! * r.h! * r.w!;
  const after = new Float64Array(list.length);
  let sum = 0;
  list.forEach((r, k) => after[k] = sum += cost(r));
  return after.map((v) => v / sum);
}

/** OP_PACK: a Winograd conv's filters U = G g Gᵀ from its HWIO weights at `hwio`, into `p.weight`. */
function packRecord(p: PackedConv, hwio: number): LayerRecord {
  return {
    kind: "pack",
    op: OP.pack,
    in: hwio,
    ics: p.cout,
    cin: p.cin,
    out: p.weight,
    cout: p.cout,
    realCin: p.cin,
  };
}

/** HWIO [3, 3, cin, cout] → [cout/8][3][3][cin][8], zero past cout (rrdb_cpu.c's layout). */
function packFilter(w: Float32Array, cin: number, cout: number, dst: Float32Array, at: number): void {
  const blocks = roundUp(cout, NR) / NR;
  for (let b = 0; b < blocks; b++) {
    for (let tap = 0; tap < 9; tap++) {
      for (let ci = 0; ci < cin; ci++) {
        const src = (tap * cin + ci) * cout + b * NR;
        const d = at + ((b * 9 + tap) * cin + ci) * NR;
        for (let j = 0; j < NR && b * NR + j < cout; j++) dst[d + j] = w[src + j];
      }
    }
  }
}
