/**
 * The GPU training run, self-contained for the borrowed GPU machine (bundled by
 * ../shared/device/prepare.sh, run by `bash .device/run.sh ARGS`): N steps of the `psnr` preset at
 * full size (RRDBNet 23 blocks, batch 16, gt 128) on webgpu from a folder of images; prints the time
 * of every step; validates G and its EMA on held-out images (MATLAB-bicubic baseline beside them);
 * writes to $OUT (or --out): the JSONL log, the loss curve (SVG), a validation sample, summary.json,
 * and the generator as an fp16 model file cut into pieces of at most 16 MiB
 * (`cat model.fp16.safetensors.part-* > model.fp16.safetensors`).
 *
 * Aborts unless tfjs runs on webgpu (tfjs silently falls back to cpu when no adapter is found).
 * Steps run as core/kernels' planned step (one prepared pass); `--no-planned-step` runs tfjs's
 * autodiff instead (`--custom-kernels`: with core/kernels' convolutions). `--pretrain F` starts from
 * a model file, `--minutes M` bounds the training time (the run then validates and exports).
 * Training images must be PNG: the bundle reads them with fast-png (image_io's JPEG decoder loads
 * wasm from its package folder, which a bundle lacks); bench/gpu_session.sh carries JPEG crops
 * (bench/train_gpu_data.ts) and decodes them there. `--tiny` shrinks everything (nf 8, 1 block,
 * batch 2, gt 32) to test the bundle on llvmpipe. How to prepare and run it: bench/gpu_session.sh.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "node:util";
import { initBackend } from "../core/backend.ts";
import { PRESETS, type TrainConfig } from "../train/config.ts";
import { readCheckpoint } from "../train/checkpoint.ts";
import { listImages, loadImageFolder, makeValPairs } from "../train/data.ts";
import { generatorConfig } from "../train/trainer.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { enableCustomWebGPUKernels } from "../core/kernels/register.ts";
import { type FilterGradVariant, setFilterGradVariant } from "../core/kernels/webgpu_filter_grad.ts";
import { RRDBNetTrainPlanWebGPU } from "../core/kernels/webgpu_train_plan.ts";
import { Adam } from "../train/adam.ts";
import { exportGenerator, writeShards } from "../train/export.ts";
import { curvesSvg } from "../train/plot.ts";
import { pngCodec } from "../train/png_codec.ts";
import type { LogRecord } from "../train/log.ts";
import { checkpointPath, runTraining, validate } from "../train/train.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    data: { type: "string", default: ".device/train_png" },
    steps: { type: "string", default: "200" },
    /** Held-out validation images (file stems); those absent are replaced by the folder's last images. */
    val: { type: "string", default: "ColorfulCups,Wood" },
    "val-count": { type: "string", default: "2" },
    "val-crop": { type: "string", default: "256" },
    "batch-size": { type: "string" },
    "max-images": { type: "string", default: "0" },
    out: { type: "string" },
    work: { type: "string", default: "/tmp/train_gpu" },
    tiny: { type: "boolean" },
    "allow-software": { type: "boolean" },
    /** core/kernels' WebGPU 3x3 conv kernels instead of tfjs's stock ones (with --no-planned-step). */
    "custom-kernels": { type: "boolean" },
    /** tfjs autodiff instead of the planned step (core/kernels/webgpu_train_plan.ts). */
    "no-planned-step": { type: "boolean" },
    /** Start G (and its EMA) from this model file (BasicSR's pretrain_network_g). */
    pretrain: { type: "string" },
    /** Stop training after this many minutes (then validate and export), whatever --steps says. */
    minutes: { type: "string" },
    /** Filter-gradient kernel of the planned step: v1-v4, or auto (time v1 and v4 on this GPU, keep the faster). */
    "filter-grad": { type: "string", default: "auto" },
    /** psnr (L1) or gan (from --pretrain: perceptual + RaGAN + L1, with the discriminator). */
    stage: { type: "string", default: "psnr" },
    /** gan: VGG19 weights file (a bundle cannot find ../shared's partial VGG19 by itself). */
    vgg: { type: "string" },
    /** gan: weight of the perceptual term (BasicSR: 1 for torchvision's conv5_4). */
    "perceptual-weight": { type: "string" },
    /** G's planned step in f32, or mixed precision: f16 / f16-f32acc (needs shader-f16). */
    precision: { type: "string", default: "f32" },
    /** G's planned step with Winograd F(4x4) (4) or F(2x2) (2) convolutions; 0: direct. */
    winograd: { type: "string", default: "auto" },
  },
});
if (values.stage !== "psnr" && values.stage !== "gan") {
  throw new Error(`--stage must be psnr or gan, got "${values.stage}"`);
}
const gan = values.stage === "gan";
if (!["f32", "f16", "f16-f32acc"].includes(values.precision!)) {
  throw new Error(`--precision must be f32, f16 or f16-f32acc, got "${values.precision}"`);
}
if (gan && !values.vgg) {
  throw new Error("--stage gan needs --vgg FILE (VGG19 weights for the perceptual loss)");
}
const out = values.out ?? Deno.env.get("OUT");
if (!out) throw new Error("no output folder: set $OUT or pass --out");
await Deno.mkdir(out, { recursive: true });

const info = await initBackend("webgpu");
if (tf.getBackend() !== "webgpu") throw new Error(`tfjs runs on ${tf.getBackend()}, not webgpu: aborting`);
const software = /llvmpipe|lavapipe|swiftshader|software/i.test(info.adapter ?? "");
// the gan stage's VGG and discriminator run as tfjs ops: ours for their 3x3 convolutions
const customKernels = !!values["custom-kernels"] || gan;
if (customKernels) enableCustomWebGPUKernels();
console.log(
  `backend: ${tf.getBackend()} on ${info.adapter}; tfjs conv kernels: ${customKernels ? "custom" : "stock"}`,
);
if (software && !values.tiny && !values["allow-software"]) {
  throw new Error(
    `only a software adapter (${info.adapter}): a full-size run would never finish; use --tiny`,
  );
}

// hold out validation images (textured ones by default), train on the rest
const files = await listImages(values.data);
const stem = (f: string) => f.split("/").pop()!.replace(/\.[^.]+$/, "");
const wanted = new Set(values.val.split(",").filter(Boolean));
let valFiles = files.filter((f) => wanted.has(stem(f)));
if (valFiles.length < Number(values["val-count"])) valFiles = files.slice(-Number(values["val-count"]));
// data and run output apart: runTraining writes validation samples into its outDir's val/
const dataDir = `${values.work}/data/train`,
  valDir = `${values.work}/data/val`,
  runDir = `${values.work}/run`;
await Deno.remove(values.work, { recursive: true }).catch(() => {});
await Deno.mkdir(dataDir, { recursive: true });
await Deno.mkdir(valDir, { recursive: true });
for (const f of files) {
  const abs = f.startsWith("/") ? f : `${Deno.cwd()}/${f}`;
  await Deno.symlink(abs, `${valFiles.includes(f) ? valDir : dataDir}/${f.split("/").pop()}`);
}

const steps = Number(values.steps);
const config: TrainConfig = {
  ...PRESETS[gan ? "gan" : "psnr"],
  ...(gan ? { vggWeights: values.vgg! } : {}),
  ...(values["perceptual-weight"] ? { perceptualWeight: Number(values["perceptual-weight"]) } : {}),
  totalSteps: steps,
  checkpointEvery: steps,
  // validation of the EMA (held-out 256 px crops) every 100 steps draws the PSNR curve
  valEvery: 100,
  valCrop: Number(values["val-crop"]),
  valSamples: 1,
  logEvery: 1,
  maxImages: Number(values["max-images"]),
  exportDtype: "fp16",
  plannedStep: !values["no-planned-step"],
  precision: values.precision as TrainConfig["precision"],
  winograd: values.winograd === "auto" ? "auto" : Number(values.winograd) as 0 | 2 | 4,
  pretrainG: values.pretrain ?? "",
  ...(values.tiny
    ? { numFeat: 8, numBlock: 1, numGrowCh: 4, dNumFeat: 4, batchSize: 2, gtSize: 32, valCrop: 64 }
    : {}),
  ...(values["batch-size"] ? { batchSize: Number(values["batch-size"]) } : {}),
};
console.log(
  `${config.stage} stage: RRDBNet nf ${config.numFeat} blocks ${config.numBlock} gc ${config.numGrowCh}, batch ${config.batchSize}, ` +
    `gt ${config.gtSize}, ${steps} steps${
      values.minutes ? ` or ${values.minutes} min` : ""
    }, Adam lr ${config.lrG} ` +
    `betas ${config.beta1}/${config.beta2}; ${
      config.plannedStep ? `planned step (${config.precision})` : "tfjs autodiff"
    }` +
    (gan
      ? `; perceptual ${config.perceptualLayer} x${config.perceptualWeight} from ${config.vggWeights}`
      : "") +
    (config.pretrainG ? `; G from ${config.pretrainG}` : ""),
);

/**
 * Times the planned step with each filter-gradient kernel (throwaway net, plan and optimizer: the
 * run's state is untouched) and checks that both give the same loss; returns ms per step by variant.
 */
async function timeVariants(
  variants: FilterGradVariant[],
): Promise<Record<string, { ms: number; loss: number }>> {
  const net = new RRDBNet(generatorConfig(config), { seed: 1, trainable: true });
  const adam = new Adam(net.params, { betas: [config.beta1, config.beta2] });
  const lqSize = config.gtSize / 4;
  const rand = (n: number) =>
    Float32Array.from({ length: n }, (_, i) => (Math.sin(i * 12.9898) * 43758.5453) % 1 + 0.5);
  const batch = {
    lq: rand(config.batchSize * lqSize * lqSize * 3),
    gt: rand(config.batchSize * config.gtSize ** 2 * 3),
  };
  const out: Record<string, { ms: number; loss: number }> = {};
  for (const v of variants) {
    setFilterGradVariant(v);
    const plan = new RRDBNetTrainPlanWebGPU(net, {
      batch: config.batchSize,
      lqSize,
      ema: net.params,
      adam,
      emaDecay: 0.999,
      precision: config.precision,
      // "auto" times its own candidates in the run; the filter-gradient variants are timed direct
      winograd: config.winograd === "auto" ? undefined : config.winograd || undefined,
    });
    const { loss } = await plan.step(batch, 0);
    await plan.step(batch, 0);
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) await plan.step(batch, 0);
    out[v] = { ms: (performance.now() - t0) / 5, loss };
    plan.dispose();
  }
  net.dispose();
  adam.dispose();
  return out;
}

const VARIANTS = ["v1", "v2", "v3", "v4"] as const;
const asked = values["filter-grad"] as FilterGradVariant | "auto";
if (asked !== "auto" && !VARIANTS.includes(asked)) {
  throw new Error(`--filter-grad ${asked}: one of ${VARIANTS.join(", ")} or auto`);
}
let filterGrad: FilterGradVariant = asked === "auto" ? "v4" : asked;
let variantTimes: Record<string, { ms: number; loss: number }> | undefined;
if (config.plannedStep && asked === "auto") {
  variantTimes = await timeVariants(["v1", "v4"]);
  const { v1, v4 } = variantTimes;
  const agree = Math.abs(v1.loss - v4.loss) <= 1e-4 * Math.abs(v1.loss);
  filterGrad = agree && v1.ms < v4.ms ? "v1" : "v4";
  console.log(
    `filter-gradient kernels: v1 ${v1.ms.toFixed(1)} ms/step, v4 ${v4.ms.toFixed(1)} ms/step` +
      (agree ? "" : ` — LOSSES DIFFER (${v1.loss} vs ${v4.loss}): v1 NOT USED`) +
      `; training with ${filterGrad}`,
  );
}
setFilterGradVariant(filterGrad);

const times: number[] = [];
const summary = await runTraining({
  config,
  dataDir,
  valDir,
  outDir: runDir,
  noExport: true,
  codec: pngCodec,
  signal: values.minutes ? AbortSignal.timeout(Number(values.minutes) * 60_000) : undefined,
  onStep: (step, losses, secs) => {
    times.push(secs);
    console.log(`step ${step}: ${(secs * 1000).toFixed(1)} ms, l_pix ${losses.l_pix.toFixed(5)}`);
  },
});

// the EMA (decay 0.999) of a run this short is still close to its start: validate and export G too
const ckpt = await readCheckpoint(checkpointPath(runDir));
const pairs = makeValPairs(await loadImageFolder(valDir, { decode: pngCodec.decode }), {
  scale: 4,
  crop: config.valCrop,
});
const gModel = exportGenerator(ckpt, { dtype: "fp16", which: "g" });
const g = new RRDBNet(generatorConfig(config), { weights: decodeModelFile(gModel).stateDict });
let sample: Uint8Array | undefined;
const gVal = await validate(g, pairs, {
  samples: 1,
  onSample: async (_name, img) => void (sample = await pngCodec.encodePng(img)),
});
g.dispose();
if (sample) await Deno.writeFile(`${out}/val_sample_G.png`, sample);
// a run stopped by --minutes ends "interrupted", without runTraining's final validation of the EMA
let emaVal = summary.val;
if (!emaVal) {
  const ema = new RRDBNet(generatorConfig(config), {
    weights: decodeModelFile(exportGenerator(ckpt, { dtype: "fp16", which: "ema" })).stateDict,
  });
  emaVal = await validate(ema, pairs, { samples: 0 });
  ema.dispose();
}

const sorted = [...times].slice(1).sort((a, b) => a - b);
const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : times[0];
const log = (await Deno.readTextFile(`${runDir}/train_log.jsonl`)).trim().split("\n").map((l) =>
  JSON.parse(l) as LogRecord
);
log.push({ type: "val", step: ckpt.step, psnr: gVal.psnr, ssim: gVal.ssim, net: "G" });
log.push({ type: "val", step: ckpt.step, psnr: emaVal.psnr, ssim: emaVal.ssim, net: "EMA" });
await Deno.writeTextFile(`${out}/train_log.jsonl`, log.map((r) => JSON.stringify(r)).join("\n") + "\n");
// imagescript's SVG renderer cannot be bundled: the picture comes back as SVG (`deno task plot` makes a PNG)
await Deno.writeTextFile(`${out}/curves.svg`, curvesSvg(log));
const parts = await writeShards(`${out}/model.fp16.safetensors`, gModel, { maxBytes: 16 * 1024 * 1024 });
const result = {
  adapter: info.adapter,
  step: config.plannedStep
    ? "planned"
    : values["custom-kernels"]
    ? "autodiff, custom kernels"
    : "autodiff, stock kernels",
  pretrain: config.pretrainG || null,
  filter_grad_kernel: filterGrad,
  filter_grad_variants: variantTimes ?? null,
  config,
  steps: summary.endStep,
  first_step_s: times[0],
  median_step_s: median,
  mean_step_s_after_first: sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null,
  it_per_s: summary.itPerSec,
  l_pix_first: summary.first.l_pix,
  l_pix_last: summary.last.l_pix,
  val_bicubic: log.find((r) => r.type === "info"),
  val_ema: emaVal,
  val_g: gVal,
  exported: parts.map((p) => p.split("/").pop()),
};
await Deno.writeTextFile(`${out}/summary.json`, JSON.stringify(result, null, 2) + "\n");
console.log(JSON.stringify(result, null, 2));
