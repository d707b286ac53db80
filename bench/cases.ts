/**
 * What `deno task bench` measures: cases (a forward pass, a training step, a gan-stage step or an
 * upscale on a batch of LR images), backend specs, and the timing of one case on the current tfjs
 * backend.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type BackendName, backendThreads } from "../core/backend.ts";
import { ESRGAN_X4, RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { describeChoice, fastestPlan, RRDBNetPlanWebGPU } from "../core/kernels/webgpu_plan.ts";
import type { PassBackend } from "../core/kernels/webgpu_pass.ts";
import type { ConvPrecision } from "../core/kernels/webgpu_conv3x3.ts";
import type { WinogradSize } from "../core/kernels/webgpu_winograd.ts";
import { RRDBNetPlanWasm } from "../core/kernels/wasm_plan.ts";
import { RRDBNetTrainPlanWebGPU } from "../core/kernels/webgpu_train_plan.ts";
import { RRDBNetTrainPlanWasm } from "../core/kernels/wasm_train_plan.ts";
import { Adam } from "../train/adam.ts";
import { DEFAULT_TILE, DEFAULT_TILE_PAD, Upscaler } from "../core/upscaler.ts";
import { PerceptualLoss } from "../core/losses/perceptual_loss.ts";
import { randomVgg19Weights } from "../core/vgg19_arch.ts";
import { PRESETS, type TrainConfig } from "../train/config.ts";
import { Trainer } from "../train/trainer.ts";

/** The shapes issue 6 names: forward on 1x64x64, 16x32x32, 1x256x256 LR and a training step. */
export const ALL_CASES = ["forward:1x64x64", "forward:16x32x32", "forward:1x256x256", "train:16x32x32"];

/** The LR side of gan cases: BasicSR's VGG-style discriminator takes 128x128 (x4). */
const GAN_LQ = 32;

/**
 * One measurement on a batch of N HxW LR images: a forward pass, a training step, or an upscale
 * (the Upscaler, tiled as `deno task upscale` tiles: 128-pixel tiles (or `tile`) overlapping by 24,
 * blended; PyTorch: Real-ESRGAN's tile loop with the same tiles, each tile's core pasted).
 */
export interface BenchCase {
  kind: "forward" | "train" | "gan" | "upscale";
  n: number;
  h: number;
  w: number;
  /** Upscale cases: the tile side in LR pixels (`upscale:1x512x512/256`); absent: {@link DEFAULT_TILE}. */
  tile?: number;
}

/**
 * Parses `forward:1x64x64`, `train:16x32x32`, `gan:16x32x32` or `upscale:1x256x256` (LR size; an
 * upscale may name its tile side: `upscale:1x512x512/256`).
 */
export function parseCase(spec: string): BenchCase {
  const m = /^(forward|train|gan|upscale):(\d+)x(\d+)x(\d+)(?:\/(\d+))?$/.exec(spec);
  if (!m || (m[5] !== undefined && m[1] !== "upscale")) {
    throw new Error(
      `bad case "${spec}": expected forward:NxHxW, train:NxHxW, gan:NxHxW or upscale:NxHxW[/TILE], e.g. forward:1x64x64`,
    );
  }
  const [n, h, w] = [m[2], m[3], m[4]].map(Number);
  if (!(n > 0 && h > 0 && w > 0)) throw new Error(`bad case "${spec}": sizes must be positive`);
  if (m[5] !== undefined && !(Number(m[5]) > 0)) {
    throw new Error(`bad case "${spec}": the tile must be positive`);
  }
  if (m[1] === "gan" && (h !== GAN_LQ || w !== GAN_LQ)) {
    throw new Error(
      `bad case "${spec}": gan steps take ${GAN_LQ}x${GAN_LQ} LR (the discriminator's 128x128 GT)`,
    );
  }
  return { kind: m[1] as BenchCase["kind"], n, h, w, ...(m[5] !== undefined ? { tile: Number(m[5]) } : {}) };
}

/** Writes a case back as its spec. */
export function caseName(c: BenchCase): string {
  return `${c.kind}:${c.n}x${c.h}x${c.w}${c.tile ? `/${c.tile}` : ""}`;
}

/**
 * A backend as the bench runs it: `wasm:N` (N threads), `cpu`, `webgpu`, `webgpu-custom` (our
 * kernels under tfjs's ops), `webgpu-plan` (our kernels as prepared passes: RRDBNetPlanWebGPU for
 * forwards, RRDBNetTrainPlanWebGPU for training steps), `webgpu-plan:f16` / `webgpu-plan:f16-f32acc`
 * (both in half precision: the forward plan, the training step in mixed precision).
 */
export interface BackendSpec {
  name: BackendName;
  threads?: number;
  custom?: boolean;
  plan?: boolean;
  /** Number format of the webgpu plan (default f32). */
  precision?: ConvPrecision;
  /** The webgpu forward plan times its candidate tilings per shape first (`+tune`). */
  tune?: boolean;
  /**
   * The webgpu plans run the forward's 3x3 convolutions as Winograd F(m x m) (`+winograd`: 4,
   * `+winograd2`: 2), or as whichever of direct and Winograd a timed forward finds faster (`+auto`,
   * forwards and upscales: core/kernels/webgpu_plan.ts's fastestPlan).
   */
  winograd?: WinogradSize | "auto";
  /** Upscale cases read each tile back and blend on the host (`+hostblend`), as before the GPU blended them. */
  hostBlend?: boolean;
  /** The plans submit each pass whole (`+onesubmit`), as before they submitted it in growing pieces. */
  oneSubmit?: boolean;
  /**
   * Winograd's GEMMs multiply in f16 too (`+halfmath`, with `:f16` and `+winograd`/`+winograd2`;
   * forwards only): RRDBNetPlanWebGPU's experimental `winogradHalfMath`.
   */
  winogradHalfMath?: boolean;
  /**
   * Every read-back and wait for the GPU awaits mapAsync's promise (`+latemap`: setEarlyMap(false)),
   * as before the plans read early past Deno 2.9.6's 10 ms (core/kernels/webgpu_map.ts).
   */
  lateMap?: boolean;
  /**
   * The backend's process runs with V8's WebAssembly bounds checks off (`+unchecked`, wasm backends):
   * unsafe, for measuring only. Deno does not enable V8's trap handler (denoland/deno#35658), so V8
   * checks every wasm load and store in the code; this row shows what those checks cost.
   */
  unchecked?: boolean;
}

/** The V8 flag a `+unchecked` backend's process runs with. */
export const UNCHECKED_V8_FLAGS = "--v8-flags=--no-wasm-bounds-checks";

/**
 * Parses a backend spec: `wasm` (all cores), `wasm:N`, `wasm-plan`, `wasm-plan:N` (our CPU
 * kernels), `cpu`, `webgpu`, `webgpu-custom`, `webgpu-plan`, `webgpu-plan:f16`, `webgpu-plan:f16-f32acc`;
 * a webgpu plan with `+tune` times its candidate tilings per shape before it runs, with
 * `+winograd` / `+winograd2` runs the forward's convolutions as Winograd F(4x4) / F(2x2) (f32),
 * with `+auto` as the faster of direct and Winograd on the first run (timed); with `+hostblend` its
 * upscales blend their tiles on the host (Upscaler.gpuBlend off); with `+onesubmit` its passes are
 * submitted whole (setFirstSubmit(0)); with `+latemap` every read-back awaits mapAsync's promise
 * (setEarlyMap(false)). A wasm backend with `+unchecked` runs without V8's bounds checks
 * ({@link BackendSpec.unchecked}).
 */
export function parseBackend(spec: string): BackendSpec {
  const [base, ...flags] = spec.split("+");
  if (flags.length === 1 && flags[0] === "unchecked") {
    const parsed = parseBackend(base);
    if (parsed.name !== "wasm") {
      throw new Error(`bad backend "${spec}": +unchecked goes after wasm or wasm-plan`);
    }
    return { ...parsed, unchecked: true };
  }
  if (flags.length) {
    const known: Record<string, Partial<BackendSpec>> = {
      tune: { tune: true },
      winograd: { winograd: 4 },
      winograd2: { winograd: 2 },
      auto: { winograd: "auto" },
      hostblend: { hostBlend: true },
      onesubmit: { oneSubmit: true },
      latemap: { lateMap: true },
      halfmath: { winogradHalfMath: true },
    };
    const parsed = parseBackend(base);
    if (!parsed.plan || parsed.name !== "webgpu" || flags.some((f) => !known[f])) {
      throw new Error(
        `bad backend "${spec}": +tune, +winograd, +winograd2, +auto, +hostblend, +onesubmit, +latemap and +halfmath go after webgpu-plan`,
      );
    }
    if (flags.filter((f) => f.startsWith("winograd") || f === "auto").length > 1) {
      throw new Error(`bad backend "${spec}": one of +winograd, +winograd2 and +auto`);
    }
    if (
      flags.includes("halfmath") &&
      (parsed.precision !== "f16" || !flags.some((f) => f === "winograd" || f === "winograd2"))
    ) {
      throw new Error(`bad backend "${spec}": +halfmath needs webgpu-plan:f16 and +winograd or +winograd2`);
    }
    return Object.assign(parsed, ...flags.map((f) => known[f]));
  }
  const m = /^(wasm|wasm-plan|cpu|webgpu|webgpu-custom|webgpu-plan)(?::(\d+|f16|f16-f32acc))?$/.exec(spec);
  const numeric = m?.[2] && /^\d+$/.test(m[2]);
  if (!m || (numeric && !m[1].startsWith("wasm")) || (m[2] && !numeric && m[1] !== "webgpu-plan")) {
    throw new Error(
      `bad backend "${spec}": expected wasm, wasm:N, wasm-plan, wasm-plan:N, cpu, webgpu, webgpu-custom, ` +
        'webgpu-plan or webgpu-plan:f16 / :f16-f32acc (each plan + "+tune")',
    );
  }
  if (m[1] === "webgpu-custom") return { name: "webgpu", custom: true };
  if (m[1] === "webgpu-plan") {
    return m[2]
      ? { name: "webgpu", plan: true, precision: m[2] as ConvPrecision }
      : { name: "webgpu", plan: true };
  }
  if (!m[1].startsWith("wasm")) return { name: m[1] as BackendName };
  const threads = m[2] ? Number(m[2]) : navigator.hardwareConcurrency ?? 1;
  if (!(threads >= 1)) throw new Error(`bad backend "${spec}": threads must be at least 1`);
  return m[1] === "wasm-plan" ? { name: "wasm", threads, plan: true } : { name: "wasm", threads };
}

/** The spec's label, as tables print it. */
export function backendLabel(b: BackendSpec): string {
  return b.name === "wasm"
    ? `${b.plan ? "wasm-plan" : "wasm"}:${b.threads}${b.unchecked ? "+unchecked" : ""}`
    : b.custom
    ? "webgpu-custom"
    : b.plan
    ? `webgpu-plan${b.precision && b.precision !== "f32" ? `:${b.precision}` : ""}${
      b.winograd === "auto" ? "+auto" : b.winograd ? `+winograd${b.winograd === 2 ? "2" : ""}` : ""
    }${b.tune ? "+tune" : ""}${b.hostBlend ? "+hostblend" : ""}${b.oneSubmit ? "+onesubmit" : ""}${
      b.lateMap ? "+latemap" : ""
    }${b.winogradHalfMath ? "+halfmath" : ""}`
    : b.name;
}

/** The net to time: the model file's weights, or BasicSR's random initialisation (same cost). */
export async function loadNet(
  model: string | null,
  options: { trainable?: boolean; blocks?: number } = {},
): Promise<RRDBNet> {
  if (model) {
    const file = decodeModelFile(await Deno.readFile(model), model);
    return new RRDBNet(file.config, { weights: file.stateDict, trainable: options.trainable });
  }
  const config: RRDBNetConfig = { ...ESRGAN_X4, numBlock: options.blocks ?? ESRGAN_X4.numBlock };
  return new RRDBNet(config, { seed: 0, trainable: options.trainable });
}

/** Kernel time by kernel name from one run under tf.profile. */
export interface KernelProfile {
  kernels: { name: string; ms: number; count: number }[];
  /** Wall time of the profiled run (profiling slows it); GPU time where `clock` is "gpu". */
  wall_ms: number;
  /** How the planned passes were timed: GPU timestamps, or submit to completion. */
  clock?: "gpu" | "wall";
  peak_tensor_mb: number;
}

/** A case ready to run: inputs made, optimizer built. Dispose it when done. */
export interface PreparedCase {
  /** One forward pass (returns the output) or one training step (returns the loss), read back. */
  step(): Promise<Float32Array>;
  /** One step under tf.profile (absent for upscale cases: profile their forward). */
  profile?(): Promise<KernelProfile>;
  /**
   * Training steps as `deno task train` runs them where it can (planned steps on webgpu, see
   * Trainer.overlapsSteps): `count` steps, each started before the last one's loss is read; ms per step.
   */
  stepsAhead?(count: number): Promise<number>;
  /** A forward timed until the GPU finished it, without the read-back ({@link timeToCompletion}). */
  stepDone?(): Promise<number | undefined>;
  /** The tiling a tuned plan chose per convolution shape (after the first step). */
  tilings?: Record<string, string>;
  /** What `+auto` chose, and the times it chose by (after the first step). */
  convs?: string;
  dispose(): void;
}

/**
 * Prepares a case on the current backend. Forward: `net.apply` and reading the output back.
 * Train: L1 loss, `tf.variableGrads`, Adam's update, reading the loss back (`net` must be
 * trainable, and tfjs's gradients registered: `import "@tensorflow/tfjs"`).
 */
export function prepareCase(net: RRDBNet, c: BenchCase, seed = 1): PreparedCase {
  if (c.kind === "upscale") return prepareUpscale(net, c, seed);
  if (c.kind === "gan") return prepareGan(net, c, seed);
  return withPlan ? preparePlanned(net, c, seed) : prepareOps(net, c, seed);
}

/**
 * An upscale through the Upscaler with 128-pixel tiles ({@link DEFAULT_TILE}) or the case's, as
 * PyTorch's loop in torch_bench.py, on every backend (the CPU kernels' own default is larger), read back and blended: our
 * kernels where the backend is a plan (in its precision and Winograd size), tfjs's ops on wasm and
 * cpu otherwise. On webgpu the Upscaler always runs planned passes: the stock `webgpu` and
 * `webgpu-custom` backends are refused rather than timed under a name that is not what ran.
 */
function prepareUpscale(net: RRDBNet, c: BenchCase, seed: number): PreparedCase {
  if (tf.getBackend() === "webgpu" && !withPlan) {
    throw new Error("upscale cases run the Upscaler, which runs planned passes on webgpu: use webgpu-plan");
  }
  if (planOptions.tune) throw new Error("upscale cases run the Upscaler, which does not tune (+tune)");
  const up = new Upscaler(net);
  up.cpuKernels = withPlan;
  if (tf.getBackend() === "webgpu") {
    [up.precision, up.winograd] = [planOptions.precision, planOptions.winograd ?? 0];
    up.gpuBlend = !planOptions.hostBlend;
  }
  const x = tf.randomUniform([c.n, c.h, c.w, net.config.numInCh], 0, 1, "float32", seed) as tf.Tensor4D;
  const prepared: PreparedCase = {
    async step() {
      const y = await up.upscaleTensor(x, { tile: c.tile ?? DEFAULT_TILE, tilePad: DEFAULT_TILE_PAD });
      if (up.convChoice) prepared.convs = describeChoice(up.convChoice);
      try {
        return (await y.data()) as Float32Array;
      } finally {
        y.dispose();
      }
    },
    dispose: () => (up.dispose({ keepNet: true }), x.dispose()),
  };
  return prepared;
}

/**
 * One gan-stage step as `deno task train` takes it (train/trainer.ts: G, then D; L_G = L_percep +
 * 5e-3 L_Ra + 1e-2 L1), from G's weights, with random VGG19 weights to conv5_4 (the same cost):
 * G's part planned where the backend is a plan (webgpu: our passes, and VGG's and D's 3x3
 * convolutions on our registered kernels; wasm-plan: the CPU kernels), tfjs's autodiff with stock
 * kernels otherwise. PyTorch: BasicSR's ESRGANModel step.
 */
function prepareGan(net: RRDBNet, c: BenchCase, seed: number): PreparedCase {
  if (planOptions.tune) throw new Error("gan cases run the trainer, which does not tune (+tune)");
  const { numFeat, numBlock, numGrowCh, scale, numUpsample } = net.config;
  if (scale === 8 || numUpsample !== undefined) throw new Error("gan cases train BasicSR's RRDBNet only");
  const config: TrainConfig = {
    ...PRESETS.gan,
    numFeat,
    numBlock,
    numGrowCh,
    scale,
    batchSize: c.n,
    gtSize: c.h * scale,
    plannedStep: withPlan,
    precision: planOptions.precision,
    winograd: planOptions.winograd ?? 0,
    seed,
  };
  let trainer: Trainer | undefined;
  const random = (size: number, s: number) =>
    tf.tidy(() => tf.randomUniform([size], 0, 1, "float32", s).dataSync());
  const gtSize = c.h * scale;
  const batch = {
    step: 0,
    n: c.n,
    lqSize: c.h,
    gtSize,
    lq: random(c.n * c.h * c.w * 3, seed) as Float32Array,
    gt: random(c.n * gtSize * gtSize * 3, seed + 1) as Float32Array,
  };
  return {
    async step() {
      // made in the warm-up (G's weights are read asynchronously)
      trainer ??= Trainer.create(config, {
        pretrainG: await net.stateDict(),
        perceptual: PerceptualLoss.fromWeights(randomVgg19Weights("conv5_4", seed)),
      });
      const l = await trainer.trainStep(batch);
      return new Float32Array([l.l_pix, l.l_percep ?? NaN, l.l_gan ?? NaN]);
    },
    dispose: () => trainer?.dispose(),
  };
}

let withPlan = false;
let planOptions: {
  precision: ConvPrecision;
  tune: boolean;
  winograd?: WinogradSize | "auto";
  hostBlend?: boolean;
  winogradHalfMath?: boolean;
} = {
  precision: "f32",
  tune: false,
};

/**
 * Makes {@link prepareCase} use core/kernels' plans: prepared passes on webgpu (in `precision`;
 * forwards tuned per shape first with `tune`, Winograd with `winograd` (its GEMMs in f16 with
 * `winogradHalfMath`), upscales blended on the host with `hostBlend`), the CPU kernels on wasm.
 */
export function usePlannedPasses(
  on: boolean,
  options: Omit<typeof planOptions, "precision" | "tune"> & { precision?: ConvPrecision; tune?: boolean } =
    {},
): void {
  withPlan = on;
  planOptions = { ...options, precision: options.precision ?? "f32", tune: !!options.tune };
}

/**
 * A case through core/kernels' prepared passes: the forward plan (output read back by RRDBNetPlanWebGPU.read), or the
 * planned training step (L1, Adam; the EMA is written over the net's own weights buffer copy), on
 * WebGPU or on the CPU kernels (wasm).
 */
function preparePlanned(net: RRDBNet, c: BenchCase, seed: number): PreparedCase {
  const s = net.config.scale;
  const x = tf.randomUniform([c.n, c.h, c.w, net.config.numInCh], 0, 1, "float32", seed) as tf.Tensor4D;
  if (tf.getBackend() === "wasm" && c.kind === "forward") {
    const plan = new RRDBNetPlanWasm(net, { threads: backendThreads() });
    const data = x.dataSync() as Float32Array;
    x.dispose();
    return {
      step: () => plan.run(data, [c.n, c.h, c.w, net.config.numInCh]),
      profile: () => planProfile(plan),
      dispose: () => plan.dispose(),
    };
  }
  const { winograd } = planOptions;
  if (c.kind === "forward") {
    const options = { precision: planOptions.precision, tune: planOptions.tune || undefined };
    let plan = winograd === "auto" ? undefined : new RRDBNetPlanWebGPU(net, x.shape, {
      ...options,
      winograd,
      winogradHalfMath: planOptions.winogradHalfMath,
    });
    const prepared: PreparedCase = {
      async step() {
        // in the warm-up: the convolutions' algorithm (+auto), then their tilings (+tune)
        if (!plan) {
          const made = await fastestPlan(net, x.shape, options);
          plan = made.plan;
          prepared.convs = describeChoice({ ...made, shape: x.shape });
        }
        if (planOptions.tune && !prepared.tilings) prepared.tilings = await plan.tune();
        return await plan.read(x);
      },
      stepDone: () => timeToCompletion(() => plan!.run(x)),
      profile: () => planProfile(plan!),
      dispose: () => (plan?.dispose(), x.dispose()),
    };
    return prepared;
  }
  if (c.h !== c.w) throw new Error(`the planned training step takes square patches, not ${c.h}x${c.w}`);
  if (winograd === "auto") throw new Error("+auto is for forwards and upscales, not training steps");
  const gt = tf.randomUniform([c.n, c.h * s, c.w * s, net.config.numOutCh], 0, 1, "float32", seed + 1);
  const adam = new Adam(net.params, { betas: [0.9, 0.99] });
  const options = { batch: c.n, lqSize: c.h, ema: net.params, adam, emaDecay: 0.999 };
  const plan = tf.getBackend() === "wasm"
    ? new RRDBNetTrainPlanWasm(net, { ...options, threads: backendThreads() })
    : new RRDBNetTrainPlanWebGPU(net, {
      ...options,
      precision: planOptions.precision,
      winograd,
    });
  let batch: { lq: Float32Array; gt: Float32Array } | undefined;
  const data = async () =>
    batch ??= { lq: (await x.data()) as Float32Array, gt: (await gt.data()) as Float32Array };
  const ahead = plan instanceof RRDBNetTrainPlanWebGPU;
  return {
    async step() {
      return new Float32Array([(await plan.step(await data(), 1e-4)).loss]);
    },
    stepsAhead: ahead
      ? async (count) => {
        const b = await data();
        const t0 = performance.now();
        let last = plan.step(b, 1e-4);
        for (let i = 1; i < count; i++) {
          const next = plan.step(b, 1e-4);
          await last;
          last = next;
        }
        await last;
        return (performance.now() - t0) / count;
      }
      : undefined,
    profile: () => planProfile(plan),
    dispose() {
      plan.dispose();
      adam.dispose();
      tf.dispose([x, gt]);
    },
  };
}

/**
 * Milliseconds from calling `run` (which queues GPU work and returns a tensor) to the GPU's
 * completion of it, what torch.cuda.synchronize waits for: Deno 2.9.6's mapAsync blocks until the
 * queue is idle, then sleeps 10 ms before it resolves (ext/webgpu/buffer.rs), so its return marks the
 * completion. Undefined, saying why, where the read resolves within 5 ms of that return (a Deno
 * that no longer blocks there would make the figure meaningless).
 */
async function timeToCompletion(run: () => tf.Tensor): Promise<number | undefined> {
  const be = tf.backend() as unknown as PassBackend;
  const probe = be.device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    const t0 = performance.now();
    const out = run();
    const buffer = be.tensorMap.get(out.dataId)!.resource as GPUBuffer;
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    be.commandEncoder!.copyBufferToBuffer(buffer, 0, probe, 0, 4);
    be.submitQueue();
    const read = probe.mapAsync(GPUMapMode.READ);
    const done = performance.now() - t0;
    await read;
    const gap = performance.now() - t0 - done;
    out.dispose();
    if (gap >= 5) return done;
    console.warn(`no "done" time: the read-back resolved ${gap.toFixed(1)} ms after mapAsync returned`);
    return undefined;
  } finally {
    probe.destroy();
  }
}

/**
 * A plan's GPU time by kind of dispatch, each kind replayed alone; wall: all of them replayed
 * (the plan's values are garbage afterwards).
 */
async function planProfile(plan: {
  profile(): Promise<{ kernels: KernelProfile["kernels"]; all_ms: number; clock?: "gpu" | "wall" }>;
}): Promise<KernelProfile> {
  const { kernels, all_ms, clock } = await plan.profile();
  return { kernels, wall_ms: all_ms, peak_tensor_mb: NaN, clock };
}

function prepareOps(net: RRDBNet, c: BenchCase, seed: number): PreparedCase {
  const s = net.config.scale;
  const vars = [...net.params.values()];
  if (c.kind === "train" && !vars.every((v) => v.trainable)) {
    throw new Error("train cases need an RRDBNet with trainable: true");
  }
  const x = tf.randomUniform([c.n, c.h, c.w, net.config.numInCh], 0, 1, "float32", seed) as tf.Tensor4D;
  const target = c.kind === "train"
    ? tf.randomUniform([c.n, c.h * s, c.w * s, net.config.numOutCh], 0, 1, "float32", seed + 1)
    : undefined;
  const optimizer = c.kind === "train" ? tf.train.adam(1e-4) : undefined;
  const readBack = async (t: tf.Tensor) => {
    try {
      return (await t.data()) as Float32Array;
    } finally {
      t.dispose();
    }
  };
  const step = c.kind === "forward" ? () => readBack(net.apply(x)) : () => {
    const { value, grads } = tf.variableGrads(() => tf.mean(tf.abs(tf.sub(net.apply(x), target!))), vars);
    optimizer!.applyGradients(grads as any);
    tf.dispose(grads);
    return readBack(value);
  };
  return {
    step,
    async profile() {
      const t0 = performance.now();
      const info = await tf.profile(step);
      const wall = performance.now() - t0;
      const byName = new Map<string, { ms: number; count: number }>();
      for (const k of info.kernels) {
        const e = byName.get(k.name) ?? { ms: 0, count: 0 };
        const ms = await k.kernelTimeMs;
        e.ms += typeof ms === "number" ? ms : NaN;
        e.count++;
        byName.set(k.name, e);
      }
      // `op__op` entries are op scopes (fused.conv2d's custom gradient) around kernels listed too
      const kernels = [...byName].filter(([name]) => !name.endsWith("__op"))
        .map(([name, e]) => ({ name, ...e })).sort((a, b) => b.ms - a.ms);
      return { kernels, wall_ms: wall, peak_tensor_mb: info.peakBytes / 2 ** 20 };
    },
    dispose() {
      x.dispose();
      target?.dispose();
      optimizer?.dispose();
    },
  };
}

/** Median of a non-empty list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Timings of one case. */
export interface CaseTiming {
  case: string;
  /** Median of the timed runs. */
  ms: number;
  times_ms: number[];
  /** For forward cases: the last output. */
  output?: Float32Array;
  profile?: KernelProfile;
}

/** Times one case in this process: `warmup` untimed runs, then `runs` timed ones; leaks no tensors. */
export async function timeCase(
  net: RRDBNet,
  c: BenchCase,
  options: { runs?: number; warmup?: number; profile?: boolean } = {},
): Promise<CaseTiming> {
  const { runs = 5, warmup = 1 } = options;
  const prepared = prepareCase(net, c);
  try {
    const times: number[] = [];
    let output: Float32Array | undefined;
    for (let i = 0; i < warmup + runs; i++) {
      const t0 = performance.now();
      const out = await prepared.step();
      if (i >= warmup) times.push(performance.now() - t0);
      if (c.kind !== "train" && c.kind !== "gan") output = out;
    }
    const profile = options.profile ? await prepared.profile?.() : undefined;
    return { case: caseName(c), ms: median(times), times_ms: times, output, profile };
  } finally {
    prepared.dispose();
  }
}

/** Peak resident set size of this process in MiB (Linux's VmHWM; elsewhere the current RSS). */
export function peakRssMb(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
    if (m) return Number(m[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

/** Largest absolute difference between two outputs (Infinity if their sizes differ). */
export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
