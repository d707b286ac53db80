/**
 * RRDBNet's training step (L1, Adam, EMA) as prepared WebGPU passes: forward with every activation
 * kept, the L1 gradient, the backward pass written by hand, and one fused Adam + EMA dispatch over all
 * parameters, which live in flat buffers (one each for the parameters, gradients, both moments and
 * the EMA) the plan owns. `step()` is the psnr stage; `forward()` and `backward(extra)` split it so
 * that the gan stage can add the gradient of its other losses w.r.t. G's output.
 *
 * Why by hand: through tfjs's autodiff a step is about 2,500 kernel launches at ~120 µs of CPU each
 * (plus the tape's concats, slices and temporaries); here it is about 1,400 dispatches of our own
 * kernels recorded into one compute pass, no allocation after construction.
 *
 * The backward of a dense block needs no concatenation either: the gradient of its input and of
 * its four grown slices share one buffer [n, h, w, nf + 4·gc]; conv5's input gradient writes it
 * (adding the residual paths' gradients), each conv k then adds its input gradient to the channels
 * it read, and the LeakyReLU derivative of slice k is applied by whichever conv completes it.
 *
 * Values move between the plan and the nets' tf.Variables only on {@link RRDBNetTrainPlanWebGPU.writeBack}
 * (and at construction): checkpoints, validation and export keep using the variables.
 *
 * With `winograd` (opt-in, f32), every convolution that qualifies runs in Winograd's domain: the
 * forward and input gradients through webgpu_conv_recorder.ts, the filter gradients through
 * webgpu_winograd_grad.ts.
 *
 * Mixed precision (`precision: "f16"` or `"f16-f32acc"`, needs shader-f16; opt-in): feature maps,
 * their gradients and a copy of the weights are f16, the convolutions as in webgpu_conv3x3.ts's
 * ConvPrecision; the parameters, their gradients (filter gradients sum in f32), Adam's moments and
 * the EMA stay f32. Dynamic loss scaling as PyTorch's GradScaler does it: the loss gradient is
 * multiplied by {@link RRDBNetTrainPlanWebGPU.lossScale} (2^16 at first) so small gradients do not
 * vanish in f16, Adam divides it out; a step whose gradients hold an inf or NaN is skipped and halves
 * the scale, and every 1,000 good steps double it. The GPU applies that rule (webgpu_train_ops.ts's
 * branches), so a step may start before the last one's overflow flag is read back, as in f32.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import type { RRDBNet } from "../rrdbnet_arch.ts";
import type { Conv3x3Spec, ConvPrecision } from "./webgpu_conv3x3.ts";
import { filterGradPrograms, type FilterGradSpec } from "./webgpu_filter_grad.ts";
import { castProgram, hasShaderF16 } from "./webgpu_f16.ts";
import { ConvRecorder } from "./webgpu_conv_recorder.ts";
import { type PassBackend, type PassLike, PlannedPass, type Region } from "./webgpu_pass.ts";
import { mapRead } from "./webgpu_map.ts";
import type { WinogradSize } from "./webgpu_winograd.ts";
import type { WinogradMaps } from "./webgpu_winograd_planner.ts";
import {
  adamEma,
  adamEmaParams,
  addStrided,
  checkFinite,
  l1LossGrad,
  l1Partials,
  upsampleGrad,
} from "./webgpu_train_ops.ts";
import type { Uniform } from "./webgpu_program.ts";

/** Options of {@link RRDBNetTrainPlanWebGPU}. */
export interface TrainPlanOptions {
  /** Batch size and LR patch side (square patches). */
  batch: number;
  lqSize: number;
  /** The EMA net's parameters (same names and shapes as the trained net's). */
  ema: Map<string, tf.Variable>;
  /** Adam's state to start from and write back to (train/adam.ts's `Adam`: m, v, t). */
  adam: {
    m: Map<string, tf.Variable>;
    v: Map<string, tf.Variable>;
    t: number;
    beta1: number;
    beta2: number;
    eps: number;
  };
  emaDecay: number;
  /** Weight of the L1 loss (BasicSR's `pixel_opt.loss_weight`). */
  pixelWeight?: number;
  /** Number format of maps, map gradients and products (default f32; f16 forms: mixed precision). */
  precision?: ConvPrecision;
  /** The first loss scale of mixed precision (default 2^16). */
  lossScale?: number;
  /** Good steps after which mixed precision doubles its loss scale (default 1,000). */
  growthInterval?: number;
  /**
   * Mixed precision: good steps in a row already taken at `lossScale` (GradScaler's growth tracker;
   * a resumed run's, from its checkpoint). Default 0.
   */
  goodSteps?: number;
  /**
   * Every 3x3 convolution's forward, input gradient and filter gradient as Winograd F(m x m) where
   * they qualify (f32, channels in multiples of 4: all but conv_first's and conv_last's; see
   * webgpu_winograd.ts and webgpu_winograd_grad.ts): the filters are transformed in each step, the
   * forward's inputs again in the backward.
   */
  winograd?: WinogradSize;
}

/**
 * What a training step resolves to. The loss scale travels with its step: a step started ahead may
 * read back before the caller sees the last one's result, so the plan's `lossScale` may be newer.
 */
export interface StepResult {
  /** The weighted L1 loss of the batch before the update. */
  loss: number;
  /** Mixed precision: the loss scale after this step (halved if it overflowed, doubled on growth). */
  lossScale?: number;
  /** Mixed precision: whether this step overflowed and so left the weights as they were. */
  skipped?: boolean;
}

/** Mixed precision's loss scaling as a checkpoint keeps it (PyTorch's GradScaler state_dict's names). */
export interface GradScalerState {
  scale: number;
  /** Good steps in a row at `scale`. */
  growthTracker: number;
}

/** Good steps after which mixed precision doubles its loss scale (PyTorch's GradScaler: 2,000). */
const GROWTH_INTERVAL = 1000;
const MAX_LOSS_SCALE = 2 ** 24;

/** GradScaler's state: Adam steps taken, the next loss scale, good steps since it last changed. */
interface ScalerState {
  t: number;
  scale: number;
  good: number;
}

/** A source of a gradient: a buffer, its channel stride and first channel. */
interface Src {
  buf: GPUBuffer;
  stride: number;
  offset: number;
}

/** Parameters start at multiples of this many elements: 256 bytes (minStorageBufferOffsetAlignment) in f16. */
const ALIGN = 128;
const LRELU = 0.2;

/** A prepared training step of `net` (scale 4) for batches of one size. Dispose it when done. */
export class RRDBNetTrainPlanWebGPU {
  /** Adam steps taken, counted as train/adam.ts counts them. */
  t: number;
  /** How many convolutions (forward, input and filter gradients) run as Winograd (the `winograd` option). */
  readonly winogradConvs: number;
  private readonly be: PassBackend;
  private readonly pass: PlannedPass;
  private readonly layout = new Map<string, { offset: number; size: number; shape: number[] }>();
  private readonly total: number;
  private readonly flat: { p: GPUBuffer; g: GPUBuffer; m: GPUBuffer; v: GPUBuffer; e: GPUBuffer };
  /** Mixed precision: the f16 copy of `flat.p` the convolutions read, and the overflow flags. */
  private readonly half?: { p: GPUBuffer; overflow: GPUBuffer; lqF32: GPUBuffer; outF32: GPUBuffer };
  /**
   * Mixed precision: what the next step's loss gradient is multiplied by (1 in f32), as the steps
   * read back so far left it.
   */
  lossScale: number;
  /** Mixed precision: steps skipped for an overflow so far (read back). */
  skippedSteps = 0;
  private goodSteps = 0;
  private lastScale = 1;
  /** Steps whose losses were read back, and the last submitted step's read-back (results apply in order). */
  private resolvedSteps = 0;
  private resolving: Promise<unknown> = Promise.resolve();
  private readonly setL1: (params: Uniform[]) => void;
  private readonly setCheck: (params: Uniform[]) => void;
  private readonly lq: GPUBuffer;
  private readonly gt: GPUBuffer;
  private readonly partials: GPUBuffer;
  /** The gradient of G's other losses (perceptual, adversarial) w.r.t. its output, added to L1's. */
  private readonly extra: GPUBuffer;
  /** G's output, kept by the forward pass. */
  private readonly out: GPUBuffer;
  private forwardEnd = 0;
  private forwarded = false;
  /** Where steps read their loss back, in turns: a step may start while the last one's is pending. */
  private readonly staging: GPUBuffer[];
  private readings = 0;
  private readonly nPartials: number;
  private readonly count: number;
  private readonly setAdam: (params: Uniform[]) => void;

  constructor(readonly net: RRDBNet, readonly options: TrainPlanOptions) {
    if (tf.getBackend() !== "webgpu") {
      throw new Error("RRDBNetTrainPlanWebGPU: the webgpu backend is not active");
    }
    const { scale, numFeat: nf, numGrowCh: gc, numBlock: nb, numInCh, numOutCh } = net.config;
    if (scale !== 4) throw new Error(`RRDBNetTrainPlanWebGPU: scale ${scale} (only 4 is planned)`);
    if (nf % 4 || gc % 4) {
      throw new Error(`RRDBNetTrainPlanWebGPU: nf ${nf} and gc ${gc} must be multiples of 4`);
    }
    this.be = tf.backend() as unknown as PassBackend;
    const precision = options.precision ?? "f32", half = precision !== "f32";
    if (options.winograd && half) {
      throw new Error(`RRDBNetTrainPlanWebGPU: winograd runs in f32 only, not ${precision}`);
    }
    if (half && !hasShaderF16(this.be)) {
      throw new Error(
        `RRDBNetTrainPlanWebGPU: ${precision} needs the WebGPU feature shader-f16, which this device lacks`,
      );
    }
    this.pass = new PlannedPass(this.be);
    // whatever is made before an error (a BufferLimitError halfway, say) is freed, not leaked
    using onError = new DisposableStack();
    onError.defer(() => this.pass.dispose());
    this.t = options.adam.t;
    this.lossScale = half ? options.lossScale ?? 2 ** 16 : 1;
    this.goodSteps = half ? options.goodSteps ?? 0 : 0;

    let total = 0;
    for (const [name, v] of net.params) {
      this.layout.set(name, { offset: total, size: v.size, shape: v.shape });
      total += Math.ceil(v.size / ALIGN) * ALIGN;
    }
    this.total = total;
    const flatBuf = () => this.pass.buffer(total * 4);
    this.flat = { p: flatBuf(), g: flatBuf(), m: flatBuf(), v: flatBuf(), e: flatBuf() };

    const n = options.batch, h = options.lqSize, w = h, H = 4 * h, W = 4 * w;
    const C = nf + 4 * gc;
    const f32 = (hh: number, c: number) => this.pass.buffer(n * hh * hh * c * 4);
    const act = (hh: number, c: number) => this.pass.buffer(n * hh * hh * c * (half ? 2 : 4));
    if (half) {
      this.half = {
        p: this.pass.buffer(total * 2),
        // the overflow flags of steps in turns: a step's own and the last one's (see backward)
        overflow: this.pass.buffer(8),
        lqF32: f32(h, numInCh),
        outF32: f32(H, numOutCh),
      };
    }
    this.copyVariables("in");
    this.lq = act(h, numInCh);
    this.gt = f32(H, numOutCh);
    this.count = n * H * W * numOutCh;
    this.nPartials = l1Partials(this.count);
    this.partials = this.pass.buffer(this.nPartials * 4);
    this.extra = this.pass.buffer(this.count * 4);
    this.staging = [0, 1].map(() =>
      this.be.device.createBuffer({
        // the L1 partial sums, then the overflow flag
        size: Math.ceil((this.nPartials + 1) / 4) * 16,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      })
    );
    onError.defer(() => this.staging.forEach((b) => b.destroy()));

    const whole = (buf: GPUBuffer): Region => ({ buffer: buf });
    const param = (name: string): Region => {
      const l = this.layout.get(name);
      if (!l) throw new Error(`RRDBNetTrainPlanWebGPU: the net has no parameter ${name}`);
      if (this.half) return { buffer: this.half.p, offset: l.offset * 2, size: Math.ceil(l.size / 4) * 8 };
      return { buffer: this.flat.p, offset: l.offset * 4, size: Math.ceil(l.size / 4) * 16 };
    };
    // Dispatches are planned as closures first: the scratch buffer for split filter gradients is
    // bound by all of them and its size is known only at the end.
    const ops: (() => void)[] = [];
    const add = (...a: Parameters<PlannedPass["add"]>) => ops.push(() => void this.pass.add(...a));
    // Records into `ops` like `add` (Winograd's filter transforms too: every step, before their GEMMs).
    const deferred: PassLike = {
      backend: this.be,
      buffer: (bytes, usage) => this.pass.buffer(bytes, usage),
      kept: (...a) => this.pass.kept(...a),
      add: (...a) => (add(...a), () => {}),
      addChoice: (...a) => void ops.push(() => this.pass.addChoice(...a)),
    };
    let winogradFilterGrads = 0;
    const convs = new ConvRecorder(deferred, {
      precision,
      param,
      winograd: options.winograd ? { m: options.winograd, setup: deferred } : undefined,
    });
    const scratch: { buffer?: GPUBuffer } = {};
    let scratchBytes = 16;
    /**
     * dW and db of conv `name` into the gradient buffer (scaled by spec.scale); as Winograd where
     * it can, from `v` (the input transformed, e.g. a dense block's shared V) or its own transform.
     */
    const filterGrad = (
      name: string,
      spec: Omit<FilterGradSpec, "bias" | "biasAt">,
      io: { x0: GPUBuffer; x1?: GPUBuffer; dy: GPUBuffer },
      v?: WinogradMaps,
    ) => {
      const wl = this.layout.get(`${name}.weight`)!, bl = this.layout.get(`${name}.bias`)!;
      const full = { ...spec, bias: true, biasAt: bl.offset - wl.offset, half };
      const grad: Region = {
        buffer: this.flat.g,
        offset: wl.offset * 4,
        size: Math.ceil((bl.offset + bl.size - wl.offset) / 4) * 16,
      };
      const wino = convs.winograd;
      if (wino?.canRunFilterGrad(full)) {
        winogradFilterGrads++;
        const maps = v ?? wino.transformInput(spec, { x0: io.x0, x1: io.x1 });
        return wino.filterGrad(full, grad, { v: maps, dy: io.dy });
      }
      const inputs = [whole(io.x0), ...(io.x1 ? [whole(io.x1)] : []), whole(io.dy)];
      const programs = filterGradPrograms(full);
      if (!programs.sum) return add(programs.main, grad, inputs, "conv3x3 filter grad");
      scratchBytes = Math.max(scratchBytes, programs.splits * programs.partSize * 4);
      ops.push(() => {
        this.pass.add(programs.main, { buffer: scratch.buffer! }, inputs, "conv3x3 filter grad");
        this.pass.add(programs.sum!, grad, [{ buffer: scratch.buffer! }], "filter grad split sum");
      });
    };
    /** dL/d(input) of conv `name` (weights [3, 3, cin, cout]) for `dy` read from `src`. */
    const inputGrad = (
      name: string,
      src: Src,
      output: GPUBuffer,
      spec: Partial<Conv3x3Spec> & { size: { n: number; h: number; w: number }; cin: number; cout: number },
      io: { resA?: GPUBuffer; resB?: GPUBuffer; mask?: GPUBuffer } = {},
    ) => {
      const { size, cin, cout, ...rest } = spec;
      const gradSpec = {
        ...size,
        c0: cout,
        x0Stride: src.stride,
        x0Offset: src.offset,
        cout: cin,
        flipTransposed: true,
        ...rest,
      };
      convs.conv(gradSpec, output, { x0: src.buf, weight: name, ...io });
    };

    // ---- forward, keeping what the backward reads ----
    if (this.half) add(castProgram(n * h * w * numInCh, "f16"), whole(this.lq), [whole(this.half.lqF32)]);
    const base = { n, h, w };
    const feat = act(h, nf);
    convs.conv({ ...base, c0: numInCh, x0Stride: numInCh, cout: nf, bias: true }, feat, {
      x0: this.lq,
      weight: "conv_first",
    });
    const chain: GPUBuffer[] = [feat]; // chain[3b + r - 1]: the input of block b's dense block r
    const grows: GPUBuffer[] = []; // grows[3b + r - 1]: its grown channels
    for (let b = 0; b < nb; b++) {
      for (let r = 1; r <= 3; r++) {
        const grow = act(h, 4 * gc), out = act(h, nf);
        grows.push(grow);
        convs.denseBlock(base, {
          nf,
          gc,
          x: chain[chain.length - 1],
          grow,
          out,
          name: `body.${b}.rdb${r}`,
          skip: r === 3 ? chain[3 * b] : undefined,
        });
        chain.push(out);
      }
    }
    const trunk = chain[3 * nb];
    const lin = (
      cout: number,
      size: { n: number; h: number; w: number },
      extra: Partial<Conv3x3Spec> = {},
    ) => ({
      ...size,
      c0: nf,
      x0Stride: nf,
      cout,
      bias: true,
      ...extra,
    });
    const lrelu = { activation: "leakyrelu" as const, alpha: LRELU };
    const body = act(h, nf), u1 = act(2 * h, nf), u2 = act(H, nf), hr = act(H, nf);
    const out = this.out = act(H, numOutCh);
    const size2 = { n, h: 2 * h, w: 2 * w }, size4 = { n, h: H, w: W };
    convs.conv(lin(nf, base, { res2Scale: 1 }), body, { x0: trunk, weight: "conv_body", res2: feat });
    convs.conv(lin(nf, size2, { ...lrelu, upsample: true }), u1, { x0: body, weight: "conv_up1" });
    convs.conv(lin(nf, size4, { ...lrelu, upsample: true }), u2, { x0: u1, weight: "conv_up2" });
    convs.conv(lin(nf, size4, lrelu), hr, { x0: u2, weight: "conv_hr" });
    convs.conv(lin(numOutCh, size4), out, { x0: hr, weight: "conv_last" });
    if (this.half) add(castProgram(this.count, "f32"), whole(this.half.outF32), [whole(out)]);

    // ---- loss: everything from here on is the backward pass ----
    ops.push(() => this.forwardEnd = this.pass.size);
    const dOut = act(H, numOutCh);
    let setL1: (params: Uniform[]) => void = () => {};
    const l1 = l1LossGrad(this.count, (options.pixelWeight ?? 1) / this.count, { half });
    ops.push(() =>
      setL1 = this.pass.add(l1, whole(dOut), [
        whole(out),
        whole(this.gt),
        whole(this.partials),
        whole(this.extra),
        ...(this.half ? [whole(this.half.overflow)] : []),
      ])
    );

    // ---- backward: the tail, from the output to the trunk ----
    const src = (buf: GPUBuffer, stride: number, offset = 0): Src => ({ buf, stride, offset });
    const maskAll = (c: number) => ({ lo: 0, hi: c, stride: c, offset: 0 });
    const dHr = act(H, nf), dU2 = act(H, nf), dFull = act(H, nf), dU1 = act(2 * h, nf), dBody = act(h, nf);
    filterGrad("conv_last", { ...size4, c0: nf, x0Stride: nf, cout: numOutCh }, { x0: hr, dy: dOut });
    inputGrad("conv_last", src(dOut, numOutCh), dHr, {
      size: size4,
      cin: nf,
      cout: numOutCh,
      mask: maskAll(nf),
      alpha: LRELU,
    }, { mask: hr });
    filterGrad("conv_hr", { ...size4, c0: nf, x0Stride: nf, cout: nf }, { x0: u2, dy: dHr });
    inputGrad("conv_hr", src(dHr, nf), dU2, {
      size: size4,
      cin: nf,
      cout: nf,
      mask: maskAll(nf),
      alpha: LRELU,
    }, { mask: u2 });
    filterGrad("conv_up2", { ...size4, c0: nf, x0Stride: nf, cout: nf, upsample: true }, { x0: u1, dy: dU2 });
    inputGrad("conv_up2", src(dU2, nf), dFull, { size: size4, cin: nf, cout: nf });
    add(upsampleGrad({ n, h: 2 * h, w: 2 * w, c: nf }, { alpha: LRELU }, half), whole(dU1), [
      whole(dFull),
      whole(u1),
    ]);
    filterGrad("conv_up1", { ...size2, c0: nf, x0Stride: nf, cout: nf, upsample: true }, {
      x0: body,
      dy: dU1,
    });
    inputGrad("conv_up1", src(dU1, nf), dFull, { size: size2, cin: nf, cout: nf });
    add(upsampleGrad({ n, h, w, c: nf }, undefined, half), whole(dBody), [whole(dFull)]);
    filterGrad("conv_body", { ...base, c0: nf, x0Stride: nf, cout: nf }, { x0: trunk, dy: dBody });
    const dTrunk = act(h, nf);
    inputGrad("conv_body", src(dBody, nf), dTrunk, { size: base, cin: nf, cout: nf });

    // ---- backward through the blocks ----
    // Winograd: a dense block's input and grown slices transformed once for its five filter
    // gradients (each reads a prefix), kept in a scratch buffer of their own.
    const blockVs = new Map<number, WinogradMaps | undefined>();
    const blockV = (i: number) => {
      const wino = convs.winograd;
      if (
        !wino ||
        !wino.canRunFilterGrad({ ...base, c0: nf, x0Stride: nf, c1: 4 * gc, x1Stride: 4 * gc, cout: nf })
      ) {
        return undefined;
      }
      let v = blockVs.get(i);
      if (!v) {
        v = wino.transformInput({ ...base, c0: nf, x0Stride: nf }, { x0: chain[i] }, {
          channels: C,
          scratch: "block",
        });
        for (let k = 0; k < 4; k++) {
          wino.transformSlice(v, { buffer: grows[i], c: gc, stride: 4 * gc, offset: k * gc });
        }
        blockVs.set(i, v);
      }
      return v;
    };
    // block b's output is 0.2·(0.2·c5₃ + x₃) + x₁ (x₁ its input); dense block r < 3: 0.2·c5ᵣ + xᵣ.
    const dCats: GPUBuffer[] = new Array(3 * nb);
    let dBlockOut = src(dTrunk, nf);
    for (let b = nb - 1; b >= 0; b--) {
      for (let r = 3; r >= 1; r--) {
        const i = 3 * b + r - 1;
        const name = `body.${b}.rdb${r}`;
        const dCat = dCats[i] = act(h, C);
        const dy = r === 3 ? dBlockOut : src(dCats[i + 1], C);
        const scale5 = r === 3 ? 0.04 : 0.2;
        // d(input) = conv5's input gradient + the residual path's (+ the block skip's in block 1)
        const resA = { scale: r === 3 ? 0.2 : 1, stride: dy.stride };
        const resB = r === 1 ? { scale: 1, stride: dBlockOut.stride } : undefined;
        inputGrad(`${name}.conv5`, dy, dCat, {
          size: base,
          cin: C,
          cout: nf,
          accScale: scale5,
          resA,
          resB,
          resLimit: nf,
          mask: { lo: nf + 3 * gc, hi: C, stride: 4 * gc, offset: 3 * gc },
          alpha: LRELU,
        }, { resA: dy.buf, resB: resB && dBlockOut.buf, mask: grows[i] });
        filterGrad(
          `${name}.conv5`,
          {
            ...base,
            c0: nf,
            x0Stride: nf,
            c1: 4 * gc,
            x1Stride: 4 * gc,
            cout: nf,
            dyStride: dy.stride,
            dyOffset: dy.offset,
            scale: scale5,
          },
          { x0: chain[i], x1: grows[i], dy: dy.buf },
          blockV(i),
        );
        for (let k = 4; k >= 1; k--) {
          const slice = src(dCat, C, nf + (k - 1) * gc);
          const cin = nf + (k - 1) * gc;
          inputGrad(`${name}.conv${k}`, slice, dCat, {
            size: base,
            cin,
            cout: gc,
            outStride: C,
            x0IsOutput: true,
            accumulate: true,
            ...(k > 1
              ? {
                mask: { lo: nf + (k - 2) * gc, hi: cin, stride: 4 * gc, offset: (k - 2) * gc },
                alpha: LRELU,
              }
              : {}),
          }, k > 1 ? { mask: grows[i] } : {});
          filterGrad(
            `${name}.conv${k}`,
            {
              ...base,
              c0: nf,
              x0Stride: nf,
              c1: (k - 1) * gc,
              x1Stride: 4 * gc,
              cout: gc,
              dyStride: C,
              dyOffset: nf + (k - 1) * gc,
            },
            { x0: chain[i], x1: k > 1 ? grows[i] : undefined, dy: dCat },
            blockV(i),
          );
        }
      }
      dBlockOut = src(dCats[3 * b], C);
    }
    // feat feeds the first block and, through the long skip, conv_body's output
    const dFeat = act(h, nf);
    add(addStrided(n * h * w, nf, C, half), whole(dFeat), [whole(dCats[0]), whole(dBody)]);
    filterGrad("conv_first", { ...base, c0: numInCh, x0Stride: numInCh, cout: nf }, {
      x0: this.lq,
      dy: dFeat,
    });

    // ---- Adam, then the EMA, over every parameter at once ----
    const { p, g, m, v, e } = this.flat;
    let setAdam: (params: Uniform[]) => void = () => {};
    const hp = this.half;
    let setCheck: (params: Uniform[]) => void = () => {};
    if (hp) ops.push(() => setCheck = this.pass.add(checkFinite(total), whole(hp.overflow), [whole(g)]));
    ops.push(() =>
      setAdam = this.pass.add(adamEma(total, half), whole(p), [
        whole(g),
        whole(m),
        whole(v),
        whole(e),
        ...(hp ? [whole(hp.p), whole(hp.overflow)] : []),
      ])
    );

    this.winogradConvs = convs.winogradConvs + winogradFilterGrads;
    scratch.buffer = this.pass.buffer(scratchBytes);
    for (const op of ops) op();
    this.setAdam = setAdam;
    this.setL1 = setL1;
    this.setCheck = setCheck;
    onError.move();
  }

  /** Dispatches one step records. */
  get dispatches(): number {
    return this.pass.size;
  }

  /**
   * One training step on a batch (NHWC float32 in [0, 1]: lq [batch, s, s, 3], gt [batch, 4s, 4s, 3])
   * at learning rate `lr`; resolves to the weighted L1 loss of the batch before the update (and in
   * mixed precision the step's loss scale). `readAfter`: see {@link backward}.
   */
  step(
    batch: { lq: Float32Array; gt: Float32Array },
    lr: number,
    options: { readAfter?: Promise<unknown> } = {},
  ): Promise<StepResult> {
    this.forward(batch, { output: false });
    return this.backward(null, lr, options);
  }

  /**
   * The first half of a step: G's forward on the batch (kept for {@link backward}). With `output`
   * (default true) returns G's output as a tensor the caller owns, for losses computed with tfjs
   * ops (the gan stage's perceptual and adversarial terms).
   */
  forward(batch: { lq: Float32Array; gt: Float32Array }, options: { output?: boolean } = {}): tf.Tensor4D {
    if (batch.lq.length * 16 !== this.count || batch.gt.length !== this.count) {
      throw new Error(
        `RRDBNetTrainPlanWebGPU: batch of ${batch.lq.length} / ${batch.gt.length} values, ` +
          `the plan wants ${this.count / 16} / ${this.count}`,
      );
    }
    const { device } = this.be;
    device.queue.writeBuffer(this.half?.lqF32 ?? this.lq, 0, batch.lq as Float32Array<ArrayBuffer>);
    device.queue.writeBuffer(this.gt, 0, batch.gt as Float32Array<ArrayBuffer>);
    this.pass.submit({ to: this.forwardEnd });
    this.forwarded = true;
    if (options.output === false) return undefined as unknown as tf.Tensor4D;
    const s = this.options.lqSize * 4;
    const out = this.half?.outF32 ?? this.out;
    return tf.tensor({ buffer: out }, [this.options.batch, s, s, 3], "float32") as tf.Tensor4D;
  }

  /**
   * The second half: the L1 gradient plus `extra` (the gradient of G's other losses w.r.t. its
   * output, shape of G's output; null: none), the backward pass, Adam and the EMA at learning rate
   * `lr`. Resolves to the weighted L1 loss. All its work is submitted when it returns: the next step
   * may start before the loss resolves (one step at most), and its GPU work then fills the time Deno
   * takes to resolve a read-back (10 ms after the GPU finishes, where webgpu_map.ts cannot read it
   * early). In mixed precision that step does not yet know whether this one overflowed: it submits
   * its loss scale and step count both ways, and the GPU picks by this step's overflow flag.
   *
   * `readAfter`: the loss is read only once it settles. Deno 2.9.6's read blocks the thread until the
   * GPU is done, so work the caller does before settling it (the last step's bookkeeping, the next
   * batch) runs while the GPU runs this step.
   */
  async backward(
    extra: tf.Tensor | null,
    lr: number,
    options: { readAfter?: Promise<unknown> } = {},
  ): Promise<StepResult> {
    if (!this.forwarded) throw new Error("RRDBNetTrainPlanWebGPU: backward() without forward()");
    if (this.readings - this.resolvedSteps >= 2) {
      throw new Error("RRDBNetTrainPlanWebGPU: a step started before the loss of the two before it resolved");
    }
    if (extra && extra.size !== this.count) {
      throw new Error(
        `RRDBNetTrainPlanWebGPU: extra gradient of ${extra.size} values, G's output has ${this.count}`,
      );
    }
    const staging = this.staging[this.readings % 2];
    const slots = { own: this.readings % 2, last: (this.readings + 1) % 2 };
    const lastPending = this.readings > this.resolvedSteps;
    this.readings++;
    this.forwarded = false;
    const { beta1, beta2, eps } = this.options.adam;
    const adam = { lr, beta1, beta2, eps, decay: this.options.emaDecay };
    if (this.half) {
      // the state this step starts from: after the last step, whose outcome may not be known yet
      const now = this.scaler;
      const ok = lastPending ? this.after(now, false) : now;
      const skipped = lastPending ? this.after(now, true) : now;
      this.setAdam(adamEmaParams(this.total, {
        ...adam,
        t: ok.t + 1,
        gradScale: 1 / ok.scale,
        skipped: { t: skipped.t + 1, gradScale: 1 / skipped.scale },
        slots,
      }));
      const weight = (this.options.pixelWeight ?? 1) / this.count;
      const lossScale = { ok: ok.scale, skipped: skipped.scale };
      this.setL1(l1LossGrad(this.count, weight, { half: true, lossScale, slots }).params);
      this.setCheck(checkFinite(this.total, slots.own).params);
    } else {
      this.t++;
      this.setAdam(adamEmaParams(this.total, { ...adam, t: this.t }));
    }
    let extraBuf: GPUBuffer | undefined;
    if (extra) {
      this.be.uploadToGPU(extra.dataId);
      extraBuf = this.be.tensorMap.get(extra.dataId)!.resource as GPUBuffer;
    }
    this.pass.submit({
      from: this.forwardEnd,
      before: (encoder) => {
        if (extraBuf) encoder.copyBufferToBuffer(extraBuf, 0, this.extra, 0, this.count * 4);
        else encoder.clearBuffer(this.extra);
        if (this.half) encoder.clearBuffer(this.half.overflow, slots.own * 4, 4);
      },
      after: (encoder) => {
        encoder.copyBufferToBuffer(this.partials, 0, staging, 0, this.nPartials * 4);
        if (this.half) {
          encoder.copyBufferToBuffer(this.half.overflow, slots.own * 4, staging, this.nPartials * 4, 4);
        }
      },
    });
    const done = this.readBack(staging, this.resolving, options.readAfter);
    this.resolving = done.catch(() => {});
    return await done;
  }

  /** A step's loss, once read back; in mixed precision, applies its outcome after the last step's. */
  private async readBack(
    staging: GPUBuffer,
    previous: Promise<unknown>,
    readAfter?: Promise<unknown>,
  ): Promise<StepResult> {
    try {
      await readAfter?.catch(() => {});
      const { sums, overflow } = await mapRead(staging, (mapped) => ({
        sums: new Float32Array(mapped.slice(0, this.nPartials * 4)),
        overflow: this.half
          ? new Uint32Array(mapped.slice(this.nPartials * 4, this.nPartials * 4 + 4))[0]
          : 0,
      }));
      await previous;
      let sum = 0;
      for (const v of sums) sum += v;
      const loss = (sum / this.count) * (this.options.pixelWeight ?? 1);
      if (!this.half) return { loss };
      // the scaler now holds what this step started from (the last step's outcome is applied)
      this.lastScale = this.lossScale;
      if (overflow) this.skippedSteps++;
      this.scaler = this.after(this.scaler, overflow !== 0);
      return { loss, lossScale: this.lossScale, skipped: overflow !== 0 };
    } finally {
      this.resolvedSteps++;
    }
  }

  /**
   * Mixed precision: the loss scale and the good steps taken at it (GradScaler's state, as a
   * checkpoint keeps it) as the steps read back so far left them; undefined in f32.
   */
  get gradScaler(): GradScalerState | undefined {
    return this.half ? { scale: this.lossScale, growthTracker: this.goodSteps } : undefined;
  }

  /** Mixed precision's {@link ScalerState} as the steps read back so far left it. */
  private get scaler(): ScalerState {
    return { t: this.t, scale: this.lossScale, good: this.goodSteps };
  }

  private set scaler(s: ScalerState) {
    this.t = s.t;
    this.lossScale = s.scale;
    this.goodSteps = s.good;
  }

  /**
   * GradScaler's rule: an overflow skips the update (Adam's step is not counted) and halves the
   * scale; `growthInterval` good steps in a row double it.
   */
  private after(s: ScalerState, overflow: boolean): ScalerState {
    if (overflow) return { t: s.t, scale: s.scale / 2, good: 0 };
    const good = s.good + 1;
    return good >= (this.options.growthInterval ?? GROWTH_INTERVAL)
      ? { t: s.t + 1, scale: Math.min(MAX_LOSS_SCALE, s.scale * 2), good: 0 }
      : { t: s.t + 1, scale: s.scale, good };
  }

  /**
   * Milliseconds of one step's GPU work (PlannedPass.timeAll). Leaves the plan's parameters, moments
   * and EMA garbage: for choosing between plans, which are then disposed.
   */
  time(runs?: number): Promise<number> {
    return this.pass.timeAll(runs);
  }

  /** GPU time of the step by kind of dispatch (see PlannedPass.profile); leaves the plan's values garbage. */
  profile(runs?: number): ReturnType<PlannedPass["profile"]> {
    return this.pass.profile(runs);
  }

  /** The gradients of the last step, by parameter name, in TF layout (for tests). */
  async gradients(): Promise<Map<string, Float32Array>> {
    const all = await this.read(this.flat.g);
    const out = new Map<string, Float32Array>();
    for (const [name, l] of this.layout) {
      out.set(name, all.slice(l.offset, l.offset + l.size).map((v) => v / this.lastScale));
    }
    return out;
  }

  /**
   * Copies the plan's parameters, EMA and Adam moments back into the variables they came from. In
   * mixed precision, only once every step's loss is read back (its step count depends on them).
   */
  writeBack(): void {
    if (this.half && this.readings > this.resolvedSteps) {
      throw new Error("RRDBNetTrainPlanWebGPU: writeBack() before the last step's loss resolved");
    }
    this.copyVariables("out");
    this.options.adam.t = this.t;
  }

  /** Frees the plan's buffers (not the variables). */
  dispose(): void {
    this.pass.dispose();
    for (const b of this.staging) b.destroy();
  }

  private async read(buffer: GPUBuffer): Promise<Float32Array> {
    const staging = this.be.device.createBuffer({
      size: this.total * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.pass.submitWithTfjs((encoder) => encoder.copyBufferToBuffer(buffer, 0, staging, 0, this.total * 4));
    await staging.mapAsync(GPUMapMode.READ);
    const data = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    return data;
  }

  /** Copies the variables into the flat buffers ("in") or the flat buffers into the variables ("out"). */
  private copyVariables(direction: "in" | "out"): void {
    const { adam, ema } = this.options;
    const sets: [GPUBuffer, Map<string, tf.Variable>][] = [
      [this.flat.p, this.net.params],
      [this.flat.e, ema],
      [this.flat.m, adam.m],
      [this.flat.v, adam.v],
    ];
    const adopt: [tf.Variable, tf.TensorInfo][] = [];
    const be = this.be;
    // the f16 copy of the parameters the convolutions read, made again after they come in
    let cast: PlannedPass | undefined;
    if (direction === "in" && this.half) {
      cast = new PlannedPass(be);
      cast.add(castProgram(this.total, "f16"), { buffer: this.half.p }, [{ buffer: this.flat.p }]);
    }
    this.pass.submitWithTfjs((encoder) => {
      for (const [flat, vars] of sets) {
        for (const [name, l] of this.layout) {
          const variable = vars.get(name);
          if (!variable || variable.shape.join() !== l.shape.join()) {
            throw new Error(
              `RRDBNetTrainPlanWebGPU: no variable ${name} of shape [${l.shape}] to copy ${direction}`,
            );
          }
          if (direction === "in") {
            be.uploadToGPU(variable.dataId);
            const buffer = be.tensorMap.get(variable.dataId)!.resource as GPUBuffer;
            encoder.copyBufferToBuffer(buffer, 0, flat, l.offset * 4, l.size * 4);
          } else {
            // into a fresh buffer the variable adopts: tensors sharing its old one keep their values
            const info = be.makeTensorInfo(l.shape, "float32");
            be.uploadToGPU(info.dataId);
            const buffer = be.tensorMap.get(info.dataId)!.resource as GPUBuffer;
            encoder.copyBufferToBuffer(flat, l.offset * 4, buffer, 0, l.size * 4);
            adopt.push([variable, info]);
          }
        }
      }
      cast?.record(encoder);
    });
    cast?.dispose();
    for (const [variable, info] of adopt) {
      const t = tf.engine().makeTensorFromTensorInfo(info);
      variable.assign(t);
      t.dispose();
    }
  }
}
