/**
 * The upscaler library: a model file in, images or tensors upscaled out. It follows Real-ESRGAN's
 * `RealESRGANer` in separate steps — pre-process (RGBA → RGB in [0, 1], alpha and grayscale set aside;
 * core/upscale_image.ts), tiled inference (of the colours, then of the alpha unless it is resized;
 * here, on webgpu through the prepared forwards of core/plan_cache.ts), post-process (grayscale and
 * alpha back, optional resampling to `outscale`; core/upscale_image.ts) — and UpscalerJS in being
 * abortable between tiles and reporting progress per tile.
 *
 * Default tile: 128 input pixels. RRDBNet's memory grows with the tile's area (about 18 kB per input
 * pixel at inference on wasm, mostly the 64-channel feature maps at 4x resolution): a 148-pixel tile
 * peaked at 460 MB with the 67 MB of fp32 weights (measured with tf.profile), and the largest tensor of
 * a 128 + 2·24 pixel tile (64 x 704 x 704 float32, 121 MiB) stays under WebGPU's default 128 MiB
 * storage-buffer limit. Default pad: 24. x4plus sees far beyond Real-ESRGAN's pad of 10: on the sample
 * photo at tile 32 the shipped model scored 38.5 dB against untiled with pad 10, 40.9 with 16 and 44.4
 * with 24. An inner tile costs at most (176/128)² ≈ 1.9x its untiled arithmetic; `tile: 0` runs untiled.
 *
 * On our CPU kernels (wasm) the default tile is 256: their memory is theirs, not WebGPU's buffers, and
 * a larger tile redoes less overlap ((304/256)² ≈ 1.41x, against (240/192)² ≈ 1.56x). They run the
 * net's upsampled tail in bands of rows (wasm_plan.ts), so a patch's memory grows with its LR maps
 * only: peak memory of `deno task upscale` on one patch of 176², 240² and 304² pixels (tiles 128,
 * 192, 256): 0.61, 0.71 and 0.82 GB (whole-patch tails and tfjs's copy of the net: 1.07, 1.43,
 * 1.87 GB). A 384x256 photo took 20.6-20.9 s at tile 192 and 17.4-17.6 s at 256 (2 threads).
 *
 * On webgpu the tiles are blended on the GPU (core/kernels/webgpu_tile_blend.ts), submitted back to
 * back in batches of ~200 ms, and the image is read back once: Deno 2.9.6's waits for the GPU block
 * the thread until the queue is empty, and resolve ~11 ms after the GPU finishes (ext/webgpu's
 * mapAsync polls, then sleeps), which our reads and tfjs's skip where this Deno allows it
 * (core/kernels/webgpu_map.ts). Where tiles are blended on the host (`gpuBlend` off, tta, an output
 * too large for one GPU buffer), the next tile is submitted while the current one is read back, so
 * that its GPU work fills that wait where there is one, and the host's blending (llvmpipe, 8x8 tiles
 * of a tiny net, reads that waited: 28.4 → 16.9 ms per tile).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { setImmediate } from "node:timers";
import type { RgbaImage } from "./image_io.ts";
import { checkRRDBNetWeights, RRDBNet, type RRDBNetConfig, unshuffleFactor } from "./rrdbnet_arch.ts";
import type { StateDict } from "./state_dict.ts";
import { featherWeights, planTiles, TileBlender } from "./tile.ts";
import { PlanCache, sameIds, weightIds } from "./plan_cache.ts";
import { alphaAsRgb, alphaFromNet, postProcess, preProcess, resample } from "./upscale_image.ts";
import type { ConvChoice } from "./kernels/webgpu_plan.ts";
import { type PassBackend, ReadBack } from "./kernels/webgpu_pass.ts";
import { TileBlenderWebGPU, type TilePlacement } from "./kernels/webgpu_tile_blend.ts";
import { earlierErrorsArrived, watchBackendErrors } from "./kernels/webgpu_errors.ts";
import { queueDone } from "./kernels/webgpu_map.ts";
import type { WebGPUBackendLike } from "./kernels/webgpu_program.ts";
import type { ConvPrecision } from "./kernels/webgpu_conv3x3.ts";
import { PROGRESS_MS as CPU_PROGRESS_MS, RRDBNetPlanWasm } from "./kernels/wasm_plan.ts";
import { backendThreads } from "./backend.ts";
import { decodeModelFile, type WeightDType } from "./weights/model_file.ts";

export { DEFAULT_MODEL } from "./weights/shipped.ts";

/** Default tile side in input pixels (see the module notes for why). */
export const DEFAULT_TILE = 128;
/** Default tile side where the forward runs on our CPU kernels (wasm): see the module notes. */
export const DEFAULT_TILE_CPU_KERNELS = 256;
/** Default overlap of tiles, in input pixels on each inner side. */
export const DEFAULT_TILE_PAD = 24;

/** Options of {@link Upscaler.upscaleTensor}. */
export interface TileOptions {
  /** Tile side in input pixels; 0 runs the whole image at once. Default {@link Upscaler.defaultTile}. */
  tile?: number;
  /** Overlap in input pixels. Default {@link DEFAULT_TILE_PAD}. */
  tilePad?: number;
  /** Checked before each tile; aborting throws a DOMException named "AbortError". */
  signal?: AbortSignal;
  /** Called with (0, total) before the first tile, then after each tile. */
  onProgress?: (done: number, total: number) => void;
  /**
   * The calls onProgress gets, and also calls while a tile runs, where the backend can tell (our CPU
   * kernels: every {@link Upscaler.progressMs} ms): `done` then counts the running tile's share of its work
   * (2.5: halfway through the third tile), so that a bar moves within minutes-long tiles.
   */
  onFineProgress?: (done: number, total: number) => void;
  /**
   * Test-time augmentation: each tile through the net in its 8 flips and transposes, each output
   * turned back, averaged (realesrgan-ncnn-vulkan's `-x`): 8x the time, a little more fidelity.
   */
  tta?: boolean;
}

/** Options of {@link Upscaler.upscale}. */
export interface UpscaleOptions extends TileOptions {
  /** Final scale relative to the input (resampled bicubically from the model's output). */
  outscale?: number;
  /**
   * How a non-opaque alpha channel is upscaled: "net" (default, Real-ESRGAN's `alpha_upsampler`
   * default): as a gray image through the model, twice the time; "bicubic": resized beside it.
   * On 19 hard-edged masks (Set5, Set14) x4plus beat bicubic by 1.1 dB and 0.09 SSIM on average (README).
   */
  alpha?: AlphaUpsampler;
}

/** How {@link Upscaler.upscale} upscales alpha: see {@link UpscaleOptions.alpha}. */
export type AlphaUpsampler = "net" | "bicubic";

/** What the upscaler knows about its model. */
export interface ModelInfo {
  name?: string;
  dtype?: WeightDType;
  metadata?: Record<string, string>;
}

/** Whether binding all of `x` in one WebGPU shader would pass the device's limit. */
function exceedsBinding(x: tf.Tensor): boolean {
  if (tf.getBackend() !== "webgpu") return false;
  const { device } = tf.backend() as unknown as WebGPUBackendLike;
  return 4 * x.size > device.limits.maxStorageBufferBindingSize;
}

/** Rows [begin[0], +size[0]) and columns [begin[1], +size[1]) of every image of an NHWC array. */
function cropNHWC(data: Float32Array, shape: number[], begin: [number, number], size: [number, number]) {
  const [n, h, w, c] = shape;
  const out = new Float32Array(n * size[0] * size[1] * c);
  const row = size[1] * c;
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < size[0]; y++) {
      const from = ((b * h + begin[0] + y) * w + begin[1]) * c;
      out.set(data.subarray(from, from + row), (b * size[0] + y) * row);
    }
  }
  return out;
}

/**
 * Lets timers, signals and I/O run: on wasm and cpu, `data()` resolves in a microtask, so a tile
 * loop would otherwise keep the event loop to itself and a timeout, Ctrl-C or a closed connection
 * could never abort it. An immediate, not a timer: under Deno 2.9.6 `setTimeout(0)` takes 2.2 ms,
 * an immediate 0.01 ms, and a timer, a signal or I/O that comes meanwhile is handled all the same.
 */
const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

function abortError(signal: AbortSignal): DOMException {
  const why = signal.reason instanceof Error ? `: ${signal.reason.message}` : "";
  return new DOMException(`upscale aborted${why}`, "AbortError");
}

/** What a patch's forward takes besides the patch: the abort signal, and where its progress goes. */
interface PatchRun {
  signal?: AbortSignal;
  /** The share of the patch's work done (0 to 1), while it runs, where the backend can tell. */
  onShare?: (share: number) => void;
}

/** One patch's forward, started by {@link Upscaler.launch}: read it, or cancel it to free it. */
interface PendingPatch {
  /** Whether the work runs before `read()` (webgpu), so that other work can be queued meanwhile. */
  overlaps: boolean;
  read(): Promise<Float32Array>;
  cancel(): void;
}

/**
 * GPU work (ms) the Upscaler queues between progress reports when it blends tiles on the GPU: long
 * enough that the GPU's idle time at each wait (the next tile's preparation) is a few percent of it,
 * short enough for progress and aborts to feel immediate.
 */
const PROGRESS_MS = 200;

/**
 * A net not made yet: its architecture and its weights (PyTorch layout), read when first needed
 * and again if needed again (so a model file's decoded weights need not be kept).
 */
export interface RRDBNetSource {
  config: RRDBNetConfig;
  weights(): StateDict;
}

/** An RRDBNet upscaler. Dispose it when done: it holds the weights on the backend. */
export class Upscaler {
  readonly info: ModelInfo;
  /** The tfjs net, once made; until then `source`, which it is made from. */
  private made?: RRDBNet;
  private source?: RRDBNetSource;
  /**
   * On webgpu, prepared forwards (core/kernels/webgpu_plan.ts: our kernels, one compute pass; 4.8x
   * faster than tfjs's ops for a 64x64 tile on an H200) for the last few patch shapes.
   */
  private readonly gpuPlans = new PlanCache(this);
  /**
   * On wasm, the forward runs on our CPU kernels (core/kernels/wasm_plan.ts: relaxed-SIMD FMA,
   * Winograd, fused layers, the backend's thread count) instead of tfjs's XNNPACK ops: 0.62 s
   * against 2.61 s for a 64x64 tile on 2 cores; false runs tfjs's ops.
   */
  cpuKernels = true;
  /**
   * With the CPU kernels: keep the weights as they are and make each conv's Winograd filters just
   * before it, every patch, instead of once (see WasmPlanOptions.packEachRun): x4plus takes 200 MB
   * less, for some time per patch (a changed value makes the plan again).
   */
  cpuPackEachRun = false;
  /**
   * Number format of the forward on webgpu: "f32", or "f16" / "f16-f32acc" (half-precision maps and
   * weights, see ConvPrecision; needs the adapter's shader-f16 and a backend started by initBackend).
   * The other backends compute in f32 only and refuse anything else.
   */
  precision: ConvPrecision = "f32";
  /**
   * On webgpu: the forward's 3x3 convolutions as Winograd F(4x4, 3x3) (4) or F(2x2, 3x3) (2)
   * (core/kernels/webgpu_winograd.ts); 0: direct; "auto" (default): whichever of direct and
   * Winograd F(4x4) (in any precision) runs the first patch's shape faster on this
   * GPU, timed once before it (see {@link convChoice}; elsewhere: no effect). On an H200 F(4x4) won
   * every shape of README's Benchmarks (as fast as direct to 2.3x faster); which wins is the GPU's call.
   */
  winograd: 0 | 2 | 4 | "auto" = "auto";
  /** What `winograd: "auto"` chose and measured in this precision (undefined until a patch ran on webgpu). */
  get convChoice(): ConvChoice | undefined {
    return this.gpuPlans.choice;
  }
  /**
   * On webgpu, tiles are blended on the GPU (core/kernels/webgpu_tile_blend.ts) and the image read
   * back once; false: each tile is read back and blended on the host, as before (for comparison;
   * the host also takes over where the device cannot hold the whole output in one buffer, and tta).
   */
  gpuBlend = true;
  /** How often (ms) a patch on the CPU kernels reports its progress to onFineProgress. */
  progressMs = CPU_PROGRESS_MS;
  private cpuPlan?: { plan: RRDBNetPlanWasm; weights: object[]; packEachRun: boolean };
  /** On webgpu, where images blended on the GPU are read back (a staging buffer kept between them). */
  private reader?: ReadBack;

  /**
   * Wraps a net (for instance one being trained), which the upscaler disposes on dispose(); or a
   * source, whose tfjs net is made only where one runs: on wasm the CPU kernels read the weights
   * straight from the source, so tfjs never holds a copy (x4plus: 67 MB less resident).
   */
  constructor(net: RRDBNet | RRDBNetSource, info: ModelInfo = {}) {
    if (net instanceof RRDBNet) this.made = net;
    else this.source = net;
    this.info = info;
  }

  /** The tfjs net, made from the source on first use. */
  get net(): RRDBNet {
    if (!this.made) {
      this.made = new RRDBNet(this.source!.config, { weights: this.source!.weights() });
      this.source = undefined;
    }
    return this.made;
  }

  /**
   * Loads a model file's bytes (fp32, fp16 or int8 safetensors in the project's format). The
   * upscaler keeps a copy, which it decodes where it first needs the weights.
   */
  static fromBytes(bytes: Uint8Array, options: { name?: string } = {}): Upscaler {
    return fromModelFile(bytes.slice(), options.name);
  }

  /** Reads and loads a model file. */
  static async load(path: string): Promise<Upscaler> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound ? "model file not found" : (e as Error).message;
      throw new Error(`${path}: ${why}`);
    }
    return fromModelFile(bytes, path);
  }

  /** The net's architecture. */
  get config(): RRDBNetConfig {
    return (this.made ?? this.source!).config;
  }

  /** The model's scale factor. */
  get scale(): number {
    return this.config.scale;
  }

  /**
   * Upscales a batch NHWC in [0, 1] by the model's scale, tile by tile; the result is clamped to
   * [0, 1]. The input is not disposed.
   */
  async upscaleTensor(x: tf.Tensor4D, options: TileOptions = {}): Promise<tf.Tensor4D> {
    const [n, h, w, c] = x.shape;
    const s = this.scale;
    const y = await this.runTiles(x, options, "tensor");
    return y instanceof tf.Tensor ? y : tf.tensor4d(y, [n, h * s, w * s, c]);
  }

  /**
   * Upscales an RGBA image: colours through the net, alpha (unless opaque) through the net too or
   * resized ({@link UpscaleOptions.alpha}), grayscale inputs (R = G = B everywhere) kept grayscale.
   * A 16-bit image (`data16`) is read at full depth and comes back with `data16` too. Progress
   * counts the alpha's tiles after the colours'.
   */
  async upscale(img: RgbaImage, options: UpscaleOptions = {}): Promise<RgbaImage> {
    const outscale = options.outscale ?? this.scale;
    if (!(outscale > 0)) throw new Error(`outscale must be positive, not ${options.outscale}`);
    if (options.alpha !== undefined && !["net", "bicubic"].includes(options.alpha)) {
      throw new Error(`alpha must be "net" or "bicubic", not ${JSON.stringify(options.alpha)}`);
    }
    const input = preProcess(img);
    const { width: w, height: h } = input, s = this.scale;
    const alphaByNet = !input.opaque && (options.alpha ?? "net") === "net";
    const passes = alphaByNet ? 2 : 1;
    const run = async (rgb: Float32Array, pass: number) => {
      const x = tf.tensor4d(rgb, [1, h, w, 3]);
      // the alpha's tiles count after the colours'
      const overPasses = (report?: (done: number, total: number) => void) =>
        report &&
        ((done: number, total: number) =>
          (pass === 0 || done > 0) && report(pass * total + done, passes * total));
      try {
        return await this.runTiles(x, {
          ...options,
          onProgress: overPasses(options.onProgress),
          onFineProgress: overPasses(options.onFineProgress),
        }, "data");
      } finally {
        x.dispose();
      }
    };
    const rgb = await run(input.rgb, 0);
    let alpha: Float32Array | undefined;
    if (alphaByNet) alpha = alphaFromNet(input, { rgb: await run(alphaAsRgb(input), 1), scale: s });
    else if (!input.opaque) {
      alpha = resample(input.alpha, { width: w, height: h, channels: 1 }, { width: w * s, height: h * s });
    }
    return postProcess(input, { rgb, alpha, scale: s }, { outscale });
  }

  /** Frees the weights and the prepared plans; `keepNet`: the plans only (the net lives on). */
  dispose(options: { keepNet?: boolean } = {}): void {
    this.gpuPlans.dispose();
    this.reader?.dispose();
    this.reader = undefined;
    this.cpuPlan?.plan.dispose();
    this.cpuPlan = undefined;
    if (!options.keepNet) this.made?.dispose();
  }

  /**
   * The tile side used when none is given: {@link DEFAULT_TILE_CPU_KERNELS} where the forward runs on
   * our CPU kernels (wasm with `cpuKernels`), at every scale (their upsampled maps are made in bands
   * of rows: an x8 net's 384x256 image took 23.7 s at 256, 32.0 s at 128, 1.10 and 0.94 GB), and
   * {@link DEFAULT_TILE} elsewhere. On wasm it makes the kernels' plan, so that a runtime where they
   * cannot start gets tfjs's ops' tile, not theirs. Elsewhere x8 nets get half the side (their
   * full-resolution maps hold 4x more per input pixel) and, on webgpu, at most what keeps a feature
   * map at output resolution within one storage binding.
   */
  get defaultTile(): number {
    if (this.cpuKernels && tf.getBackend() === "wasm" && this.wasmPlan()) return DEFAULT_TILE_CPU_KERNELS;
    if (this.scale <= 4) return DEFAULT_TILE;
    let tile = Math.round((DEFAULT_TILE * 4) / this.scale);
    if (tf.getBackend() === "webgpu") {
      const { maxStorageBufferBindingSize } = (tf.backend() as unknown as WebGPUBackendLike).device.limits;
      const patch = Math.floor(
        Math.sqrt(maxStorageBufferBindingSize / (4 * this.config.numFeat)) / this.scale,
      );
      tile = Math.max(8, Math.min(tile, patch - 2 * DEFAULT_TILE_PAD));
    }
    return tile;
  }

  /**
   * Runs the net tile by tile and blends the outputs, clamped to [0, 1]: as NHWC floats, or (`want`
   * "tensor") as a tensor where the tiles were blended on the GPU.
   */
  private runTiles(x: tf.Tensor4D, options: TileOptions, want: "data"): Promise<Float32Array>;
  private runTiles(x: tf.Tensor4D, options: TileOptions, want: "tensor"): Promise<Float32Array | tf.Tensor4D>;
  private async runTiles(
    x: tf.Tensor4D,
    options: TileOptions,
    want: "data" | "tensor",
  ): Promise<Float32Array | tf.Tensor4D> {
    const [n, h, w, c] = x.shape;
    const s = this.scale;
    const tile = options.tile ?? this.defaultTile;
    const pad = options.tilePad ?? DEFAULT_TILE_PAD;
    const rows = planTiles(h, tile, pad);
    const cols = planTiles(w, tile, pad);
    const total = rows.length * cols.length;
    const { signal } = options;
    const onProgress = (done: number, total: number) => {
      options.onProgress?.(done, total);
      options.onFineProgress?.(done, total);
    };
    // while tile k runs, the share of it done (where the backend can tell)
    const fine = options.onFineProgress;
    const within = (k: number, of: number) => fine && ((share: number) => fine(k + share, of));
    // WebGPU's errors come a turn of the event loop after the work: those of an upscale that failed
    // before this one (our reads do not wait for them) must arrive before this one starts to count
    if (tf.getBackend() === "webgpu") await earlierErrorsArrived();
    // "auto" decides on the largest patch, an inner tile's
    const side = (spans: typeof rows) => Math.max(...spans.map((t) => t.inEnd - t.inStart));
    const largest = this.paddedShape([n, side(rows), side(cols), c]);
    await this.gpuPlans.choose(largest);
    // the largest patch's plan first: the others then fit in the buffers it shares with them
    if (tf.getBackend() === "webgpu" && total > 1) this.gpuPlans.get(largest);
    // tfjs's ops run outside any error scope: an error WebGPU reports on them leaves tiles garbage;
    // the upscale has made all its calls by the time it checks
    const gpuCheck = watchBackendErrors({ timerCallbacks: false });
    const what = `the upscale of a ${w}x${h} input`;
    const image = { batch: n, width: w * s, height: h * s, channels: c };
    if (total === 1 && !this.blendsOnGPU(options, image)) {
      if (signal) await yieldToEventLoop();
      if (signal?.aborted) throw abortError(signal);
      onProgress(0, 1);
      const run = { signal, onShare: within(0, 1) };
      const data = await (options.tta ? this.patchTTA(x, run) : this.patch(x, run));
      await gpuCheck(what);
      onProgress(1, 1);
      return data;
    }
    const rowWeights = rows.map((_, k) => featherWeights(rows, k, s));
    const colWeights = cols.map((_, k) => featherWeights(cols, k, s));
    const tiles = rows.flatMap((r, i) => cols.map((col, j) => ({ r, col, i, j })));
    // tfjs's slice binds the whole input: past WebGPU's binding limit the device rejects it and the
    // tile reads zeros, silently (a 4000x4000 image is 192 MB, the default limit 128 MiB). Such an
    // input is cut into tiles on the host.
    const host = exceedsBinding(x) ? (await x.data()) as Float32Array : undefined;
    const crop = ({ r, col }: (typeof tiles)[number]): tf.Tensor4D => {
      const begin: [number, number] = [r.inStart, col.inStart];
      const size: [number, number] = [r.inEnd - r.inStart, col.inEnd - col.inStart];
      return host
        ? tf.tensor4d(cropNHWC(host, x.shape, begin, size), [n, ...size, c])
        : tf.slice(x, [0, ...begin, 0], [n, ...size, c]);
    };
    if (this.blendsOnGPU(options, image)) {
      const patches = tiles.map((t) => ({
        shape: this.paddedShape([n, t.r.inEnd - t.r.inStart, t.col.inEnd - t.col.inStart, c]),
        crop: () => crop(t),
        at: { y0: t.r.inStart * s, x0: t.col.inStart * s, wy: rowWeights[t.i], wx: colWeights[t.j] },
      }));
      return await this.tilesOnGPU(patches, {
        ...options,
        image,
        read: want === "data",
        onProgress,
        gpuCheck: () => gpuCheck(what),
      });
    }
    const blender = new TileBlender(image);
    const launch = (k: number): PendingPatch => {
      const t = crop(tiles[k]);
      const run = { signal, onShare: within(k, total) };
      if (!options.tta) return this.launch(t, run);
      return {
        overlaps: false,
        read: () => this.patchTTA(t, run).finally(() => t.dispose()),
        cancel: () => t.dispose(),
      };
    };
    onProgress(0, total);
    let next: PendingPatch | undefined;
    try {
      for (let k = 0; k < total; k++) {
        if (signal) await yieldToEventLoop();
        if (signal?.aborted) throw abortError(signal);
        const current = next ?? launch(k);
        next = undefined;
        const data = current.read();
        // Queued behind this tile's read-back, the next tile's GPU work fills the blending below (and
        // the ~10 ms Deno waits after the GPU finishes, where a read cannot be taken early).
        try {
          if (current.overlaps && k + 1 < total) next = launch(k + 1);
        } catch (e) {
          await data.catch(() => {});
          throw e;
        }
        const y = await data;
        await gpuCheck(what);
        const { r, col, i, j } = tiles[k];
        blender.add(y, {
          y0: r.inStart * s,
          x0: col.inStart * s,
          wy: rowWeights[i],
          wx: colWeights[j],
        });
        onProgress(k + 1, total);
      }
    } finally {
      next?.cancel();
    }
    return blender.result();
  }

  /**
   * Starts the net on a patch, which the returned work owns (and frees). On webgpu the forward is
   * submitted now and read back by `read()`, so the caller can queue the next patch in between;
   * elsewhere `read()` does the whole work.
   */
  private launch(x: tf.Tensor4D, run: PatchRun): PendingPatch {
    if (tf.getBackend() !== "webgpu") {
      return {
        overlaps: false,
        read: async () => {
          try {
            return await this.patch(x, run);
          } finally {
            x.dispose();
          }
        },
        cancel: () => x.dispose(),
      };
    }
    let y: tf.Tensor4D;
    try {
      y = tf.tidy(() => this.forward(x));
    } finally {
      x.dispose();
    }
    const planned = this.gpuPlans.takeCheck();
    return {
      overlaps: true,
      read: async () => {
        // the read-back starts at once, before the caller queues the next patch; a new plan's
        // verdict (see makePlan) decides whether its output is trusted
        const data = y.data();
        try {
          const [check, out] = await Promise.allSettled([planned, data]);
          if (check.status === "rejected") throw check.reason;
          if (out.status === "rejected") throw out.reason;
          return out.value as Float32Array;
        } finally {
          y.dispose();
        }
      },
      cancel: () => y.dispose(),
    };
  }

  /**
   * The tiles through the net and blended on the GPU ({@link TileBlenderWebGPU}): each patch's
   * forward and its blending in one submit, tiles submitted back to back in batches of about
   * {@link PROGRESS_MS} of GPU work, and one read-back for the whole image (`read`), or none.
   * Progress and aborts act between batches: in Deno 2.9.6 waiting for the GPU (onSubmittedWorkDone,
   * mapAsync) blocks the thread until the queue is empty, so a wait after every tile would leave
   * the GPU idle while the next one is prepared. A batch's length comes from the plan's timing
   * (winograd "auto"), else from the first tile's.
   */
  private async tilesOnGPU(
    tiles: { shape: number[]; crop: () => tf.Tensor4D; at: TilePlacement }[],
    options: Pick<TileOptions, "signal"> & {
      onProgress: (done: number, total: number) => void;
      image: { batch: number; width: number; height: number; channels: number };
      read: boolean;
      gpuCheck: () => Promise<void>;
    },
  ): Promise<Float32Array | tf.Tensor4D> {
    const { signal, onProgress, image, read, gpuCheck } = options;
    const backend = tf.backend() as unknown as PassBackend;
    const total = tiles.length, checks: Promise<void>[] = [];
    let msPerTile = this.gpuPlans.timedMs(tiles.map((t) => t.shape));
    let finished = 0, batchStart = performance.now();
    const reportUpTo = (count: number) => {
      for (; finished < count; finished++) {
        if (signal?.aborted) throw abortError(signal);
        onProgress(finished + 1, total);
      }
    };
    const blender = new TileBlenderWebGPU(backend, image);
    try {
      onProgress(0, total);
      for (let k = 0; k < total; k++) {
        if (signal) await yieldToEventLoop();
        if (signal?.aborted) throw abortError(signal);
        const patch = tf.tidy(() => this.padToMultiple(tiles[k].crop()));
        try {
          const plan = this.gpuPlans.get(patch.shape);
          const planned = this.gpuPlans.takeCheck();
          if (planned) checks.push(planned);
          plan.submit(patch, blender.prepare(plan.outputShape, tiles[k].at));
        } finally {
          patch.dispose();
        }
        const queued = k + 1 - finished;
        if (k + 1 < total && (msPerTile === undefined || queued * msPerTile >= PROGRESS_MS)) {
          await queueDone(backend.device);
          const now = performance.now();
          msPerTile = (now - batchStart) / queued;
          batchStart = now;
          reportUpTo(k + 1);
        }
      }
      if (read) {
        // reading the image back is waiting for every tile
        this.reader ??= new ReadBack(backend);
        const data = await blender.read(this.reader);
        await Promise.all(checks);
        await gpuCheck();
        reportUpTo(total);
        return data;
      }
      const y = blender.result();
      try {
        await queueDone(backend.device);
        await Promise.all(checks);
        await gpuCheck();
        reportUpTo(total);
      } catch (e) {
        y.dispose();
        throw e;
      }
      return y;
    } finally {
      blender.dispose();
    }
  }

  /** Whether {@link runTiles} blends on the GPU ({@link gpuBlend}; webgpu, no tta, a sum the device holds). */
  private blendsOnGPU(
    options: TileOptions,
    image: { batch: number; width: number; height: number; channels: number },
  ) {
    if (!this.gpuBlend || options.tta || tf.getBackend() !== "webgpu") return false;
    return TileBlenderWebGPU.fits(tf.backend() as unknown as PassBackend, image);
  }

  /** The net on one patch as NHWC floats, clamped to [0, 1]: on the CPU kernels or tfjs's ops. */
  private async patch(x: tf.Tensor4D, run: PatchRun = {}): Promise<Float32Array> {
    if (this.precision !== "f32" && tf.getBackend() !== "webgpu") {
      throw new Error(`precision ${this.precision} runs on the webgpu backend only, not ${tf.getBackend()}`);
    }
    if (this.winograd && this.winograd !== "auto" && tf.getBackend() !== "webgpu") {
      throw new Error(`winograd ${this.winograd} runs on the webgpu backend only, not ${tf.getBackend()}`);
    }
    const plan = this.cpuKernels && tf.getBackend() === "wasm" ? this.wasmPlan() : undefined;
    if (!plan) {
      const y = tf.tidy(() => this.forward(x));
      const planned = this.gpuPlans.takeCheck();
      try {
        if (planned) await planned;
        return (await y.data()) as Float32Array;
      } finally {
        y.dispose();
      }
    }
    const [n, h, w, c] = x.shape;
    const input = tf.tidy(() => this.padToMultiple(x));
    let raw: Float32Array;
    try {
      raw = await plan.run((await input.data()) as Float32Array, input.shape, {
        signal: run.signal,
        onProgress: run.onShare,
        progressMs: this.progressMs,
      });
    } finally {
      if (input !== x) input.dispose();
    }
    const s = this.scale, W = input.shape[2] * s;
    const out = new Float32Array(n * h * s * w * s * c);
    for (let b = 0, o = 0; b < n; b++) {
      for (let y = 0; y < h * s; y++) {
        const row = ((b * input.shape[1] * s + y) * W) * c;
        for (let i = 0; i < w * s * c; i++) out[o++] = Math.min(1, Math.max(0, raw[row + i]));
      }
    }
    return out;
  }

  /** {@link patch} on the 8 flips and transposes of `x`, each output turned back, averaged. */
  private async patchTTA(x: tf.Tensor4D, run: PatchRun): Promise<Float32Array> {
    const [n, h, w, c] = x.shape, s = this.scale;
    const sum = new Float32Array(n * h * s * w * s * c);
    for (let k = 0; k < 8; k++) {
      const xt = tf.tidy(() => dihedral(x, k));
      const [th, tw] = [xt.shape[1], xt.shape[2]];
      let y: Float32Array;
      try {
        const { onShare } = run;
        y = await this.patch(xt, {
          signal: run.signal,
          onShare: onShare && ((share) => onShare((k + share) / 8)),
        });
      } finally {
        if (xt !== x) xt.dispose(); // k = 0: x itself
      }
      const back = tf.tidy(() => undoDihedral(tf.tensor4d(y, [n, th * s, tw * s, c]), k));
      const v = (await back.data()) as Float32Array;
      back.dispose();
      for (let i = 0; i < sum.length; i++) sum[i] += v[i];
    }
    for (let i = 0; i < sum.length; i++) sum[i] /= 8;
    return sum;
  }

  /** The CPU kernels' plan, made again when the net's weight tensors or cpuPackEachRun change. */
  private wasmPlan(): RRDBNetPlanWasm | undefined {
    // a source not yet made into a net stands for its weights: they cannot have changed
    const weights = this.made ? weightIds(this.made) : [this.source!];
    const kept = this.cpuPlan;
    if (kept && (!sameIds(kept.weights, weights) || kept.packEachRun !== this.cpuPackEachRun)) {
      kept.plan.dispose();
      this.cpuPlan = undefined;
    }
    if (!this.cpuPlan) {
      try {
        const packEachRun = this.cpuPackEachRun;
        const net = this.made ?? { config: this.config, weights: this.source!.weights() };
        const plan = new RRDBNetPlanWasm(net, { threads: backendThreads(), packEachRun });
        this.cpuPlan = { plan, weights, packEachRun };
      } catch (e) {
        // e.g. a runtime without relaxed SIMD or shared memory: tfjs's ops still work, 4x slower
        const ops = (tf.backend() as unknown as { wasm: { tfjs: { getThreadsCount(): number } } }).wasm.tfjs
          .getThreadsCount();
        console.warn(
          `CPU kernels unavailable (${(e as Error).message}): running tfjs's wasm ops instead, on ${ops} ` +
            `thread${ops === 1 ? "" : "s"}`,
        );
        this.cpuKernels = false;
        return undefined;
      }
    }
    return this.cpuPlan.plan;
  }

  /** The sides BasicSR's x2 and x1 models' pixel-unshuffle needs the input's to be multiples of. */
  private get sideMultiple(): number {
    return unshuffleFactor(this.config);
  }

  /** The shape {@link padToMultiple} gives a patch of `shape`. */
  private paddedShape(shape: number[]): number[] {
    const m = this.sideMultiple;
    return [shape[0], Math.ceil(shape[1] / m) * m, Math.ceil(shape[2] / m) * m, shape[3]];
  }

  /** Pads a patch to the size the net needs (x2 and x1 pixel-unshuffle). */
  private padToMultiple(x: tf.Tensor4D): tf.Tensor4D {
    const mod = this.sideMultiple;
    const [, h, w] = x.shape;
    const ph = (mod - (h % mod)) % mod, pw = (mod - (w % mod)) % mod;
    let input = x;
    // Replicate the last row/column (reflection needs more pixels than a 1-pixel image has).
    if (ph) {
      input = tf.concat(
        [input, tf.tile(tf.slice(input, [0, h - 1, 0, 0], [-1, 1, -1, -1]), [1, ph, 1, 1])],
        1,
      );
    }
    if (pw) {
      input = tf.concat(
        [input, tf.tile(tf.slice(input, [0, 0, w - 1, 0], [-1, -1, 1, -1]), [1, 1, pw, 1])],
        2,
      );
    }
    return input;
  }

  /** The net on one patch with tfjs's ops (webgpu: our prepared passes), clamped. */
  private forward(x: tf.Tensor4D): tf.Tensor4D {
    const s = this.scale;
    const [, h, w] = x.shape;
    const input = this.padToMultiple(x);
    const ph = input.shape[1] - h, pw = input.shape[2] - w;
    const raw = tf.getBackend() === "webgpu"
      ? this.gpuPlans.get(input.shape).run(input)
      : this.net.apply(input);
    let y = tf.clipByValue(raw, 0, 1) as tf.Tensor4D;
    if (ph || pw) y = tf.slice(y, [0, 0, 0, 0], [-1, h * s, w * s, -1]);
    return y;
  }
}

/**
 * An upscaler over a model file's bytes, which it keeps: each tensor is decoded where it is put (the
 * CPU kernels' memory, a tfjs net), never all at once.
 */
function fromModelFile(bytes: Uint8Array, name?: string): Upscaler {
  const model = decodeModelFile(bytes, name, { lazy: true });
  checkRRDBNetWeights(model.config, model.stateDict);
  return new Upscaler(
    { config: model.config, weights: () => model.stateDict },
    { name, dtype: model.dtype, metadata: model.metadata },
  );
}

/** The `k`-th (0-7) of the 8 flips and transposes of an NHWC batch: k's bits flip W, flip H, transpose. */
function dihedral(x: tf.Tensor4D, k: number): tf.Tensor4D {
  let y = x;
  if (k & 1) y = tf.reverse(y, 2);
  if (k & 2) y = tf.reverse(y, 1);
  if (k & 4) y = tf.transpose(y, [0, 2, 1, 3]);
  return y;
}

/** The inverse of {@link dihedral}. */
function undoDihedral(y: tf.Tensor4D, k: number): tf.Tensor4D {
  if (k & 4) y = tf.transpose(y, [0, 2, 1, 3]);
  if (k & 2) y = tf.reverse(y, 1);
  if (k & 1) y = tf.reverse(y, 2);
  return y;
}
