/**
 * Training options: one flat object, so every option is also a `--kebab-case` flag. The presets
 * `psnr` and `gan` follow BasicSR's `train_RRDBNet_PSNR_x4.yml` and `train_ESRGAN_x4.yml`; `smoke`
 * and `smoke-gan` are tiny versions that run on a CPU in minutes.
 * @module
 */
import type { Schedule } from "./schedule.ts";

/** Every training option. */
export interface TrainConfig {
  /** `psnr`: L1 only. `gan`: perceptual + RaGAN + L1, with a discriminator. */
  stage: "psnr" | "gan";
  scale: 1 | 2 | 4;
  numFeat: number;
  numBlock: number;
  numGrowCh: number;
  /** Discriminator width (VGGStyleDiscriminator num_feat). */
  dNumFeat: number;
  gtSize: number;
  batchSize: number;
  hflip: boolean;
  rot: boolean;
  /** Use at most this many training images (0: all). */
  maxImages: number;
  /** Batches made ahead of the step. */
  prefetch: number;
  seed: number;
  totalSteps: number;
  lrG: number;
  lrD: number;
  beta1: number;
  beta2: number;
  scheduler: "cosine" | "multistep";
  /** Cosine restarts: period lengths, restart weights, floor. */
  periods: number[];
  restartWeights: number[];
  etaMin: number;
  /** Multi-step: milestones and factor. */
  milestones: number[];
  gamma: number;
  pixelWeight: number;
  perceptualWeight: number;
  ganWeight: number;
  /** VGG19 layer of the perceptual loss (BasicSR layer_weights key). */
  perceptualLayer: string;
  /** VGG19 weights file (.pth or .safetensors); empty: the partial VGG19 in ../shared, with a warning. */
  vggWeights: string;
  emaDecay: number;
  /**
   * Generator to start from (model file, a shipped model's name, or a checkpoint: its EMA weights):
   * BasicSR's pretrain_network_g.
   */
  pretrainG: string;
  checkpointEvery: number;
  valEvery: number;
  /** Centre crop of each validation image in HR pixels (0: whole image). */
  valCrop: number;
  valMaxImages: number;
  /** Validation images saved as samples. */
  valSamples: number;
  logEvery: number;
  exportDtype: "fp32" | "fp16" | "int8";
  /** "": webgpu on a real GPU; else wasm (the CPU kernels) where the step can be planned, else cpu. */
  backend: "" | "webgpu" | "wasm" | "cpu";
  /**
   * On webgpu: G's forward, backward, Adam and EMA as prepared passes of our kernels
   * (core/kernels/webgpu_train_plan.ts; the gan stage's perceptual, adversarial and D terms stay tfjs
   * ops, their 3x3 convolutions on our kernels registered for tfjs, core/kernels/register.ts); on
   * wasm: the same on the CPU kernels (core/kernels/wasm_train_plan.ts), the gan stage's other terms
   * on tfjs-wasm with train/wasm_conv_grads.ts; off: tfjs's autodiff with its stock kernels
   * throughout (not on wasm).
   */
  plannedStep: boolean;
  /**
   * G's planned step on webgpu in mixed precision (opt-in): "f16" or "f16-f32acc" keep maps, their
   * gradients and a weight copy in f16 with dynamic loss scaling (core/kernels/webgpu_train_plan.ts);
   * "f32" everywhere else.
   */
  precision: "f32" | "f16" | "f16-f32acc";
  /**
   * G's planned step on webgpu with its 3x3 convolutions (forward, input and filter gradients) as
   * Winograd F(4x4, 3x3) (4) or F(2x2, 3x3) (2), in f32 (core/kernels/webgpu_winograd.ts); 0: direct;
   * "auto" (default): on webgpu in f32, whichever of direct and F(4x4) a timed step finds faster on
   * this GPU (on an H200 F(4x4): 85 against 148 ms a step of batch 16 at 32x32), elsewhere direct.
   */
  winograd: 0 | 2 | 4 | "auto";
}

const BASE: TrainConfig = {
  stage: "psnr",
  scale: 4,
  numFeat: 64,
  numBlock: 23,
  numGrowCh: 32,
  dNumFeat: 64,
  gtSize: 128,
  batchSize: 16,
  hflip: true,
  rot: true,
  maxImages: 0,
  prefetch: 2,
  seed: 0,
  totalSteps: 1_000_000,
  lrG: 2e-4,
  lrD: 1e-4,
  beta1: 0.9,
  beta2: 0.99,
  scheduler: "cosine",
  periods: [250000, 250000, 250000, 250000],
  restartWeights: [1, 1, 1, 1],
  etaMin: 1e-7,
  milestones: [50000, 100000, 200000, 300000],
  gamma: 0.5,
  pixelWeight: 1,
  perceptualWeight: 1,
  ganWeight: 5e-3,
  perceptualLayer: "conv5_4",
  vggWeights: "",
  emaDecay: 0.999,
  pretrainG: "",
  checkpointEvery: 5000,
  valEvery: 5000,
  valCrop: 0,
  valMaxImages: 0,
  valSamples: 3,
  logEvery: 100,
  exportDtype: "fp16",
  backend: "",
  plannedStep: true,
  precision: "f32",
  winograd: "auto",
};

/** Built-in presets. */
export const PRESETS: Record<string, TrainConfig> = {
  psnr: { ...BASE },
  gan: {
    ...BASE,
    stage: "gan",
    totalSteps: 400_000,
    lrG: 1e-4,
    lrD: 1e-4,
    scheduler: "multistep",
    pixelWeight: 1e-2,
  },
  smoke: {
    ...BASE,
    numFeat: 8,
    numBlock: 1,
    numGrowCh: 4,
    gtSize: 32,
    batchSize: 4,
    maxImages: 4,
    totalSteps: 200,
    lrG: 2e-3,
    periods: [200],
    restartWeights: [1],
    // 0.999 would leave the EMA at its initial weights over so few steps
    emaDecay: 0.9,
    checkpointEvery: 50,
    valEvery: 50,
    valCrop: 96,
    valMaxImages: 2,
    valSamples: 1,
    logEvery: 10,
    exportDtype: "fp32",
  },
  "smoke-gan": {
    ...BASE,
    stage: "gan",
    numFeat: 8,
    numBlock: 1,
    numGrowCh: 4,
    dNumFeat: 8,
    gtSize: 32,
    batchSize: 4,
    maxImages: 4,
    totalSteps: 20,
    lrG: 1e-4,
    lrD: 1e-4,
    scheduler: "multistep",
    milestones: [10],
    pixelWeight: 1e-2,
    emaDecay: 0.9,
    checkpointEvery: 10,
    valEvery: 10,
    valCrop: 96,
    valMaxImages: 2,
    valSamples: 1,
    logEvery: 5,
    exportDtype: "fp32",
  },
};

/** The schedule a config describes. */
export function scheduleOf(c: TrainConfig): Schedule {
  return c.scheduler === "cosine"
    ? {
      type: "CosineAnnealingRestartLR",
      periods: c.periods,
      restartWeights: c.restartWeights,
      etaMin: c.etaMin,
    }
    : { type: "MultiStepLR", milestones: c.milestones, gamma: c.gamma };
}

/** Numeric options that also take these words (their default may be one). */
const WORDS: Record<string, string[]> = { winograd: ["auto"] };

/** The type an option's value has: its default's, or "number" for one that also takes {@link WORDS}. */
const typeOf = (key: string, def: unknown) => (WORDS[key] ? "number" : typeof def);

/** `lrG` → `lr-g`. */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (m) => "-" + m.toLowerCase());
}

/** Checks types and ranges; throws one message naming `source` and the option. */
export function validateConfig(c: Record<string, unknown>, source: string): TrainConfig {
  for (const key of Object.keys(c)) {
    if (!(key in BASE)) throw new Error(`${source}: unknown option "${key}" (flag --${flagName(key)})`);
  }
  const full = { ...BASE, ...c } as TrainConfig;
  for (const [key, def] of Object.entries(BASE)) {
    const v = (full as unknown as Record<string, unknown>)[key];
    const ok = Array.isArray(def)
      ? Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isFinite(x))
      : (typeof v === typeOf(key, def) && (typeof v !== "number" || Number.isFinite(v))) ||
        (WORDS[key]?.includes(v as string) ?? false);
    if (!ok) {
      throw new Error(
        `${source}: option "${key}" must be ${
          Array.isArray(def)
            ? "a list of numbers"
            : `a ${typeOf(key, def)}${WORDS[key] ? ` or ${WORDS[key]}` : ""}`
        }, got ${JSON.stringify(v)}`,
      );
    }
  }
  const bad = (why: string) => new Error(`${source}: ${why}`);
  if (full.stage !== "psnr" && full.stage !== "gan") {
    throw bad(`stage must be psnr or gan, got ${full.stage}`);
  }
  if (![1, 2, 4].includes(full.scale)) throw bad(`scale must be 1, 2 or 4`);
  if (full.gtSize % full.scale) throw bad(`gtSize ${full.gtSize} is not a multiple of scale ${full.scale}`);
  for (
    const k of [
      "numFeat",
      "numBlock",
      "numGrowCh",
      "gtSize",
      "batchSize",
      "totalSteps",
      "checkpointEvery",
    ] as const
  ) {
    if (!Number.isInteger(full[k]) || full[k] < 1) throw bad(`${k} must be a positive integer`);
  }
  if (full.scheduler !== "cosine" && full.scheduler !== "multistep") {
    throw bad(`scheduler must be cosine or multistep`);
  }
  if (full.scheduler === "cosine" && full.periods.length !== full.restartWeights.length) {
    throw bad(`periods and restartWeights differ in length`);
  }
  if (!["fp32", "fp16", "int8"].includes(full.exportDtype)) {
    throw bad(`exportDtype must be fp32, fp16 or int8`);
  }
  if (!["", "webgpu", "wasm", "cpu"].includes(full.backend)) throw bad(`backend must be webgpu, wasm or cpu`);
  if (!["f32", "f16", "f16-f32acc"].includes(full.precision)) {
    throw bad(`precision must be f32, f16 or f16-f32acc`);
  }
  if (full.precision !== "f32" && (!full.plannedStep || full.backend === "wasm" || full.backend === "cpu")) {
    throw bad(`precision ${full.precision} is for the planned step on webgpu only`);
  }
  if (![0, 2, 4, "auto"].includes(full.winograd)) throw bad(`winograd must be 0 (off), 2, 4 or auto`);
  if (
    full.winograd && full.winograd !== "auto" &&
    (full.precision !== "f32" || !full.plannedStep || full.backend === "wasm" || full.backend === "cpu")
  ) {
    throw bad(`winograd is for the planned step on webgpu in f32 only`);
  }
  if (full.backend === "wasm" && !full.plannedStep) {
    throw bad(
      "backend wasm trains with the planned step only (G's step on the CPU kernels): use cpu or webgpu",
    );
  }
  return full;
}

/** A preset by name, or a JSON file of options laid over the preset its `preset` key names (default psnr). */
export async function loadConfig(nameOrPath: string): Promise<TrainConfig> {
  if (PRESETS[nameOrPath]) return { ...PRESETS[nameOrPath] };
  let text: string;
  try {
    text = await Deno.readTextFile(nameOrPath);
  } catch {
    throw new Error(
      `${nameOrPath}: neither a preset (${Object.keys(PRESETS).join(", ")}) nor a readable file`,
    );
  }
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new Error(`${nameOrPath}: not valid JSON (${(e as Error).message})`);
  }
  const { preset = "psnr", ...rest } = obj;
  if (typeof preset !== "string" || !PRESETS[preset]) {
    throw new Error(`${nameOrPath}: unknown preset ${preset}`);
  }
  return validateConfig({ ...PRESETS[preset], ...rest }, nameOrPath);
}

/** `parseArgs` option specs for every config key (lists are comma-separated). */
export function configFlags(): Record<string, { type: "string" | "boolean" }> {
  const out: Record<string, { type: "string" | "boolean" }> = {};
  for (const [k, v] of Object.entries(BASE)) {
    out[flagName(k)] = { type: typeof v === "boolean" ? "boolean" : "string" };
    if (typeof v === "boolean") out[`no-${flagName(k)}`] = { type: "boolean" };
  }
  return out;
}

/** Lays parsed flag values over a config. */
export function applyFlags(c: TrainConfig, values: Record<string, unknown>): TrainConfig {
  const out: Record<string, unknown> = { ...c };
  for (const [k, def] of Object.entries(BASE)) {
    const f = flagName(k);
    if (typeof def === "boolean") {
      if (values[f]) out[k] = true;
      if (values[`no-${f}`]) out[k] = false;
      continue;
    }
    const raw = values[f];
    if (raw === undefined) continue;
    const s = String(raw);
    if (Array.isArray(def)) out[k] = s === "" ? [] : s.split(",").map(Number);
    else if (WORDS[k]?.includes(s)) out[k] = s;
    else if (typeOf(k, def) === "number") {
      const n = Number(s);
      if (!Number.isFinite(n)) throw new Error(`--${f}: not a number: ${s}`);
      out[k] = n;
    } else out[k] = s;
  }
  return validateConfig(out, "flags");
}
