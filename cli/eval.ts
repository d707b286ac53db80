/**
 * Scores SR models on benchmark folders, comparable with the ESRGAN paper: PSNR and SSIM on the Y
 * channel, `scale` pixels of border cropped, the bicubic baseline from MATLAB-compatible imresize.
 *
 *     deno task eval --data DIR [--data DIR]... [--model PATH|NAME|bicubic]... [--scale 4]
 *       [--json] [--report DIR] [--backend webgpu|wasm|cpu] [--precision f32|f16|f16-f32acc] [--tile N]
 *       [--tta] [--threads N] [--font TTF] [--crop 128] [--zoom 2] [--gray-as-luma]
 *
 * A model is a file or a shipped model's name (realesrgan-x4plus-anime, ...); without --model only the
 * bicubic baseline runs. A DIR holds `*_HR.png` with matching `*_LR.png`, or plain HR images (their LR
 * is made with imresize); `Set5` finds `Set5/x4`. Markdown tables go to stdout (or JSON with --json),
 * the progress bar to stderr. --gray-as-luma measures one-channel files on their gray values as MATLAB
 * scripts do (the paper's Set14 figure), instead of BasicSR's Y.
 * @module
 */
import { parseArgs } from "node:util";
import { parseNumberFlag, POSITIVE, THREADS, WHOLE } from "./flags.ts";
import process from "node:process";
import { basename, join } from "node:path";
import cliProgress from "cli-progress";
import { encodeImage, type RgbaImage } from "../core/image_io.ts";
import { imresize } from "../core/imresize.ts";
import {
  bicubicModel,
  type DatasetResult,
  evaluateDataset,
  type ImageOutputs,
  listDataset,
  markdownTable,
  type SrModel,
  upscalerModel,
} from "../core/eval.ts";
import { chooseCrop, cropPanel, findFont, type Panel, sideBySide } from "../core/report.ts";
import type { BackendName } from "../core/backend.ts";
import type { ConvPrecision } from "../core/kernels/webgpu_conv3x3.ts";
import { resolveModel } from "../core/weights/shipped.ts";

const USAGE = "usage: deno task eval --data DIR [--data DIR]... [--model PATH|NAME|bicubic]... [--scale 4] " +
  "[--json] [--report DIR] [--backend webgpu|wasm|cpu] [--precision f32|f16|f16-f32acc] [--tile N] " +
  "[--tta] [--threads N] [--font TTF] [--crop 128] [--zoom 2] [--gray-as-luma]";

/** Parsed command line of the eval tool. */
export interface EvalArgs {
  data: string[];
  models: string[];
  scale: number;
  json: boolean;
  report?: string;
  backend?: BackendName;
  /** CPU threads of the wasm backend (absent: the logical cores). */
  threads?: number;
  /** The models' number format on webgpu (see Upscaler.precision). */
  precision: ConvPrecision;
  tile?: number;
  /** Test-time augmentation (the 8 flips and transposes averaged). */
  tta: boolean;
  font?: string;
  crop: number;
  zoom: number;
  grayAsLuma: boolean;
}

const wholeNumber = (flag: string, v: string | undefined) => parseNumberFlag(`--${flag}`, v, WHOLE);

/** Parses the command line; throws a one-line message on bad usage. */
export function parseEvalArgs(argv: string[]): EvalArgs {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      data: { type: "string", short: "d", multiple: true },
      model: { type: "string", short: "m", multiple: true },
      scale: { type: "string", short: "s" },
      json: { type: "boolean", default: false },
      report: { type: "string" },
      backend: { type: "string" },
      threads: { type: "string", short: "j" },
      precision: { type: "string", default: "f32" },
      tile: { type: "string" },
      tta: { type: "boolean", default: false },
      font: { type: "string" },
      crop: { type: "string" },
      zoom: { type: "string" },
      "gray-as-luma": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) throw new Error(USAGE);
  if (positionals.length) throw new Error(`unexpected argument ${positionals[0]}\n${USAGE}`);
  if (!values.data?.length) throw new Error(`--data is required\n${USAGE}`);
  const backend = values.backend as BackendName | undefined;
  if (backend && !["webgpu", "wasm", "cpu"].includes(backend)) {
    throw new Error(`--backend must be webgpu, wasm or cpu, not ${backend}`);
  }
  const precision = values.precision as ConvPrecision;
  if (!["f32", "f16", "f16-f32acc"].includes(precision)) {
    throw new Error(`--precision must be f32, f16 or f16-f32acc, not ${precision}`);
  }
  const scale = parseNumberFlag("--scale", values.scale, POSITIVE) ?? 4;
  if (scale < 1) throw new Error("--scale must be at least 1");
  return {
    data: values.data,
    models: values.model?.length ? values.model : ["bicubic"],
    scale,
    json: values.json!,
    report: values.report,
    backend,
    threads: parseNumberFlag("--threads", values.threads, THREADS),
    precision,
    tile: wholeNumber("tile", values.tile),
    tta: values.tta!,
    font: values.font,
    crop: wholeNumber("crop", values.crop) ?? 128,
    zoom: Math.max(1, wholeNumber("zoom", values.zoom) ?? 2),
    grayAsLuma: values["gray-as-luma"]!,
  };
}

/** A model's display name: "bicubic", or the file name without `.safetensors`. */
function modelName(spec: string): string {
  return spec === "bicubic" ? "bicubic" : basename(spec).replace(/\.safetensors$/i, "");
}

/** Loads the models named on the command line (starting a backend only when a model file needs one). */
async function loadModels(
  args: EvalArgs,
  log: (s: string) => void,
  onProgress: (model: string, done: number, total: number) => void,
): Promise<{ models: SrModel[]; dispose: () => void }> {
  const models: SrModel[] = [];
  const disposers: (() => void)[] = [];
  const files = args.models.filter((m) => m !== "bicubic");
  if (files.length) {
    const { describeBackend, initBackend } = await import("../core/backend.ts");
    // the models run on our CPU kernels (wasm): tfjs's own ops need no thread pool of their own
    const info = await initBackend(args.backend, { threads: args.threads, opsThreads: 1 });
    log(`backend: ${describeBackend(info)}`);
    if (args.precision !== "f32" && !info.f16) {
      throw new Error(
        `--precision ${args.precision} needs the webgpu backend with shader-f16, not ${info.name}`,
      );
    }
  }
  const names = args.models.map(modelName);
  for (const [i, spec] of args.models.entries()) {
    // Two files with the same name are told apart by their full paths.
    const name = names.indexOf(names[i]) !== names.lastIndexOf(names[i]) ? spec : names[i];
    if (spec === "bicubic") {
      models.push(bicubicModel());
      continue;
    }
    const { loadModel } = await import("./load_model.ts");
    const upscaler = await loadModel(resolveModel(spec));
    upscaler.precision = args.precision;
    disposers.push(() => upscaler.dispose());
    models.push(upscalerModel(name, upscaler, { tile: args.tile, tta: args.tta, onProgress }));
  }
  return { models, dispose: () => disposers.forEach((d) => d()) };
}

const fmtScore = (s: { psnr: number; ssim: number }) => `${s.psnr.toFixed(2)} dB / ${s.ssim.toFixed(4)}`;

/** Writes one comparison picture and returns its index.md lines. */
async function writeReportImage(
  dir: string,
  image: ImageOutputs,
  args: EvalArgs,
  font: Uint8Array | undefined,
): Promise<string[]> {
  const { pair, outputs, scores } = image;
  const bicubic: RgbaImage = outputs.get("bicubic") ?? imresize(pair.lr, { scale: args.scale });
  const rect = chooseCrop(pair.hr, bicubic, { size: args.crop, align: args.scale });
  const panels: Panel[] = [{ label: "LR (nearest)", image: cropPanel(pair.lr, rect, { scale: args.scale }) }];
  if (!outputs.has("bicubic")) panels.push({ label: "bicubic", image: cropPanel(bicubic, rect) });
  for (const [name, out] of outputs) {
    panels.push({ label: `${name}\n${fmtScore(scores.get(name)!)}`, image: cropPanel(out, rect) });
  }
  panels.push({ label: "HR", image: cropPanel(pair.hr, rect) });
  const picture = await sideBySide(panels, { font, zoom: args.zoom });
  const file = `${pair.name}.png`;
  await Deno.writeFile(join(dir, file), await encodeImage(picture, { format: "png" }));
  const where =
    `crop ${rect.width}x${rect.height} at (${rect.x}, ${rect.y}) of ${pair.hr.width}x${pair.hr.height}`;
  return [
    `### ${pair.name}`,
    "",
    `${where}; ${[...scores].map(([m, s]) => `${m}: ${fmtScore(s)}`).join("; ")}`,
    "",
    `![${pair.name}](${file})`,
    "",
  ];
}

/** Runs the evaluation described by `args`; returns the text for stdout. */
export async function runEval(args: EvalArgs, options: { log?: (s: string) => void } = {}): Promise<string> {
  const log = options.log ?? ((s: string) => console.error(s));
  const datasets = [];
  for (const dir of args.data) datasets.push(await listDataset(dir, { scale: args.scale }));
  const seen = new Map<string, number>();
  for (const d of datasets) {
    const n = (seen.get(d.name) ?? 0) + 1;
    seen.set(d.name, n);
    if (n > 1) d.name = `${d.name}#${n}`;
  }
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: "eval |{bar}| {value}/{total} images | {dataset} {image} {tiles}| {duration_formatted}",
    hideCursor: false,
  }, cliProgress.Presets.shades_classic);
  const { models, dispose } = await loadModels(args, log, (model, done, total) => {
    bar.update({ tiles: `(${model}: tile ${done}/${total}) ` });
  });
  const font = args.report ? await findFont(args.font) : null;
  if (args.report && !font) {
    log("report: no font found (give --font FILE.ttf); panels are unlabelled, see index.md");
  }
  const total = datasets.reduce((n, d) => n + d.entries.length, 0);
  bar.start(total, 0, { dataset: "", image: "", tiles: "" });
  const results: Record<string, DatasetResult & { lr: string }> = {};
  try {
    for (const dataset of datasets) {
      const reportDir = args.report ? join(args.report, dataset.name) : undefined;
      if (reportDir) await Deno.mkdir(reportDir, { recursive: true });
      const order = ["LR (nearest)", ...(args.models.includes("bicubic") ? [] : ["bicubic"])]
        .concat(models.map((m) => m.name), ["HR"]);
      const index = [
        `# ${dataset.name} x${args.scale}`,
        "",
        `Panels, left to right: ${order.join(", ")}. The crop is where bicubic differs most from HR; ` +
        `PSNR/SSIM are on Y with ${args.scale} px of border cropped, over the whole image.`,
        "",
      ];
      let lrMade = 0;
      const result = await evaluateDataset(dataset, models, {
        scale: args.scale,
        grayAsLuma: args.grayAsLuma,
        onImage: async (image) => {
          if (image.pair.lrMade) lrMade++;
          if (reportDir) index.push(...await writeReportImage(reportDir, image, args, font?.bytes));
          bar.increment({ dataset: dataset.name, image: image.pair.name, tiles: "" });
        },
      });
      if (reportDir) await Deno.writeTextFile(join(reportDir, "index.md"), index.join("\n"));
      const lr = lrMade === 0 ? "official" : lrMade === dataset.entries.length ? "imresize" : "mixed";
      results[dataset.name] = { ...result, lr };
    }
  } finally {
    bar.stop();
    dispose();
  }
  if (args.json) {
    const datasetsJson: Record<string, DatasetResult> = {};
    for (const [name, r] of Object.entries(results)) datasetsJson[name] = { models: r.models };
    return JSON.stringify(
      { scale: args.scale, grayAsLuma: args.grayAsLuma, datasets: datasetsJson },
      null,
      2,
    );
  }
  const out: string[] = [];
  for (const [name, r] of Object.entries(results)) {
    const lrNote = r.lr === "official"
      ? "official LR files"
      : r.lr === "imresize"
      ? "LR made with imresize"
      : "LR partly made with imresize";
    const y = args.grayAsLuma ? "Y channel (one-channel files: gray values)" : "Y channel";
    out.push(
      `### ${name} x${args.scale} — PSNR (dB) / SSIM, ${y}, ${args.scale} px border cropped; ${lrNote}`,
      "",
      markdownTable(name, r),
      "",
    );
  }
  return out.join("\n");
}

if (import.meta.main) {
  try {
    const args = parseEvalArgs(Deno.args);
    console.log(await runEval(args));
    // The wasm backend's worker threads would keep the process alive.
    Deno.exit(0);
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    Deno.exit(1);
  }
}
