/**
 * Upscales images with an RRDBNet model: one file to one file, or files and every PNG/JPEG/WebP of
 * folders into a folder. A thin wrapper over {@link Upscaler}.
 *
 *     deno task upscale INPUT... -o OUTPUT [--format png|jpeg|webp|auto] [--quality Q] [--name NAME|--model PATH]
 *       [--outscale F] [--tile N] [--tile-pad P] [--backend webgpu|wasm|cpu] [--threads N]
 *       [--precision f32|f16] [--tta] [--alpha net|bicubic] [--low-memory] [--max-pixels N] [--force]
 *
 * Bad input (missing, unreadable, truncated, not an image, too many pixels) gives one line
 * `error: FILE: REASON`; the other files of a folder still get done, and the exit code is 1 at the
 * end. Outputs are written under a temporary name in the target folder and then linked or renamed
 * into place, so no partial output file is ever left, and an existing file is only replaced with
 * `--force`; with several files, on a writer thread while the next image runs (cli/save.ts).
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, extname, join } from "node:path";
import { type BackendName, describeBackend, initBackend } from "../core/backend.ts";
import {
  decodeImage,
  formatFromPath,
  IMAGE_FILE,
  type ImageFormat,
  jpegWebpEncoder,
  readImageHeader,
} from "../core/image_io.ts";
import { planTiles } from "../core/tile.ts";
import {
  type AlphaUpsampler,
  DEFAULT_MODEL,
  DEFAULT_TILE,
  DEFAULT_TILE_CPU_KERNELS,
  DEFAULT_TILE_PAD,
  Upscaler,
} from "../core/upscaler.ts";
import type { ConvPrecision } from "../core/kernels/webgpu_conv3x3.ts";
import { describeChoice } from "../core/kernels/webgpu_plan.ts";
import { SHIPPED_MODELS, shippedModelPath } from "../core/weights/shipped.ts";
import { createProgress } from "./progress.ts";
import { exists, ioReason, saveImage, SaveThread } from "./save.ts";
import { loadModel } from "./load_model.ts";
import { parseNumberFlag, THREADS, UsageError, WHOLE } from "./flags.ts";

const MODEL_NAMES = Object.keys(SHIPPED_MODELS);

/**
 * Free memory (bytes) from which the CPU kernels' tiles are {@link LARGE_TILE_CPU_KERNELS} pixels by
 * default: x4plus on a 512x512 photo peaked at 1.33 GB in one tile (0.89 GB in four of 256) and took
 * 61.3 s instead of 75.6 (a 384x384 one 31.8 s instead of 44.0, 0.99 GB instead of 0.74): fewer
 * tiles redo less of their neighbours' overlap (README, "deno task upscale").
 */
export const LARGE_TILE_BYTES = 3e9;
/** The CPU kernels' tile side where {@link LARGE_TILE_BYTES} are free. */
export const LARGE_TILE_CPU_KERNELS = 512;
const LARGE_TILE_GB = LARGE_TILE_BYTES / 1e9;

const USAGE = `usage: deno task upscale INPUT... -o OUTPUT [options]

INPUT is an image (PNG, JPEG or WebP) or a folder of them; OUTPUT is then a file or a folder. With
several INPUTs (files, folders, a shell glob), OUTPUT is a folder.

options:
  -o, --output PATH     output file, or folder (INPUT a folder, or several; created if missing)
  -f, --format FMT      png, jpeg or webp, or auto: each input's own (default: from OUTPUT's
                        extension; png into folders)
  -q, --quality Q       JPEG 1-100 (default 90); WebP 0-100 (default lossless)
  -n, --name NAME       a shipped model (default ${MODEL_NAMES[0]}):
                        ${MODEL_NAMES.slice(0, 2).join(", ")},
                        ${MODEL_NAMES.slice(2).join(", ")}
  -m, --model PATH      a model file instead (from training or \`deno task import\`), or a
                        published one as it comes (.pth, ncnn .param), imported on the fly
  -s, --outscale F      final scale (default: the model's); resampled bicubically after the model
  -t, --tile N          tile side in input pixels, 0 for none (default on our CPU kernels, i.e.
                        wasm: ${LARGE_TILE_CPU_KERNELS} with ${LARGE_TILE_GB} GB of memory free, else ${DEFAULT_TILE_CPU_KERNELS};
                        ${DEFAULT_TILE} on webgpu and cpu)
      --tile-pad P      tile overlap in input pixels (default ${DEFAULT_TILE_PAD})
      --backend NAME    webgpu, wasm or cpu (default: webgpu on a real GPU, else wasm)
  -j, --threads N       CPU threads on wasm (default: all logical cores, at most 8)
      --precision P     f32 (default), or on webgpu with shader-f16: f16 (half-precision maps,
                        weights and products) or f16-f32acc (half-precision maps and weights)
      --winograd N      on webgpu: 4 or 2, the convolutions as Winograd F(NxN, 3x3)
                        (fewer multiply-adds, more memory); 0: direct; auto (default): direct or
                        F(4x4), whichever a timed forward of the first patch finds faster
      --alpha MODE      net (default): a transparent image's alpha through the model too (2x the
                        time, sharper edges); bicubic: alpha resized
  -x, --tta             test-time augmentation: each tile in its 8 flips and transposes, averaged
                        (realesrgan-ncnn-vulkan's -x; 8x the time)
      --low-memory      on our CPU kernels (wasm): each conv's Winograd filters made before it on
                        every tile instead of kept (x4plus: 210 MB less, a few percent slower); on
                        by itself, with a line saying so, where under 1.5 GB of memory is free
      --max-pixels N    refuse inputs larger than N pixels, e.g. 16e6 or 16M (default 16M)
      --force           overwrite existing output files
  -h, --help            this text`;

/** The parsed command line. */
export interface UpscaleArgs {
  /** Files or folders; with more than one, `output` is a folder. */
  inputs: string[];
  output: string;
  /** "auto": each output in its input's format. */
  format?: ImageFormat | "auto";
  quality?: number;
  model: string;
  outscale?: number;
  /** Absent: the Upscaler's default for the backend ({@link Upscaler.defaultTile}). */
  tile?: number;
  tilePad: number;
  backend?: BackendName;
  /** CPU threads of the wasm backend (absent: the logical cores). */
  threads?: number;
  precision: ConvPrecision;
  winograd: 0 | 2 | 4 | "auto";
  maxPixels: number;
  force: boolean;
  /** Test-time augmentation (the Upscaler's `tta`). */
  tta: boolean;
  /** The CPU kernels make each conv's filters per tile (the Upscaler's `cpuPackEachRun`). */
  lowMemory: boolean;
  /** How a transparent image's alpha is upscaled (the Upscaler's `alpha`). */
  alpha: AlphaUpsampler;
}

export { UsageError };

/**
 * Free memory (bytes) under which the CPU kernels make their filters per tile as with --low-memory,
 * unasked: kept, x4plus's take 210 MB more, and a 256-pixel tile already peaks at 0.82 GB.
 */
export const AUTO_LOW_MEMORY_BYTES = 1.5e9;

/** Why the CPU kernels should run as with --low-memory, unasked; undefined: no need, or unknown. */
export function autoLowMemory(available: number | undefined): string | undefined {
  if (available === undefined || !(available < AUTO_LOW_MEMORY_BYTES)) return undefined;
  return `${(available / 1e9).toFixed(2)} GB free: the CPU kernels make each conv's filters per tile ` +
    `(as --low-memory: the same output, 210 MB less for x4plus, a few percent slower)`;
}

/**
 * The tile side when --tile is not given: the upscaler's default, or on the CPU kernels (where that
 * default is theirs) {@link LARGE_TILE_CPU_KERNELS} where `available` memory allows.
 */
export function defaultTile(upscaler: Pick<Upscaler, "defaultTile">, available: number | undefined): number {
  const tile = upscaler.defaultTile;
  const roomy = available !== undefined && available >= LARGE_TILE_BYTES;
  return tile === DEFAULT_TILE_CPU_KERNELS && roomy ? LARGE_TILE_CPU_KERNELS : tile;
}

/** The system's available memory in bytes, where the sys permission allows reading it (never prompting). */
function availableMemory(): number | undefined {
  const query = { name: "sys", kind: "systemMemoryInfo" } as const;
  if (Deno.permissions.querySync(query).state !== "granted") return undefined;
  return Deno.systemMemoryInfo().available;
}

const parseNumber = (flag: string, value: string | undefined, check: (n: number) => boolean, want: string) =>
  parseNumberFlag(flag, value, { check, want, suffixes: true });

/** Parses the command line; throws {@link UsageError} on bad usage, returns null for --help. */
export function parseUpscaleArgs(argv: string[]): UpscaleArgs | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        output: { type: "string", short: "o" },
        format: { type: "string", short: "f" },
        quality: { type: "string", short: "q" },
        model: { type: "string", short: "m" },
        name: { type: "string", short: "n" },
        outscale: { type: "string", short: "s" },
        tile: { type: "string", short: "t" },
        "tile-pad": { type: "string" },
        backend: { type: "string" },
        threads: { type: "string", short: "j" },
        precision: { type: "string" },
        winograd: { type: "string" },
        "max-pixels": { type: "string" },
        force: { type: "boolean", default: false },
        tta: { type: "boolean", short: "x", default: false },
        "low-memory": { type: "boolean", default: false },
        alpha: { type: "string", default: "net" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    // node's parseArgs explains on later lines (e.g. how to give a value starting with a dash)
    throw new UsageError((e as Error).message.replace(/\s*\n\s*/g, " "));
  }
  const { values: v, positionals } = parsed;
  if (v.help) return null;
  if (!positionals.length) throw new UsageError("no INPUT given");
  if (!v.output) throw new UsageError("no OUTPUT given (-o PATH)");
  let format: ImageFormat | "auto" | undefined;
  if (v.format !== undefined) {
    format = v.format === "auto" ? "auto" : formatFromPath(`.${v.format}`);
    if (!format) throw new UsageError(`--format must be png, jpeg, webp or auto, not "${v.format}"`);
  }
  if (v.model !== undefined && v.name !== undefined) throw new UsageError("give --model or --name, not both");
  let model = v.model ?? DEFAULT_MODEL;
  if (v.name !== undefined) {
    try {
      model = shippedModelPath(v.name);
    } catch (e) {
      throw new UsageError(`--name: ${(e as Error).message}`);
    }
  }
  if (!["net", "bicubic"].includes(v.alpha!)) {
    throw new UsageError(`--alpha must be net or bicubic, not "${v.alpha}"`);
  }
  const quality = parseNumber("--quality", v.quality, (n) => n >= 0 && n <= 100, "0-100");
  const backend = v.backend as BackendName | undefined;
  if (backend !== undefined && !["webgpu", "wasm", "cpu"].includes(backend)) {
    throw new UsageError(`--backend must be webgpu, wasm or cpu, not "${backend}"`);
  }
  const precision = (v.precision ?? "f32") as ConvPrecision;
  if (!["f32", "f16", "f16-f32acc"].includes(precision)) {
    throw new UsageError(`--precision must be f32, f16 or f16-f32acc, not "${v.precision}"`);
  }
  const winograd = (v.winograd ?? "auto") === "auto" ? "auto" : Number(v.winograd);
  if (![0, 2, 4, "auto"].includes(winograd)) {
    throw new UsageError(`--winograd must be 0, 2, 4 or auto, not "${v.winograd}"`);
  }
  return {
    inputs: positionals,
    output: v.output,
    format,
    quality,
    model,
    outscale: parseNumber("--outscale", v.outscale, (n) => n > 0 && n <= 16, "a number in (0, 16]"),
    tile: parseNumberFlag("--tile", v.tile, WHOLE),
    tilePad: parseNumberFlag("--tile-pad", v["tile-pad"], WHOLE) ?? DEFAULT_TILE_PAD,
    backend,
    threads: parseNumberFlag("--threads", v.threads, THREADS),
    precision,
    winograd: winograd as 0 | 2 | 4 | "auto",
    maxPixels: parseNumber("--max-pixels", v["max-pixels"], (n) => n >= 1, "a pixel count ≥ 1") ?? 16e6,
    force: v.force!,
    tta: v.tta!,
    lowMemory: v["low-memory"]!,
    alpha: v.alpha as AlphaUpsampler,
  };
}

/** One input file and where its output goes. */
interface Job {
  input: string;
  output: string;
  format: ImageFormat;
}

/** Lists the jobs: one per file, one per image of a folder (sorted, not recursive). */
async function planJobs(args: UpscaleArgs): Promise<Job[]> {
  const isDir = async (path: string) => (await Deno.stat(path).catch(() => null))?.isDirectory ?? false;
  const outIsDir = await isDir(args.output);
  const checkQuality = (format: ImageFormat) => {
    if (args.quality !== undefined && format === "png" && args.format !== "auto") {
      throw new UsageError("--quality applies to jpeg and webp only");
    }
    return format;
  };
  // "auto": the input's format (PNG where its extension says none)
  const formatFor = (input: string) => args.format === "auto" ? formatFromPath(input) ?? "png" : args.format;
  const [single] = args.inputs;
  if (args.inputs.length === 1 && !await isDir(single) && !outIsDir) {
    // A missing input is reported per file, like any other unreadable input.
    const format = formatFor(single) ?? formatFromPath(args.output);
    if (!format) {
      throw new UsageError(`cannot tell the format from "${args.output}": give .png/.jpg/.webp or --format`);
    }
    return [{ input: single, output: args.output, format: checkQuality(format) }];
  }
  if (args.inputs.length > 1 && (await Deno.stat(args.output).catch(() => null))?.isFile) {
    throw new UsageError(`${args.output} is a file: with several inputs, OUTPUT is a folder`);
  }
  // into a folder, under the inputs' names
  const job = (input: string) => {
    const format = checkQuality(formatFor(input) ?? "png");
    const ext = format === "jpeg" ? ".jpg" : `.${format}`;
    return { input, output: join(args.output, basename(input, extname(input)) + ext), format };
  };
  const jobs: Job[] = [];
  for (const input of args.inputs) {
    if (!await isDir(input)) {
      jobs.push(job(input));
      continue;
    }
    const names: string[] = [];
    try {
      for await (const entry of Deno.readDir(input)) {
        if (!entry.isDirectory && IMAGE_FILE.test(entry.name)) names.push(entry.name);
      }
    } catch (e) {
      throw new Error(`${input}: ${ioReason(e, "folder")}`);
    }
    if (!names.length) throw new Error(`${input}: no .png, .jpg or .webp files in this folder`);
    jobs.push(...names.sort().map((name) => job(join(input, name))));
  }
  return jobs;
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Runs the tool; returns the exit code (0 all done, 1 some file failed, 2 bad usage, 130 interrupted). */
export async function main(argv: string[]): Promise<number> {
  let args: UpscaleArgs | null;
  try {
    args = parseUpscaleArgs(argv);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n(see --help)`);
    return 2;
  }
  if (!args) {
    console.log(USAGE);
    return 0;
  }
  let upscaler: Upscaler | undefined;
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    // what to do with which files first: a wrong OUTPUT or a missing folder is said before any slow step
    let jobs: Job[];
    try {
      jobs = await planJobs(args);
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      return e instanceof UsageError ? 2 : 1;
    }
    // the net runs on our CPU kernels: tfjs's ops (slicing, padding) need no thread pool of their own
    const backend = await initBackend(args.backend, { threads: args.threads, opsThreads: 1 });
    console.error(`backend: ${describeBackend(backend)}`);
    if (args.precision !== "f32" && !backend.f16) {
      console.error(
        `error: --precision ${args.precision} needs the webgpu backend on an adapter with shader-f16; ` +
          (backend.name === "webgpu" ? `${backend.adapter} has none` : `this run uses ${backend.name}`),
      );
      return 2;
    }
    if (args.winograd && args.winograd !== "auto" && backend.name !== "webgpu") {
      console.error(
        `error: --winograd ${args.winograd} needs the webgpu backend; this run uses ${backend.name}`,
      );
      return 2;
    }
    try {
      upscaler = await loadModel(args.model);
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      return 1;
    }
    upscaler.precision = args.precision;
    upscaler.winograd = args.winograd;
    const available = backend.name === "wasm" ? availableMemory() : undefined;
    const tight = args.lowMemory ? undefined : autoLowMemory(available);
    if (tight) console.error(`memory: ${tight}`);
    upscaler.cpuPackEachRun = args.lowMemory || !!tight;
    const c = upscaler.config;
    console.error(
      `model: ${args.model} (x${c.scale}, ${c.numBlock} blocks, ${upscaler.info.dtype ?? "fp32"}` +
        `${args.precision === "f32" ? "" : `, computed in ${args.precision}`}` +
        `${
          args.winograd === "auto"
            ? backend.name === "webgpu" ? ", convolutions direct or Winograd, as timed" : ""
            : args.winograd
            ? `, Winograd F(${args.winograd}x${args.winograd}) convolutions`
            : ""
        })`,
    );
    if (jobs.length > 1 || jobs[0].output !== args.output) await Deno.mkdir(args.output, { recursive: true });
    const tile = args.tile ?? defaultTile(upscaler, available);
    const code = await runJobs(jobs, { ...args, tile }, upscaler, controller.signal);
    if (upscaler.convChoice) console.error(`convolutions: ${describeChoice(upscaler.convChoice)}`);
    return code;
  } catch (e) {
    if ((e as Error).name === "AbortError") {
      console.error("interrupted");
      return 130;
    }
    console.error(`error: ${(e as Error).message.split("\n")[0]}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    upscaler?.dispose();
  }
}

async function runJobs(jobs: Job[], args: UpscaleArgs, upscaler: Upscaler, signal: AbortSignal) {
  const tile = args.tile ?? upscaler.defaultTile;
  // Read every header first: bad files fail fast, and the bar's total (tiles over all files) is known.
  const inputs = await Promise.all(jobs.map(async (job) => {
    try {
      const bytes = await Deno.readFile(job.input);
      const header = readImageHeader(bytes);
      const tiles = planTiles(header.height, tile, args.tilePad).length *
        planTiles(header.width, tile, args.tilePad).length;
      return { bytes, tiles, error: undefined };
    } catch (e) {
      return {
        bytes: undefined,
        tiles: 0,
        error: e instanceof Deno.errors.NotFound ? "no such file" : undefined,
      };
    }
  }));
  if (jobs.some((j) => j.format !== "png")) {
    const { encoder, why } = await jpegWebpEncoder();
    if (encoder === "wasm") console.error(`note: JPEG/WebP from jSquash's wasm encoders (slower): ${why}`);
  }
  const progress = createProgress(inputs.reduce((n, i) => n + i.tiles, 0), jobs.length);
  const written = new Set<string>();
  let failed = 0;
  let tilesBefore = 0;
  // with several files, each is encoded and written on a thread of its own while the next one runs;
  // at most two wait there (their pixels are held until written)
  const thread = jobs.length > 1 ? new SaveThread() : undefined;
  const saving: Promise<void>[] = [];
  try {
    for (const [k, job] of jobs.entries()) {
      const t0 = performance.now();
      progress.startFile(k + 1, basename(job.input));
      try {
        if (inputs[k].error) throw new Error(inputs[k].error);
        if (written.has(job.output)) throw new Error(`${job.output} is already an output of this run`);
        if (!args.force && await exists(job.output)) {
          throw new Error(`${job.output} exists (use --force to overwrite)`);
        }
        // before the work, not after it (saveImage says the same if the folder goes meanwhile)
        if (!(await Deno.stat(dirname(job.output)).catch(() => null))?.isDirectory) {
          throw new Error(`${job.output}: its folder does not exist`);
        }
        let bytes = inputs[k].bytes;
        if (!bytes) {
          try {
            bytes = await Deno.readFile(job.input);
          } catch (e) {
            throw new Error(ioReason(e, "file"));
          }
        }
        const img = await decodeImage(bytes, { maxPixels: args.maxPixels });
        const before = tilesBefore;
        const out = await upscaler.upscale(img, {
          outscale: args.outscale,
          tile,
          tilePad: args.tilePad,
          tta: args.tta,
          alpha: args.alpha,
          signal,
          // within tiles too: one tile of a large image takes minutes on the CPU kernels
          onFineProgress: (done, total) => {
            if (total > inputs[k].tiles) progress.addTiles(total - inputs[k].tiles);
            inputs[k].tiles = Math.max(inputs[k].tiles, total);
            progress.update(before + done);
          },
        });
        const sizes = `${img.width}x${img.height} -> ${out.width}x${out.height}`;
        const request = {
          image: out,
          format: job.format,
          quality: args.quality,
          output: job.output,
          force: args.force,
        };
        written.add(job.output);
        const saved = (thread ? thread.save(request) : saveImage(request)).then(
          () => progress.log(`${job.input} -> ${job.output} (${sizes}, ${seconds(performance.now() - t0)})`),
          (e) => {
            written.delete(job.output);
            failed++;
            progress.log(`error: ${job.input}: ${(e as Error).message.split("\n")[0]}`);
          },
        );
        saving.push(saved);
        if (saving.length > (thread ? 2 : 0)) await saving.shift();
      } catch (e) {
        if ((e as Error).name === "AbortError") throw e;
        failed++;
        progress.log(`error: ${job.input}: ${(e as Error).message.split("\n")[0]}`);
      }
      tilesBefore += inputs[k].tiles;
      progress.update(tilesBefore);
    }
  } finally {
    // what was upscaled gets written, even when the run is interrupted
    await Promise.all(saving);
    thread?.close();
    progress.stop();
  }
  if (jobs.length > 1) console.error(`${jobs.length - failed} of ${jobs.length} files done`);
  return failed ? 1 : 0;
}

if (import.meta.main) {
  // wasm worker threads would keep the process alive after the work is done.
  Deno.exit(await main(Deno.args));
}
