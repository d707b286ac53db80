/**
 * The training run: data, the step loop, checkpoints, validation, logs, curves and export, in one
 * output folder:
 * - `checkpoint.safetensors`: the latest state (every `checkpointEvery` steps, on Ctrl-C, at the end)
 * - `train_log.jsonl`, `curves.svg` (and `curves.png` given a renderer): the log and its picture,
 *   rewritten at each validation
 * - `val/NAME_STEP.png`: validation samples; `config.json`: the options used
 * - `model.DTYPE.safetensors`: the EMA generator, exported at the end
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { RRDBNet } from "../core/rrdbnet_arch.ts";
import { psnrSsim } from "../core/metrics.ts";
import { imresizeArray } from "../core/imresize.ts";
import type { RgbaImage } from "../core/image_io.ts";
import { PerceptualLoss } from "../core/losses/perceptual_loss.ts";
import { Upscaler } from "../core/upscaler.ts";
import type { StateDict } from "../core/state_dict.ts";
import { MAX_MEMORY_BYTES } from "../core/kernels/wasm_pool.ts";
import { describeChoice } from "../core/kernels/webgpu_plan.ts";
import { UncapturedGPUError, watchBackendErrors } from "../core/kernels/webgpu_errors.ts";
import type { TrainConfig } from "./config.ts";
import { type Checkpoint, readCheckpoint, removeStaleTemps, writeFileAtomic } from "./checkpoint.ts";
import {
  attachLrImages,
  type Batch,
  BatchQueue,
  type ImageDecoder,
  loadImageFolder,
  makeValPairs,
  type RgbImage,
  type ValPair,
} from "./data.ts";
import { resolveModel } from "../core/weights/shipped.ts";
import { exportGenerator, generatorWeights } from "./export.ts";
import { JsonlLog, type LogRecord, Progress } from "./log.ts";
import { curvesSvg } from "./plot.ts";
import { type StepLosses, Trainer } from "./trainer.ts";

/** Options of {@link runTraining}. */
export interface RunOptions {
  config: TrainConfig;
  /** Folder of HR training images. */
  dataDir: string;
  /** Folder of their LR images (paired data; see train/data.ts); absent: MATLAB bicubic of the HR. */
  dataLrDir?: string;
  /** Folder of validation images; absent: no validation. */
  valDir?: string;
  /** Folder of the validation images' LR; absent: MATLAB bicubic. */
  valLrDir?: string;
  outDir: string;
  /** Continue from this checkpoint (its config should be the one given). */
  resume?: Checkpoint;
  /** Aborting saves a checkpoint after the current step and returns. */
  signal?: AbortSignal;
  /** Called after every step (step times, for benchmarks). */
  onStep?: (step: number, losses: StepLosses, seconds: number) => void;
  /** Skip the export at the end. */
  noExport?: boolean;
  /** Image codecs: decoding for the data, PNG encoding for samples (see train/codecs.ts). */
  codec: { decode: ImageDecoder; encodePng: (img: RgbaImage) => Promise<Uint8Array> };
  /** Renders the curves to PNG (train/plot_png.ts); absent: curves.svg only. */
  renderPng?: (records: LogRecord[]) => Promise<Uint8Array>;
}

/** What a run did. */
export interface RunSummary {
  startStep: number;
  endStep: number;
  seconds: number;
  /** Steps per second over the loop (checkpoints and validation included). */
  itPerSec: number;
  /**
   * Steps started before the losses of the one before them were read (planned psnr steps on
   * webgpu, see Trainer.overlapsSteps): every step but the second (the first makes the plan) and
   * those after a checkpoint or a validation.
   */
  overlapped: number;
  /** With `winograd: "auto"` on webgpu: which convolutions a timed step chose, and the times. */
  convs?: string;
  /** Mean losses over the first and the last `logEvery` steps of this run. */
  first: Record<string, number>;
  last: Record<string, number>;
  val?: { psnr: number; ssim: number };
  interrupted: boolean;
  checkpoint: string;
  exported?: string;
}

/** The latest-checkpoint path of an output folder. */
export function checkpointPath(outDir: string): string {
  return `${outDir.replace(/\/$/, "")}/checkpoint.safetensors`;
}

/** RGB 8-bit → RGBA for the metrics and the encoder. */
export function toRgba(img: { width: number; height: number; rgb: Uint8Array }): RgbaImage {
  const data = new Uint8ClampedArray(img.width * img.height * 4);
  for (let i = 0, j = 0; i < img.rgb.length; i += 3, j += 4) {
    data[j] = img.rgb[i];
    data[j + 1] = img.rgb[i + 1];
    data[j + 2] = img.rgb[i + 2];
    data[j + 3] = 255;
  }
  return { width: img.width, height: img.height, data };
}

/**
 * PSNR/SSIM (Y channel, border = scale, as the SR literature and BasicSR's `test_y_channel`) of a
 * net over validation pairs, the SR clamped and rounded to 8 bits as a saved image would be.
 */
export async function validate(
  net: RRDBNet,
  pairs: ValPair[],
  options: { samples?: number; onSample?: (name: string, img: RgbaImage) => Promise<void> },
): Promise<{ psnr: number; ssim: number }> {
  let sumP = 0, sumS = 0;
  // tfjs's ops run outside any error scope: an error WebGPU reports on them leaves results garbage
  const gpuCheck = watchBackendErrors();
  // on wasm the net runs on our CPU kernels, each image as one patch (the net's own forward, to
  // float rounding): tfjs's ops kept every intermediate of a 360x225 LR in tfjs-wasm's heap (3.6 GB,
  // 54 s here), which next to the gan stage's D and VGG ran past its 4 GiB
  const upscaler = tf.getBackend() === "wasm" ? new Upscaler(net) : undefined;
  try {
    for (const [i, p] of pairs.entries()) {
      const x = tf.tensor4d(p.lq, [1, p.lqHeight, p.lqWidth, 3]);
      let out: tf.Tensor;
      try {
        const y = upscaler && await upscaler.upscaleTensor(x, { tile: 0 });
        out = tf.tidy(() => tf.round(tf.mul(tf.clipByValue(y ?? net.apply(x), 0, 1), 255)));
        y?.dispose();
      } finally {
        x.dispose();
      }
      const v = await out.data();
      out.dispose();
      await gpuCheck(`validation on ${p.name}`);
      const [, h, w] = out.shape;
      const sr = toRgba({ width: w, height: h, rgb: Uint8Array.from(v) });
      const m = psnrSsim(sr, toRgba(p.gt), { cropBorder: net.config.scale, yChannel: true });
      sumP += m.psnr;
      sumS += m.ssim;
      if (options.onSample && i < (options.samples ?? 0)) await options.onSample(p.name, sr);
    }
  } finally {
    upscaler?.dispose({ keepNet: true });
  }
  return { psnr: sumP / pairs.length, ssim: sumS / pairs.length };
}

/** PSNR/SSIM of MATLAB-bicubic upscaling of the validation LR: the floor a trained net should beat. */
export function bicubicBaseline(pairs: ValPair[], scale: number): { psnr: number; ssim: number } {
  let sumP = 0, sumS = 0;
  for (const p of pairs) {
    const up = imresizeArray(Uint8Array.from(p.lq, (v) => Math.round(v * 255)), {
      width: p.lqWidth,
      height: p.lqHeight,
      channels: 3,
    }, { width: p.gt.width, height: p.gt.height, uint8: true });
    const m = psnrSsim(
      toRgba({ width: p.gt.width, height: p.gt.height, rgb: Uint8Array.from(up.data) }),
      toRgba(p.gt),
      {
        cropBorder: scale,
        yChannel: true,
      },
    );
    sumP += m.psnr;
    sumS += m.ssim;
  }
  return { psnr: sumP / pairs.length, ssim: sumS / pairs.length };
}

const mean = (rows: StepLosses[]) => {
  const out: Record<string, number> = {};
  for (const k of Object.keys(rows[0] ?? {})) out[k] = rows.reduce((a, r) => a + r[k], 0) / rows.length;
  return out;
};

/** tfjs-wasm's memory cannot grow past wasm32's 4 GiB either; leave a little for what the estimate misses. */
const WASM_HEAP_LIMIT_MIB = (0.95 * MAX_MEMORY_BYTES) / 2 ** 20;

/**
 * tfjs-wasm memory (MiB) a gan step on the CPU takes: G's weights, EMA and Adam moments, D and VGG
 * as tf tensors, plus what the perceptual, RaGAN and D terms keep for their gradients per GT pixel.
 * Fitted to the heap after two steps of the `gan` preset: 2,116 MiB at batch 4, 3,368 at batch 8
 * (gt 128); batch 16 ran out of it ("table index is out of bounds", or minutes on one core).
 */
export function wasmGanHeapMiB(c: Pick<TrainConfig, "batchSize" | "gtSize">): number {
  return 864 + 313 * c.batchSize * (c.gtSize / 128) ** 2;
}

/** Trains as `options.config` says; see the module doc for what lands in `outDir`. */
export async function runTraining(options: RunOptions): Promise<RunSummary> {
  const c = options.config;
  const backend = tf.getBackend();
  if (backend === "wasm" ? !c.plannedStep : backend !== "webgpu" && backend !== "cpu") {
    throw new Error(
      `training needs the webgpu or cpu backend, or wasm with the planned step, not ${backend}` +
        (backend === "wasm" ? " without it (tfjs-wasm cannot take G's gradients)" : ""),
    );
  }
  if (c.precision !== "f32" && (backend !== "webgpu" || !c.plannedStep)) {
    throw new Error(
      `precision ${c.precision} is for the planned step on webgpu only; this run uses ${backend}`,
    );
  }
  if (c.winograd && c.winograd !== "auto" && backend !== "webgpu") {
    throw new Error(
      `winograd ${c.winograd} is for the planned step on webgpu only; this run uses ${backend}`,
    );
  }
  if (backend === "wasm" && c.stage === "gan" && wasmGanHeapMiB(c) > WASM_HEAP_LIMIT_MIB) {
    let fits = 0;
    while (wasmGanHeapMiB({ ...c, batchSize: fits + 1 }) <= WASM_HEAP_LIMIT_MIB) fits++;
    throw new Error(
      `the gan stage on the CPU runs D and VGG on tfjs-wasm, whose memory stops at 4 GiB: batch ${c.batchSize} ` +
        `at gtSize ${c.gtSize} would need about ${(wasmGanHeapMiB(c) / 1024).toFixed(1)} GiB; ` +
        (fits ? `use --batch-size ${fits} or less` : "use a smaller --gt-size") + " (or a GPU)",
    );
  }
  const out = options.outDir.replace(/\/$/, "");
  await Deno.mkdir(`${out}/val`, { recursive: true });
  const ckptPath = checkpointPath(out);
  const stale = await removeStaleTemps(ckptPath);
  if (stale.length) {
    console.error(`removed ${stale.length} unfinished checkpoint temp file(s): ${stale.join(", ")}`);
  }
  await Deno.writeTextFile(`${out}/config.json`, JSON.stringify(c, null, 2) + "\n");

  const t0 = performance.now();
  const decode = options.codec.decode;
  let images = await loadImageFolder(options.dataDir, {
    decode,
    minSide: c.gtSize,
    maxImages: c.maxImages || undefined,
  });
  if (options.dataLrDir) images = await attachLrImages(images, options.dataLrDir, { decode, scale: c.scale });
  let pairs: ValPair[] = [];
  let bicubic: { psnr: number; ssim: number } | undefined;
  if (options.valDir) {
    let valImages: RgbImage[] = await loadImageFolder(options.valDir, {
      decode,
      maxImages: c.valMaxImages || undefined,
    });
    if (options.valLrDir) {
      valImages = await attachLrImages(valImages, options.valLrDir, { decode, scale: c.scale });
    }
    pairs = makeValPairs(valImages, { scale: c.scale, crop: c.valCrop });
  }
  if (pairs.length) {
    const bic = bicubicBaseline(pairs, c.scale);
    console.error(
      `validation baseline, MATLAB bicubic x${c.scale} of the LR: PSNR ${bic.psnr.toFixed(3)} dB, SSIM ${
        bic.ssim.toFixed(4)
      }`,
    );
    bicubic = bic;
  }
  console.error(
    `data: ${images.length} training images from ${options.dataDir}` +
      (options.dataLrDir ? ` (LR from ${options.dataLrDir})` : " (LR: MATLAB bicubic)") +
      `, ${pairs.length} validation images${options.valLrDir ? ` (LR from ${options.valLrDir})` : ""} ` +
      `(${((performance.now() - t0) / 1000).toFixed(1)} s to decode)`,
  );

  let perceptual: PerceptualLoss | undefined;
  let pretrainG: StateDict | undefined;
  if (c.stage === "gan") {
    perceptual = await PerceptualLoss.load({
      weights: c.vggWeights || undefined,
      layerWeights: { [c.perceptualLayer]: 1 },
    });
    console.error(
      `perceptual loss: VGG19 ${perceptual.layer} from ${perceptual.source}${
        perceptual.warning ? " (SEE WARNING ABOVE)" : ""
      }`,
    );
  }
  if (c.pretrainG && !options.resume) {
    const from = resolveModel(c.pretrainG);
    pretrainG = generatorWeights(await Deno.readFile(from), from);
    console.error(`generator initialised from ${from}`);
  } else if (c.stage === "gan" && !options.resume) {
    console.error(
      "WARNING: the gan stage starts from a random generator (no pretrainG); ESRGAN starts from the psnr stage",
    );
  }
  const trainer = Trainer.create(c, { checkpoint: options.resume, pretrainG, perceptual });
  if (backend === "wasm" && !trainer.planned) {
    trainer.dispose();
    throw new Error(
      "the CPU training step (wasm) needs scale 4, widths and LR patch sides that are " +
        "multiples of 4 (gtSize a multiple of 16): use --backend cpu",
    );
  }
  const startStep = trainer.step;
  if (options.resume) {
    console.error(`resumed at step ${startStep}`);
    const lr = (dir?: string) => dir ? `LR images from ${dir}` : "bicubic LR";
    const was = options.resume.metadata.data_lr;
    if ((was ?? "") !== (options.dataLrDir ?? "")) {
      console.error(
        `WARNING: the checkpoint trained on ${lr(was)}; this run goes on with ${lr(options.dataLrDir)}` +
          (was && !options.dataLrDir ? " (give --data-lr again to keep them)" : ""),
      );
    }
  }
  const log = await JsonlLog.open(`${out}/train_log.jsonl`, { fromStep: startStep });
  if (bicubic && !startStep) {
    await log.write({ type: "info", step: 0, bicubic_psnr: bicubic.psnr, bicubic_ssim: bicubic.ssim });
  }
  const queue = new BatchQueue(images, c, { startStep, depth: c.prefetch });

  const save = async () => {
    await writeFileAtomic(
      ckptPath,
      await trainer.checkpoint({
        data: options.dataDir,
        ...(options.dataLrDir ? { data_lr: options.dataLrDir } : {}),
      }),
    );
  };
  const writeCurves = async () => {
    const svg = curvesSvg(log.records);
    await Deno.writeTextFile(`${out}/curves.svg`, svg);
    if (options.renderPng) await Deno.writeFile(`${out}/curves.png`, await options.renderPng(log.records));
  };
  let lastVal: { psnr: number; ssim: number } | undefined;
  const runVal = async () => {
    if (pairs.length) {
      trainer.sync();
      lastVal = await validate(trainer.ema, pairs, {
        samples: c.valSamples,
        onSample: async (name, img) => {
          const stem = name.replace(/\.[^.]+$/, "");
          await Deno.writeFile(`${out}/val/${stem}_${trainer.step}.png`, await options.codec.encodePng(img));
        },
      });
      await log.write({ type: "val", step: trainer.step, ...lastVal });
      progress.log(
        `validation at step ${trainer.step}: PSNR ${lastVal.psnr.toFixed(3)} dB, SSIM ${
          lastVal.ssim.toFixed(4)
        } (EMA G, Y channel)`,
      );
    }
    await writeCurves();
  };

  const progress = new Progress(c.totalSteps, startStep, c.logEvery);
  const firstRows: StepLosses[] = [];
  let window: StepLosses[] = [];
  let lastWindow: StepLosses[] = [];
  let savedAt = startStep;
  const loopStart = performance.now();
  let loopDone = false;
  // what tells the user where to go on from after a step failed
  const withLastGoodState = (e: unknown) => {
    if (e instanceof UncapturedGPUError) {
      throw new Error(`${e.message}; the last good state is ${ckptPath} (step ${savedAt})`, { cause: e });
    }
    throw e;
  };
  const start = (batch: Batch, readAfter?: Promise<unknown>) => {
    const step = trainer.step + 1;
    // WebGPU's errors from the step's start until the loop takes its losses fail it: with reads
    // that no longer wait, a step started ahead can resolve before the code after the one before it
    // (onStep, say) has run, whose errors its own check would miss
    const gpuCheck = watchBackendErrors();
    const losses = trainer.trainStep(batch, { checkGPU: false, readAfter }).catch((e) => {
      // what a wasm module's failed allocation looks like from here
      if (backend === "wasm" && e instanceof WebAssembly.RuntimeError) {
        throw new Error(
          `step ${step} failed in WebAssembly (${e.message}), most likely out of tfjs-wasm's ` +
            `4 GiB of memory: try a smaller --batch-size or --gt-size; the last good state is ${ckptPath} ` +
            `(step ${savedAt})`,
        );
      }
      return withLastGoodState(e);
    });
    losses.catch(() => {}); // awaited later: not an unhandled rejection meanwhile
    return { step, losses, gpuCheck };
  };
  // Steps after which the nets must be as that step left them: no step may start ahead of them.
  const holds = (step: number) =>
    step === c.totalSteps || step % c.checkpointEvery === 0 || (c.valEvery > 0 && step % c.valEvery === 0);
  /**
   * The step after the current one, started before the current one's losses are taken; it reads its
   * own once `release` is called, after the current one's bookkeeping (Deno's read blocks the
   * thread until the GPU is done: the bookkeeping and the next batch run while the GPU runs it).
   */
  let ahead: ReturnType<typeof start> | undefined;
  let release: (() => void) | undefined;
  let overlapped = 0;
  let convs: string | undefined;
  let ts = performance.now();
  try {
    while (ahead || (trainer.step < c.totalSteps && !options.signal?.aborted)) {
      const { step, losses: current, gpuCheck } = ahead ?? start(await queue.next());
      ahead = undefined;
      if (trainer.overlapsSteps && !holds(step) && !options.signal?.aborted) {
        const gate = Promise.withResolvers<void>();
        ahead = start(await queue.next(), gate.promise);
        release = gate.resolve;
        overlapped++;
      }
      try {
        const losses = await current;
        await gpuCheck(`training step ${step}`).catch(withLastGoodState);
        const now = performance.now();
        const secs = (now - ts) / 1000;
        ts = now;
        const bad = Object.entries(losses).find(([, v]) => !Number.isFinite(v));
        if (bad) {
          const what = `${bad[0]} became ${bad[1]} at step ${step}`;
          throw new Error(`${what}; the last good state is ${ckptPath} (step ${savedAt})`);
        }
        if (trainer.convChoice && !convs) {
          convs = describeChoice(trainer.convChoice);
          progress.log(`convolutions: ${convs}`);
        }
        options.onStep?.(step, losses, secs);
        if (firstRows.length < c.logEvery) firstRows.push(losses);
        window.push(losses);
        progress.update(step, losses);
        if (step % c.logEvery === 0 || step === c.totalSteps) {
          await log.write({ type: "train", step, ...mean(window), time: Date.now() / 1000 });
          lastWindow = window;
          window = [];
        }
        if (step % c.checkpointEvery === 0) {
          await save();
          savedAt = step;
        }
        if (c.valEvery && step % c.valEvery === 0) await runVal();
        if (!ahead) ts = performance.now();
      } finally {
        release?.();
        release = undefined;
      }
    }
    loopDone = true;
  } finally {
    progress.stop();
    // after an error (a NaN loss, out of memory, WebGPU's) the last checkpoint stays the last good state
    if (loopDone && trainer.step !== savedAt) {
      await save();
      savedAt = trainer.step;
    }
  }
  const seconds = (performance.now() - loopStart) / 1000;
  const interrupted = trainer.step < c.totalSteps;
  if (window.length) lastWindow = window;
  let exported: string | undefined;
  if (!interrupted) {
    if (!c.valEvery || trainer.step % c.valEvery) await runVal();
    if (!options.noExport) {
      exported = `${out}/model.${c.exportDtype}.safetensors`;
      await Deno.writeFile(
        exported,
        exportGenerator(await readCheckpoint(ckptPath), { dtype: c.exportDtype }),
      );
      console.error(`exported the EMA generator to ${exported}`);
    }
  } else {
    await writeCurves();
    console.error(`interrupted at step ${trainer.step}: state saved to ${ckptPath} (continue with --resume)`);
  }
  log.close();
  trainer.dispose();
  return {
    startStep,
    endStep: trainer.step,
    seconds,
    itPerSec: (trainer.step - startStep) / Math.max(seconds, 1e-9),
    overlapped,
    convs,
    first: mean(firstRows),
    last: mean(lastWindow),
    val: lastVal,
    interrupted,
    checkpoint: ckptPath,
    exported,
  };
}
