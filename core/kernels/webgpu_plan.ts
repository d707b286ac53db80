/**
 * RRDBNet inference as a prepared plan (webgpu_pass.ts): for one input shape, every buffer,
 * uniform block and bind group of the 351 fused dispatches (see webgpu_rrdb.ts) is made once; a
 * forward copies the input in and replays them (submitted in pieces, see PlannedPass.submit). On
 * an H200 this took the forward of 1x64x64 from 106 ms (stock) to 43 ms with 3 ms of CPU. Weights
 * are bound as they are when the plan is made: rebuild the plan after changing the net's
 * parameters. Plans that run one after another can share their memory (the `arena` option).
 *
 * In half precision (`precision: "f16"` or `"f16-f32acc"`, needs `shader-f16`, see webgpu_f16.ts)
 * every map and filter of the plan is f16: the weights are converted once when the plan is made,
 * the input on the way in and the output on the way out; tensors stay f32.
 *
 * With `winograd` (opt-in) the convolutions that qualify run as Winograd F(m x m, 3x3)
 * (webgpu_winograd.ts, recorded by webgpu_conv_recorder.ts), with about three times the dispatches.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import type { Conv3x3Spec, ConvPrecision, ConvTile } from "./webgpu_conv3x3.ts";
import { castProgram, hasShaderF16 } from "./webgpu_f16.ts";
import { ConvRecorder } from "./webgpu_conv_recorder.ts";
import {
  type PassArena,
  type PassBackend,
  PlannedPass,
  ReadBack,
  type Region,
  tensorFromBuffer,
  underErrorScopes,
} from "./webgpu_pass.ts";
import type { WinogradSize } from "./webgpu_winograd.ts";
import { pixelUnshuffle, type RRDBNet, unshuffleFactor, upsamplings } from "../rrdbnet_arch.ts";

/** Options of {@link RRDBNetPlanWebGPU}. */
export interface PlanWebGPUOptions {
  /** Number format of the plan's maps, filters and products (default f32; see ConvPrecision). */
  precision?: ConvPrecision;
  /**
   * Tilings to try besides the built-in choice: each convolution gets them all, and
   * {@link RRDBNetPlanWebGPU.tune} keeps the fastest per shape on this GPU (until then the built-in
   * one runs). `true`: {@link TUNING_CANDIDATES}.
   */
  tune?: Partial<ConvTile>[] | true;
  /**
   * Runs the 3x3 convolutions that qualify (channels in multiples of 4) as Winograd F(m x m, 3x3)
   * (webgpu_winograd.ts): 4 (4x fewer multiply-adds than direct) or 2 (2.25x fewer); in the half
   * precisions with f16 storage and f32 arithmetic; more memory traffic and scratch (V and M of the
   * largest convolution, about 36 x 4 bytes per 16 output pixels and channel). Default: direct.
   */
  winograd?: WinogradSize;
  /**
   * Experimental, for timing (precision "f16" with `winograd`): the GEMMs' products in f16 too
   * (WinogradGemmSpec.halfMath). Less exact: the shipped x4plus on a 16x16 patch of the sample came
   * within 57.4 dB of its f32 plan, against 64.0 dB with f32 products (tests/webgpu_f16_test.ts).
   * Not yet timed on a GPU.
   */
  winogradHalfMath?: boolean;
  /**
   * GPU memory shared with other plans of the same net, options and weights that run one after
   * another (see PassArena): their maps and scratch, and the converted filters. The plan must not
   * outlive it.
   */
  arena?: PassArena;
}

/**
 * Tilings a tuned plan tries: 8x8 register tiles and prefetching, which a GPU's sweep has not yet
 * shown better or worse than the built-in 4x4 choice per shape.
 */
export const TUNING_CANDIDATES: Partial<ConvTile>[] = [
  { prefetch: true },
  { bm: 32, ks: 2 },
  { bm: 64, ks: 1, tm: 8, tn: 4 },
  { bm: 64, ks: 1, tm: 8, tn: 8 },
  { bm: 64, ks: 1, tm: 8, tn: 8, prefetch: true },
  { bm: 64, ks: 2, tm: 8, tn: 8 },
  { bm: 128, ks: 2, tm: 8, tn: 8 },
  { bm: 128, ks: 2, tm: 8, tn: 8, prefetch: true },
];

/** A prepared forward of `net` for inputs of one shape [n, h, w, numInCh] (webgpu only). */
export class RRDBNetPlanWebGPU {
  readonly inputShape: number[];
  readonly outputShape: number[];
  readonly precision: ConvPrecision;
  /** How many of the forward's convolutions run as Winograd (the `winograd` option). */
  readonly winogradConvs: number;
  private readonly backend: PassBackend;
  private readonly pass: PlannedPass;
  private readonly input: GPUBuffer;
  /** Where run() copies its f32 input: `input` itself, or the buffer converted into it. */
  private readonly inputF32: GPUBuffer;
  private readonly out: GPUBuffer;
  private reader?: ReadBack;

  constructor(readonly net: RRDBNet, inputShape: number[], options: PlanWebGPUOptions = {}) {
    if (tf.getBackend() !== "webgpu") throw new Error("RRDBNetPlanWebGPU: the webgpu backend is not active");
    this.backend = tf.backend() as unknown as PassBackend;
    const precision = this.precision = options.precision ?? "f32";
    const half = precision !== "f32";
    if (half && !hasShaderF16(this.backend)) {
      throw new Error(
        `RRDBNetPlanWebGPU: ${precision} needs the WebGPU feature shader-f16, which this device lacks ` +
          "(the adapter has none, or the backend started without useWebGPUWithF16)",
      );
    }
    if (options.winogradHalfMath && (precision !== "f16" || !options.winograd)) {
      throw new Error("RRDBNetPlanWebGPU: winogradHalfMath needs precision f16 and winograd");
    }
    this.pass = new PlannedPass(this.backend, options.arena);
    // whatever is made before an error (a BufferLimitError halfway, say) is freed, not leaked
    using onError = new DisposableStack();
    onError.defer(() => this.pass.dispose());
    const { numFeat: nf, numGrowCh: gc, numBlock, numOutCh } = net.config;
    const [n, hh, ww] = inputShape;
    const unshuffle = unshuffleFactor(net.config);
    const ups = upsamplings(net.config);
    if (hh % unshuffle || ww % unshuffle) {
      throw new Error(`RRDBNetPlanWebGPU: sides must be divisible by ${unshuffle}`);
    }
    const h = hh / unshuffle, w = ww / unshuffle;
    const cin = inputShape[3] * unshuffle * unshuffle;
    this.inputShape = inputShape;
    const H = h * 2 ** ups, W = w * 2 ** ups;
    this.outputShape = [n, H, W, numOutCh];
    const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
    const buf = (shape: number[]) => this.pass.buffer(size(shape) * (half ? 2 : 4));
    const whole = (buffer: GPUBuffer): Region => ({ buffer });
    // f16 copies of the weights, converted by one submit of cast dispatches
    const setup = new PlannedPass(this.backend);
    onError.defer(() => setup.dispose());
    const param = (name: string): Region => {
      const v = net.params.get(name);
      if (!v) throw new Error(`RRDBNetPlanWebGPU: the net has no parameter ${name}`);
      this.backend.uploadToGPU(v.dataId);
      const buffer = this.backend.tensorMap.get(v.dataId)!.resource as GPUBuffer;
      if (!half) return { buffer };
      const copy = this.pass.kept(buffer, "f16", size(v.shape) * 2);
      if (copy.made) setup.add(castProgram(v.size, "f16"), whole(copy.buffer), [{ buffer }]);
      return whole(copy.buffer);
    };
    const f = [n, h, w, nf];
    this.input = buf([n, h, w, cin]);
    const inputF32 = half ? this.pass.buffer(size([n, h, w, cin]) * 4) : this.input;
    if (half) this.pass.add(castProgram(size([n, h, w, cin]), "f16"), whole(this.input), [whole(inputF32)]);
    const feat = buf(f), trunk = [buf(f), buf(f)], rdbOut = [buf(f), buf(f)], grow = buf([n, h, w, 4 * gc]);
    const body = buf(f), hr = buf([n, H, W, nf]);
    const up = Array.from({ length: ups }, (_, k) => buf([n, 2 ** (k + 1) * h, 2 ** (k + 1) * w, nf]));
    const outHalf = buf(this.outputShape);
    this.out = half ? this.pass.buffer(size(this.outputShape) * 4) : outHalf;
    const fwd = new ConvRecorder(this.pass, {
      precision,
      param,
      candidates: options.tune === true ? TUNING_CANDIDATES : options.tune ?? [],
      winograd: options.winograd
        ? { m: options.winograd, setup, halfMath: options.winogradHalfMath }
        : undefined,
    });
    const conv = fwd.conv.bind(fwd);
    const base = { n, h, w };
    conv({ ...base, c0: cin, x0Stride: cin, cout: nf, bias: true }, feat, {
      x0: this.input,
      weight: "conv_first",
    });
    let x = feat;
    for (let b = 0; b < numBlock; b++) {
      const rrdbIn = x;
      for (let r = 1; r <= 3; r++) {
        const last = r === 3;
        const out = last ? trunk[b % 2] : rdbOut[r - 1];
        fwd.denseBlock(base, {
          nf,
          gc,
          x,
          grow,
          out,
          name: `body.${b}.rdb${r}`,
          skip: last ? rrdbIn : undefined,
        });
        x = out;
      }
    }
    const lin = (cout: number, extra: Partial<Conv3x3Spec>, b2: { n: number; h: number; w: number }) => ({
      ...b2,
      c0: nf,
      x0Stride: nf,
      cout,
      bias: true,
      ...extra,
    });
    conv(lin(nf, { res2Scale: 1 }, base), body, { x0: x, weight: "conv_body", res2: feat });
    const lrelu = { activation: "leakyrelu" as const, alpha: 0.2 };
    let hrIn = body;
    up.forEach((out, k) => {
      const m = 2 ** (k + 1);
      conv(lin(nf, { ...lrelu, upsample: true }, { n, h: m * h, w: m * w }), out, {
        x0: hrIn,
        weight: `conv_up${k + 1}`,
      });
      hrIn = out;
    });
    conv(lin(nf, lrelu, { n, h: H, w: W }), hr, { x0: hrIn, weight: "conv_hr" });
    conv(lin(numOutCh, {}, { n, h: H, w: W }), outHalf, { x0: hr, weight: "conv_last" });
    if (half) this.pass.add(castProgram(size(this.outputShape), "f32"), whole(this.out), [whole(outHalf)]);
    this.inputF32 = inputF32;
    this.winogradConvs = fwd.winogradConvs;
    if (setup.size) setup.submitWithTfjs((encoder) => setup.record(encoder));
    setup.dispose();
    onError.move();
  }

  /** `net.apply(x)` for x of the plan's input shape. */
  run(x: tf.Tensor4D): tf.Tensor4D {
    this.submit(x);
    // A copy the caller owns: the plan's output buffer is overwritten by the next run.
    return tensorFromBuffer(this.out, this.outputShape as [number, number, number, number]);
  }

  /**
   * `net.apply(x)` straight into host memory, NHWC floats of {@link outputShape}: no tensor, and a
   * staging buffer the plan keeps (see ReadBack).
   */
  read(x: tf.Tensor4D): Promise<Float32Array> {
    this.submit(x);
    this.reader ??= new ReadBack(this.backend);
    return this.reader.read(this.out, this.outputShape.reduce((a, b) => a * b, 1));
  }

  /**
   * Submits the forward of x (of the plan's input shape); `then` records more work into the same
   * encoder after it, reading the output where the forward left it (`output`: f32 NHWC of
   * {@link outputShape}, overwritten by the plan's next run), as the Upscaler's GPU tile blending does.
   */
  submit(x: tf.Tensor4D, then?: (encoder: GPUCommandEncoder, output: GPUBuffer) => void): void {
    if (x.shape.join() !== this.inputShape.join()) {
      throw new Error(`RRDBNetPlanWebGPU: input [${x.shape}] differs from the plan's [${this.inputShape}]`);
    }
    const u = unshuffleFactor(this.net.config);
    const input = u === 1 ? x : tf.tidy(() => pixelUnshuffle(x, u));
    const be = this.backend;
    be.uploadToGPU(input.dataId);
    const inBuf = be.tensorMap.get(input.dataId)!.resource as GPUBuffer;
    // Into tfjs's own encoder, after whatever it has recorded (the input's upload, for one).
    this.pass.submit({
      before: (encoder) => encoder.copyBufferToBuffer(inBuf, 0, this.inputF32, 0, input.size * 4),
      after: then && ((encoder) => then(encoder, this.out)),
    });
    if (input !== x) input.dispose();
  }

  /**
   * Times the tilings the plan was made with (`tune` option) per convolution shape on this GPU and
   * keeps the fastest; returns the choice per shape. Call before the first run (it leaves garbage
   * in the plan's buffers, which a run overwrites).
   */
  tune(runs?: number): Promise<Record<string, string>> {
    return this.pass.tune(runs);
  }

  /** The tilings each convolution shape can run with (the `tune` option), and how to pick them. */
  get tilings(): Record<string, string[]> {
    return this.pass.choiceGroups;
  }

  /** Runs each shape with the tiling named (as {@link tune} returns them), without timing. */
  useTilings(chosen: Record<string, string>): void {
    this.pass.choose(chosen);
  }

  /**
   * Milliseconds of one forward on this GPU (PlannedPass.timeAll). Leaves garbage in the plan's
   * buffers, which a run overwrites.
   */
  time(runs?: number): Promise<number> {
    return this.pass.timeAll(runs);
  }

  /** GPU time of a forward by kind of dispatch (see PlannedPass.profile). */
  profile(runs?: number): ReturnType<PlannedPass["profile"]> {
    return this.pass.profile(runs);
  }

  /** Frees the plan's buffers (not the net's). */
  dispose(): void {
    this.pass.dispose();
    this.reader?.dispose();
  }
}

/** What {@link fastestPlan} measured for one way of running the convolutions. */
export interface PlanTiming {
  /** 0: direct; else Winograd F(m x m). */
  winograd: 0 | WinogradSize;
  /** Median ms per forward; absent where the plan could not be made. */
  ms?: number;
  /** Why the plan could not be made (too large for the device's buffers, out of memory). */
  error?: string;
}

/**
 * Times the plans `make` makes for each way of running the convolutions, one at a time (each made,
 * timed, freed: one plan's memory at a time, and timing leaves a plan's buffers garbage), and names
 * the fastest. A variant that cannot be made drops out with its reason; when none can, the first
 * one's error is thrown. Shared by the forward's {@link fastestPlan} and the trainer's.
 */
export async function timeVariants(
  variants: (0 | WinogradSize)[],
  make: (winograd: 0 | WinogradSize) => Promise<{ time(): Promise<number>; dispose(): void }>,
): Promise<{ winograd: 0 | WinogradSize; timings: PlanTiming[] }> {
  const timings: PlanTiming[] = [];
  let firstError: unknown;
  for (const winograd of variants) {
    let plan: { time(): Promise<number>; dispose(): void } | undefined;
    try {
      plan = await make(winograd);
      timings.push({ winograd, ms: await plan.time() });
    } catch (e) {
      firstError ??= e;
      timings.push({ winograd, error: (e as Error).message });
    } finally {
      plan?.dispose();
    }
  }
  const timed = timings.filter((t) => t.ms !== undefined);
  if (!timed.length) throw firstError;
  return { winograd: timed.reduce((a, b) => (b.ms! < a.ms! ? b : a)).winograd, timings };
}

/**
 * The faster plan for inputs of `shape` on this GPU, direct or Winograd F(4x4) (in any precision),
 * by {@link timeVariants} (each checked with WebGPU's error scopes, timed by
 * {@link RRDBNetPlanWebGPU.time}), then made again: cuDNN's benchmark mode, for the forward as a
 * whole, since which wins depends on the GPU and the shape.
 */
export async function fastestPlan(
  net: RRDBNet,
  shape: number[],
  options: Omit<PlanWebGPUOptions, "winograd" | "arena"> & {
    runs?: number;
    /** The arena the chosen plan takes its memory from, per way of running the convolutions (the timed ones have their own). */
    arena?: (winograd: 0 | WinogradSize) => PassArena;
  } = {},
): Promise<{ plan: RRDBNetPlanWebGPU; winograd: 0 | WinogradSize; timings: PlanTiming[] }> {
  const { runs, arena, ...planOptions } = options;
  const device = (tf.backend() as unknown as PassBackend).device;
  const checked = async (winograd: 0 | WinogradSize, shared?: PassArena) => {
    const made = underErrorScopes(
      device,
      () =>
        new RRDBNetPlanWebGPU(net, shape, { ...planOptions, winograd: winograd || undefined, arena: shared }),
    );
    const error = await made.error;
    if (error) {
      made.value.dispose();
      throw error;
    }
    return made.value;
  };
  const { winograd, timings } = await timeVariants([0, 4], async (w) => {
    const plan = await checked(w);
    return { time: () => plan.time(runs), dispose: () => plan.dispose() };
  });
  return { plan: await checked(winograd, arena?.(winograd)), winograd, timings };
}

/**
 * What a timed choice of convolutions picked, for inputs of which shape in which number format, and
 * what each variant measured.
 */
export interface ConvChoice {
  winograd: 0 | WinogradSize;
  shape: number[];
  precision: ConvPrecision;
  timings: PlanTiming[];
}

/** One line on what {@link fastestPlan} chose for a patch of `shape`, and the times it chose by. */
export function describeChoice(choice: Omit<ConvChoice, "precision">): string {
  const name = (m: number) => (m ? `Winograd F(${m}x${m})` : "direct");
  const [, h, w] = choice.shape;
  const times = choice.timings.map((t) =>
    `${name(t.winograd)} ${t.ms !== undefined ? `${t.ms.toFixed(1)} ms` : `could not run (${t.error})`}`
  );
  return `${name(choice.winograd)} (timed on a ${w}x${h} patch: ${times.join(", ")})`;
}
