/**
 * RRDBNet's training step (L1, Adam, EMA) on the CPU kernels (wasm/rrdb_cpu.c), the CPU
 * counterpart of webgpu_train_plan.ts and laid out the same way: the forward with every activation
 * kept (each dense block its own concatenation buffer), the L1 gradient, the backward written by
 * hand, then Adam and the EMA over flat arrays, and the weights packed again for the next forward.
 * `step()` is the psnr stage; `forward()` and `backward(extra)` split it so that the gan stage can
 * add the gradient of its other losses w.r.t. G's output, as on WebGPU.
 *
 * Every 3x3 convolution runs as Winograd F(4x4, 3x3): the forward and the input gradients as the
 * inference kernel (the input gradient is the convolution with flipped, transposed filters, packed
 * each step), the filter gradients in the Winograd domain (dU = Σ (A dY A') ⊙ V, dW = G' dU G), so
 * all three take 4x fewer products than direct convolution. The dense blocks' backward shares
 * one gradient buffer per block as on WebGPU: conv5's input gradient writes it, with the residual
 * paths' gradients added in its epilogue, each conv k adds its input gradient to the channels it
 * read, and the LeakyReLU derivative of slice k is applied by whichever conv completes it. The
 * input image is held with 4 channels (the 4th zero) so conv_first is a Winograd conv too.
 *
 * Values move between the plan and the nets' tf.Variables only at construction and on
 * {@link RRDBNetTrainPlanWasm.writeBack}, as with the WebGPU plan. Sides (LR) must be multiples of 4.
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import { tensor } from "@tensorflow/tfjs-core";
import type { RRDBNet } from "../rrdbnet_arch.ts";
import { KernelPool, type KernelPoolOptions, MAX_MEMORY_BYTES } from "./wasm_pool.ts";
import type { StepResult, TrainPlanOptions } from "./webgpu_train_plan.ts";
import type { PlanProfile } from "./wasm_plan.ts";
import {
  align,
  ARENA_BASE,
  type Field,
  type LayerRecord,
  NR,
  OP,
  PACK_INPUT_GRAD,
  RECORD_BYTES,
  roundUp,
  WGRAD_SCRATCH_FLOATS,
  wgradDUFloats,
  wgradMFloats,
  wgradVFloats,
  winogradScratchFloats,
  writeRecords,
} from "./wasm_layer.ts";

const LRELU_FROM_ALL = 0;

/** A batch of feature maps: padded origin (bytes) of image 0's first channel, pixel stride (floats). */
interface Maps {
  ptr: number;
  cs: number;
  h: number;
  w: number;
  /** Bytes from one image to the next. */
  img: number;
}

interface Param {
  offset: number;
  size: number;
  shape: number[];
}

interface PackedConv {
  cin: number;
  cout: number;
  /** Winograd weights of the conv and of its input-gradient conv; its bias (in the parameters). */
  u: number;
  uGrad: number;
  bias: number;
}

/** A prepared training step of `net` (scale 4) for batches of one size, on the CPU. Dispose it. */
export class RRDBNetTrainPlanWasm {
  /** Adam steps taken, counted as train/adam.ts counts them. */
  t: number;
  private readonly pool: KernelPool;
  private readonly params = new Map<string, Param>();
  private readonly convs = new Map<string, PackedConv>();
  private readonly flat: { p: number; g: number; m: number; v: number; e: number; total: number };
  private readonly input: Maps;
  private readonly output: Maps;
  private readonly dOut: Maps;
  /** The forward's records; the rest of a step's (backward, Adam + EMA, packing); the packing's. */
  private readonly lists: { forward: [number, number]; update: [number, number]; pack: [number, number] };
  /** Byte offset of the Adam record (its step size changes every step). */
  private readonly adamAt: number;
  private readonly kinds: string[] = [];
  private readonly count: number;

  constructor(readonly net: RRDBNet, readonly options: TrainPlanOptions & KernelPoolOptions) {
    const { scale, numFeat: nf, numGrowCh: gc, numBlock: nb, numInCh, numOutCh } = net.config;
    if (scale !== 4) throw new Error(`RRDBNetTrainPlanWasm: scale ${scale} (only 4 is planned)`);
    if (nf % 4 || gc % 4) {
      throw new Error(`RRDBNetTrainPlanWasm: nf ${nf} and gc ${gc} must be multiples of 4`);
    }
    if (numInCh > 4 || numOutCh > 4) {
      throw new Error("RRDBNetTrainPlanWasm: at most 4 input and output channels");
    }
    const n = options.batch, h = options.lqSize, w = h, H = 4 * h;
    if (h % 4) throw new Error(`RRDBNetTrainPlanWasm: LR patch side ${h} must be a multiple of 4`);
    this.t = options.adam.t;
    this.count = n * H * H * numOutCh;
    this.pool = new KernelPool(options);
    try {
      let at = ARENA_BASE;
      const take = (floats: number) => {
        const ptr = at;
        at = align(at + 4 * floats);
        return ptr;
      };
      // parameters, as flat arrays in TF layout (HWIO weights)
      let total = 0;
      for (const [name, v] of net.params) {
        this.params.set(name, { offset: total, size: v.size, shape: v.shape });
        total += Math.ceil(v.size / 16) * 16;
      }
      this.flat = { p: take(total), g: take(total), m: take(total), v: take(total), e: take(total), total };
      let maxCout = 0;
      for (const [name, v] of net.params) {
        if (!name.endsWith(".weight")) continue;
        const [kh, kw, cin, cout] = v.shape;
        if (kh !== 3 || kw !== 3) throw new Error(`${name}: a ${kh}x${kw} filter, the CPU kernels want 3x3`);
        const c4 = roundUp(cin, 4);
        this.convs.set(name.slice(0, -".weight".length), {
          cin,
          cout,
          u: take(36 * c4 * roundUp(cout, NR)),
          uGrad: take(36 * roundUp(cout, 4) * roundUp(cin, NR)),
          // the kernels read a bias 4 channels at a time: the parameters' padding covers it
          bias: this.flat.p + 4 * this.params.get(`${name.slice(0, -".weight".length)}.bias`)!.offset,
        });
        maxCout = Math.max(maxCout, roundUp(cin, NR), roundUp(cout, NR));
      }
      const zeros = take(maxCout);

      // feature maps: a zero border, and 4 spare zero rows as wasm_plan.ts gives its maps
      const maps = (c: number, mh: number): Maps => {
        const img = 4 * (mh + 6) * (mh + 2) * c;
        return { ptr: take(n * img / 4), cs: c, h: mh, w: mh, img };
      };
      const slice = (m: Maps, c0: number): Maps => ({ ...m, ptr: m.ptr + 4 * c0 });
      const C = nf + 4 * gc;
      const mapsStart = at;
      const input = this.input = maps(4, h);
      const dense: Maps[] = []; // dense[3b + r]: block b's dense block r's input and grown channels
      for (let i = 0; i < 3 * nb; i++) dense.push(maps(C, h));
      dense.push(maps(nf, h)); // the last block's output
      const trunk = maps(nf, h), u1 = maps(nf, 2 * h), c1 = maps(nf, 2 * h);
      const u2 = maps(nf, H), c2 = maps(nf, H), hr = maps(nf, H);
      const output = this.output = maps(numOutCh, H);
      // gradients: four dense-block buffers in turn are enough (block r reads those of r + 1 and r + 3)
      const dOut = this.dOut = maps(4, H);
      const grads = [maps(C, h), maps(C, h), maps(C, h), maps(C, h)];
      const dTrunk = maps(nf, h), dC1 = maps(nf, 2 * h), dU1 = maps(nf, 2 * h);
      const dHr = maps(nf, H), dC2 = maps(nf, H), dU2 = maps(nf, H);
      const mapsEnd = at;

      // work space: Winograd's per thread, the filter gradients' transformed tiles and dU (the
      // widest convs: the dense blocks' conv5 at LR, nf channels at full resolution)
      const threads = this.pool.threads;
      const tilesOf = (m: Maps) => n * (m.h / 4) * (m.w / 4);
      const tLo = tilesOf(dense[0]), tHi = tilesOf(u2);
      let scratchFloats = Math.max(
        WGRAD_SCRATCH_FLOATS,
        winogradScratchFloats(w, C),
        winogradScratchFloats(H, nf),
      );
      const vFloats = Math.max(wgradVFloats(C, tLo), wgradVFloats(nf, tHi));
      const mFloats = wgradMFloats(nf, Math.max(tLo, tHi));
      const duFloats = wgradDUFloats(C, nf);
      scratchFloats = align(4 * scratchFloats) / 4;
      const scratch = take(scratchFloats * threads);
      const vArea = take(vFloats), mArea = take(mFloats), duArea = take(duFloats);

      // ---- the record lists ----
      const records: LayerRecord[] = [];
      const begin = () => records.length;
      const each = (rec: LayerRecord, maps: { in?: Maps; out?: Maps; r1?: Maps; r2?: Maps; mask?: Maps }) => {
        for (let i = 0; i < n; i++) {
          const r: LayerRecord = { ...rec };
          for (const [f, m] of Object.entries(maps) as [Field, Maps | undefined][]) {
            if (m) r[f] = m.ptr + i * m.img;
          }
          records.push(r);
        }
      };
      const conv = (
        name: string,
        x: Maps,
        y: Maps,
        more: Omit<LayerRecord, "kind"> & { r1m?: Maps; r2m?: Maps; maskm?: Maps; kind?: string } = {},
      ) => {
        const p = this.convs.get(name);
        if (!p) throw new Error(`RRDBNetTrainPlanWasm: the net has no ${name}`);
        const { r1m, r2m, maskm, kind, ...rest } = more;
        each({
          kind: kind ?? `forward ${kindOf(name)}`,
          op: OP.winograd,
          ics: x.cs,
          cin: roundUp(p.cin, 4),
          h: x.h,
          w: x.w,
          weight: p.u,
          bias: p.bias,
          ocs: y.cs,
          cout: p.cout,
          s0: 1,
          scratch,
          scratchFloats,
          ...(r1m ? { r1cs: r1m.cs } : {}),
          ...(r2m ? { r2cs: r2m.cs } : {}),
          ...(maskm ? { maskCs: maskm.cs } : {}),
          ...rest,
        }, { in: x, out: y, r1: r1m, r2: r2m, mask: maskm });
      };
      /** dX of conv `name` into `dx` from `dy`: the conv with the flipped, transposed filters. */
      const inputGrad = (
        name: string,
        dy: Maps,
        dx: Maps,
        more: Omit<LayerRecord, "kind"> & { r1m?: Maps; r2m?: Maps; maskm?: Maps } = {},
      ) => {
        const p = this.convs.get(name)!;
        conv(name, dy, dx, {
          kind: `input grad ${kindOf(name)}`,
          cin: roundUp(p.cout, 4),
          cout: p.cin,
          weight: p.uGrad,
          bias: zeros,
          ...more,
        });
      };
      /**
       * dW and db of conv `name` (input x, output gradient dy times `gscale`) into the gradients.
       * With `vReady`, V' holds the transformed tiles of x's first `vReady` channels already.
       */
      const filterGrad = (name: string, x: Maps, dy: Maps, gscale = 1, vReady = 0) => {
        const p = this.convs.get(name)!;
        const T = tilesOf(dy), cin = roundUp(p.cin, 4), vchannels = vReady || cin;
        const kind = `filter grad ${kindOf(name)}`;
        for (let i = 0; i < n; i++) {
          records.push({
            kind: `${kind}: transforms`,
            op: OP.wgradTransform,
            in: x.ptr + i * x.img,
            ics: x.cs,
            cin: vReady ? 0 : cin,
            vchannels,
            h: dy.h,
            w: dy.w,
            out: dy.ptr + i * dy.img,
            ocs: dy.cs,
            cout: p.cout,
            weight: vArea,
            bias: mArea,
            t0: i * (dy.h / 4) * (dy.w / 4),
            tiles: T,
            gscale,
            scratch,
            scratchFloats,
          });
        }
        const common = { kind, cin, vchannels, cout: p.cout, weight: vArea, bias: mArea, tiles: T };
        records.push({ ...common, kind: `${kind}: products`, op: OP.wgradGemm, out: duArea });
        records.push({
          ...common,
          kind: `${kind}: G'dUG`,
          op: OP.wgradFinal,
          in: duArea,
          realCin: p.cin,
          grad: this.flat.g + 4 * this.params.get(`${name}.weight`)!.offset,
          biasGrad: this.flat.g + 4 * this.params.get(`${name}.bias`)!.offset,
          scratch,
          scratchFloats,
        });
      };

      // ---- forward, keeping what the backward reads ----
      const fwd0 = begin();
      conv("conv_first", input, slice(dense[0], 0));
      for (let b = 0; b < nb; b++) {
        for (let r = 0; r < 3; r++) {
          const i = 3 * b + r, d = dense[i], name = `body.${b}.rdb${r + 1}`;
          for (let k = 1; k <= 4; k++) conv(`${name}.conv${k}`, d, slice(d, nf + (k - 1) * gc), { lrelu: 1 });
          // dense block r < 3: x + 0.2·conv5; the block's output, x₁ + 0.2·(x₃ + 0.2·conv5), goes into
          // the next block's buffer
          const residuals = r < 2 ? { s0: 0.2 } : { s0: 0.04, s1: 0.2, r2m: dense[3 * b], s2: 1 };
          conv(`${name}.conv5`, d, dense[i + 1], { s1: 1, r1m: d, ...residuals });
        }
      }
      conv("conv_body", dense[3 * nb], trunk, { s1: 1, r1m: dense[0] });
      each({ kind: "forward upsample", op: OP.upsample, ics: nf, cin: nf, h, w, ocs: nf }, {
        in: trunk,
        out: u1,
      });
      conv("conv_up1", u1, c1, { lrelu: 1 });
      each({ kind: "forward upsample", op: OP.upsample, ics: nf, cin: nf, h: 2 * h, w: 2 * w, ocs: nf }, {
        in: c1,
        out: u2,
      });
      conv("conv_up2", u2, c2, { lrelu: 1 });
      conv("conv_hr", c2, hr, { lrelu: 1 });
      conv("conv_last", hr, output);
      const fwd1 = begin();

      // ---- backward: the tail (dOut is written by step() from the L1 loss) ----
      filterGrad("conv_last", hr, dOut);
      inputGrad("conv_last", dOut, dHr, { maskm: hr, maskFrom: LRELU_FROM_ALL });
      filterGrad("conv_hr", c2, dHr);
      inputGrad("conv_hr", dHr, dC2, { maskm: c2, maskFrom: LRELU_FROM_ALL });
      filterGrad("conv_up2", u2, dC2);
      inputGrad("conv_up2", dC2, dU2);
      each({
        kind: "upsample grad",
        op: OP.upsampleGrad,
        ics: nf,
        cin: nf,
        h: 2 * h,
        w: 2 * w,
        ocs: nf,
        maskCs: nf,
      }, {
        in: dU2,
        out: dC1,
        mask: c1,
      });
      filterGrad("conv_up1", u1, dC1);
      inputGrad("conv_up1", dC1, dU1);
      each({ kind: "upsample grad", op: OP.upsampleGrad, ics: nf, cin: nf, h, w, ocs: nf }, {
        in: dU1,
        out: dTrunk,
      });
      filterGrad("conv_body", dense[3 * nb], dTrunk);
      const gradOf = (i: number) => grads[i % 4];
      inputGrad("conv_body", dTrunk, gradOf(3 * nb));

      // ---- backward through the blocks: block b's output is 0.2·(0.2·c5₃ + x₃) + x₁ ----
      for (let b = nb - 1; b >= 0; b--) {
        for (let r = 2; r >= 0; r--) {
          const i = 3 * b + r, d = dense[i], g = gradOf(i), dy = slice(gradOf(i + 1), 0);
          const name = `body.${b}.rdb${r + 1}`;
          const scale5 = r === 2 ? 0.04 : 0.2;
          // d(input) = conv5's input gradient + the residual's (+ the block skip's, in dense block 1)
          inputGrad(`${name}.conv5`, dy, g, {
            s0: scale5,
            r1m: dy,
            s1: r === 2 ? 0.2 : 1,
            ...(r === 0 ? { r2m: slice(gradOf(i + 3), 0), s2: 1 } : {}),
            rn: nf,
            maskm: d,
            maskFrom: nf + 3 * gc,
          });
          filterGrad(`${name}.conv5`, d, dy, scale5);
          for (let k = 4; k >= 1; k--) {
            const dk = slice(g, nf + (k - 1) * gc);
            inputGrad(`${name}.conv${k}`, dk, g, {
              r1m: g,
              s1: 1,
              ...(k > 1 ? { maskm: d, maskFrom: nf + (k - 2) * gc } : {}),
            });
            filterGrad(`${name}.conv${k}`, d, dk, 1, C); // V' of conv5's input: channels [0, C)
          }
        }
      }
      // conv_first's output feeds block 0 and, through the long skip, conv_body's output
      each({ kind: "add", op: OP.add, ics: nf, cin: nf, h, w, ocs: C, s0: 1 }, { in: dTrunk, out: grads[0] });
      filterGrad("conv_first", input, grads[0]);
      records.push({ kind: "adam + ema", op: OP.adam });
      const bwd1 = begin();

      // ---- the weights, packed again after the update ----
      for (const [name, p] of this.convs) {
        const src = this.flat.p + 4 * this.params.get(`${name}.weight`)!.offset;
        const common = { kind: "pack", op: OP.pack, in: src, realCin: p.cin, ics: p.cout };
        records.push({ ...common, cin: roundUp(p.cin, 4), cout: p.cout, out: p.u });
        if (name !== "conv_first") {
          records.push({
            ...common,
            cin: roundUp(p.cout, 4),
            cout: p.cin,
            out: p.uGrad,
            lrelu: PACK_INPUT_GRAD,
          });
        }
      }
      const pack1 = begin();

      const recordsAt = take(records.length * RECORD_BYTES / 4);
      if (at > MAX_MEMORY_BYTES) {
        throw new Error(
          `the CPU training step needs ${(at / 1024 ** 3).toFixed(1)} GiB for a batch of ${n} ${h}x${h} LR ` +
            `patches, more than wasm's 4 GiB: use a smaller batchSize or gtSize`,
        );
      }
      this.pool.reserve(at);
      const f = this.pool.floats(), i32 = new Int32Array(f.buffer);
      f.fill(0, mapsStart / 4, mapsEnd / 4);
      f.fill(0, zeros / 4, zeros / 4 + maxCout);
      writeRecords(this.pool.memory, recordsAt, records);
      for (const rec of records) this.kinds.push(rec.kind);
      const list = (a: number, b: number): [number, number] => [recordsAt + a * RECORD_BYTES, b - a];
      this.lists = { forward: list(fwd0, fwd1), update: list(fwd1, pack1), pack: list(bwd1, pack1) };
      // rrdb_cpu.c's `Adam` record: 7 fields of 4 bytes, then 9 floats
      this.adamAt = recordsAt + (bwd1 - 1) * RECORD_BYTES;
      const { p, g, m, v, e } = this.flat;
      i32.set([OP.adam, p, g, m, v, e, total], this.adamAt / 4);
      const { beta1, beta2, eps } = options.adam;
      f.set(
        [1 - beta1, beta2, 1 - beta2, 0, 1, eps, options.emaDecay, 1 - options.emaDecay],
        this.adamAt / 4 + 7,
      );
      this.copyVariables("in");
      this.f32(this.flat.g, total).fill(0);
    } catch (e) {
      this.pool.dispose();
      throw e;
    }
  }

  /** Threads the step runs on. */
  get threads(): number {
    return this.pool.threads;
  }

  /**
   * One training step on a batch (NHWC float32 in [0, 1]: lq [batch, s, s, 3], gt [batch, 4s, 4s, 3])
   * at learning rate `lr`; resolves to the weighted L1 loss of the batch before the update.
   */
  async step(
    batch: { lq: Float32Array; gt: Float32Array },
    lr: number,
    options: { signal?: AbortSignal } = {},
  ): Promise<StepResult> {
    await this.forward(batch, { ...options, output: false });
    return this.backward(null, lr, options);
  }

  /**
   * The first half of a step: G's forward on the batch, kept for {@link backward}. With `output`
   * (default true) resolves to G's output as a tensor the caller owns, for losses computed with
   * tfjs (the gan stage's), as the WebGPU plan's `forward` does.
   */
  async forward(
    batch: { lq: Float32Array; gt: Float32Array },
    options: { output?: boolean; signal?: AbortSignal } = {},
  ): Promise<tf.Tensor4D | undefined> {
    await this.packed();
    const { numInCh, numOutCh } = this.net.config;
    const n = this.options.batch, h = this.options.lqSize, H = 4 * h;
    if (batch.lq.length !== n * h * h * numInCh || batch.gt.length !== this.count) {
      throw new Error(
        `RRDBNetTrainPlanWasm: batch of ${batch.lq.length} / ${batch.gt.length} values, ` +
          `the plan wants ${n * h * h * numInCh} / ${this.count}`,
      );
    }
    this.gt = undefined;
    let f = this.pool.floats();
    for (let i = 0; i < n; i++) {
      const base = (this.input.ptr + i * this.input.img) / 4;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < h; x++) {
          const d = base + ((y + 1) * (h + 2) + x + 1) * 4, s = ((i * h + y) * h + x) * numInCh;
          for (let k = 0; k < numInCh; k++) f[d + k] = batch.lq[s + k];
        }
      }
    }
    await this.pool.run(this.request("forward"), options.signal);
    this.gt = batch.gt;
    if (options.output === false) return undefined;
    f = this.pool.floats();
    const out = new Float32Array(this.count);
    this.eachOutput((op, _dp, s) => {
      for (let k = 0; k < numOutCh; k++) out[s + k] = f[op + k];
    });
    return tensor(out, [n, H, H, numOutCh], "float32") as tf.Tensor4D;
  }

  /**
   * The second half: the L1 gradient plus `extra` (the gradient of G's other losses w.r.t. its
   * output, NHWC, shape of G's output; null: none), the backward pass, Adam (train/adam.ts's order
   * of operations) and the EMA at learning rate `lr`, the weights packed again. Resolves to the
   * weighted L1 loss of the batch before the update.
   */
  async backward(
    extra: tf.Tensor | null,
    lr: number,
    options: { signal?: AbortSignal } = {},
  ): Promise<StepResult> {
    const gt = this.gt;
    if (!gt) throw new Error("RRDBNetTrainPlanWasm: backward() without forward()");
    this.gt = undefined;
    const more = extra && await extra.data() as Float32Array;
    if (more && more.length !== this.count) {
      throw new Error(
        `RRDBNetTrainPlanWasm: extra gradient of ${more.length} values, G's output has ${this.count}`,
      );
    }
    const { numOutCh } = this.net.config;
    const f = this.pool.floats();
    // L1 (BasicSR's mean over every value) and its gradient, sign(sr - gt)·w/count
    const w = this.options.pixelWeight ?? 1, g = w / this.count;
    let sum = 0;
    this.eachOutput((op, dp, s) => {
      for (let k = 0; k < numOutCh; k++) {
        const diff = f[op + k] - gt[s + k];
        sum += Math.abs(diff);
        f[dp + k] = (diff > 0 ? g : diff < 0 ? -g : 0) + (more ? more[s + k] : 0);
      }
    });
    this.t++;
    const { beta1, beta2 } = this.options.adam;
    f.set([lr / (1 - Math.pow(beta1, this.t)), Math.sqrt(1 - Math.pow(beta2, this.t))], this.adamAt / 4 + 10);
    await this.pool.run(this.request("update"), options.signal);
    return { loss: (sum / this.count) * w };
  }

  /** The batch's targets while a forward waits for its backward. */
  private gt?: Float32Array;

  /** Calls `each` with the float index of every output pixel, of its gradient and of the NHWC value. */
  private eachOutput(each: (out: number, grad: number, nhwc: number) => void): void {
    const n = this.options.batch, H = 4 * this.options.lqSize, c = this.net.config.numOutCh;
    for (let i = 0; i < n; i++) {
      const o = (this.output.ptr + i * this.output.img) / 4, d = (this.dOut.ptr + i * this.dOut.img) / 4;
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < H; x++) {
          const p = (y + 1) * (H + 2) + x + 1;
          each(o + p * c, d + p * 4, ((i * H + y) * H + x) * c);
        }
      }
    }
  }

  private request(list: "forward" | "update" | "pack") {
    const [layers, count] = this.lists[list];
    return { layers, count, stride: RECORD_BYTES };
  }

  private f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.pool.memory.buffer, ptr, length);
  }

  /** The gradients of the last step, by parameter name, in TF layout (for tests). */
  gradients(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const [name, l] of this.params) out.set(name, this.f32(this.flat.g + 4 * l.offset, l.size).slice());
    return out;
  }

  /**
   * Time per kind of record (forward / input grad / filter grad of each kind of conv, the packing)
   * for the last batch, each record run on its own, and all_ms: one whole step's lists run at once.
   * Leaves the plan's values garbage: for benchmarks.
   */
  async profile(): Promise<PlanProfile> {
    await this.packed();
    const kinds = new Map<string, { ms: number; count: number }>();
    const first = this.lists.forward[0], count = this.kinds.length;
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      await this.pool.run({ layers: first + i * RECORD_BYTES, count: 1, stride: RECORD_BYTES });
      const k = kinds.get(this.kinds[i]) ?? { ms: 0, count: 0 };
      kinds.set(this.kinds[i], { ms: k.ms + performance.now() - t0, count: k.count + 1 });
    }
    const t0 = performance.now();
    await this.pool.run({ layers: first, count, stride: RECORD_BYTES });
    const all_ms = performance.now() - t0;
    return { kernels: [...kinds].map(([name, k]) => ({ name, ...k })).sort((a, b) => b.ms - a.ms), all_ms };
  }

  /** Copies the plan's parameters, EMA and Adam moments back into the variables they came from. */
  writeBack(): void {
    this.copyVariables("out");
    this.options.adam.t = this.t;
  }

  /** Stops the threads and frees the memory (not the variables). */
  dispose(): void {
    this.pool.dispose();
  }

  private copyVariables(direction: "in" | "out"): void {
    const { adam, ema } = this.options;
    const sets: [number, Map<string, tf.Variable>][] = [
      [this.flat.p, this.net.params],
      [this.flat.e, ema],
      [this.flat.m, adam.m],
      [this.flat.v, adam.v],
    ];
    for (const [ptr, vars] of sets) {
      for (const [name, l] of this.params) {
        const variable = vars.get(name);
        if (!variable || variable.shape.join() !== l.shape.join()) {
          throw new Error(
            `RRDBNetTrainPlanWasm: no variable ${name} of shape [${l.shape}] to copy ${direction}`,
          );
        }
        const view = this.f32(ptr + 4 * l.offset, l.size);
        if (direction === "in") view.set(variable.dataSync() as Float32Array);
        else {
          const t = tensor(view.slice(), l.shape, "float32");
          variable.assign(t);
          t.dispose();
        }
      }
    }
    if (direction === "in") {
      // the packed weights, from the parameters just copied in
      return void (this.packing = this.pool.run(this.request("pack")));
    }
  }

  /** The first packing, started by the constructor; step() waits for it. */
  private packing?: Promise<void>;

  private async packed(): Promise<void> {
    await this.packing;
    this.packing = undefined;
  }
}

function kindOf(name: string): string {
  return name.replace(/^body\.\d+\.rdb\d\./, "dense ");
}
