/**
 * tile.ts's feathered blending on the GPU: each tile's output, clamped to [0, 1], is added into a
 * whole-image sum at its feathering weight where the forward left it (the plan's output buffer, in
 * the same submit), and the sum is divided by the weights once at the end, so that a tiled upscale
 * on webgpu reads nothing back until the image is whole.
 *
 * Why: under Deno 2.9.6 a read-back resolved ~11 ms after the GPU finished (ext/webgpu polls, then
 * sleeps; webgpu_map.ts now reads early) and copied its bytes twice on the host; with the host blender
 * every tile paid that, and its blending ran on the main thread between tiles. On an H200 a 256x256
 * upscale in four tiles was CPU-bound (18 ms of GPU per tile, 164 ms of CPU per image).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  dispatch1d,
  flatIndex,
  type PassBackend,
  PlannedPass,
  type ReadBack,
  tensorFromBuffer,
} from "./webgpu_pass.ts";
import type { CustomProgram, Uniform } from "./webgpu_program.ts";

type Program = CustomProgram & { uniforms: string; params: Uniform[] };
const i32 = (v: number): Uniform => ({ type: "int32", data: [v] });

/**
 * Adds `weight[y] · weight[th + x] · clamp(src)` for each pixel (y, x) of a th x tw region at the
 * top left of a source of `srcW` columns into `sum` at (y0 + y, x0 + x), and the weight into `wsum`.
 */
function accumulateProgram(
  p: { n: number; th: number; tw: number; srcH: number; srcW: number; y0: number; x0: number },
  image: { height: number; width: number; channels: number },
): Program {
  const c = image.channels;
  return {
    name: "TileBlendAccumulateProgram",
    key: `tile-blend-accumulate:${c}`,
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> sum: array<f32>;
@group(0) @binding(1) var<storage, read_write> wsum: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.n * u.th * u.tw) { return; }
  let x = i % u.tw;
  let y = (i / u.tw) % u.th;
  let b = i / (u.tw * u.th);
  let w = weight[y] * weight[u.th + x];
  let pixel = (u.y0 + y) * u.W + u.x0 + x;
  // each image adds its own values; the first adds the pixel's weight, which images share
  if (b == 0) { wsum[pixel] += w; }
  let at = ((b * u.srcH + y) * u.srcW + x) * ${c};
  let to = (b * u.H * u.W + pixel) * ${c};
  for (var k = 0; k < ${c}; k++) {
    sum[to + k] += w * clamp(src[at + k], 0.0, 1.0);
  }
}`,
    dispatch: dispatch1d(p.n * p.th * p.tw),
    uniforms: "n : i32, th : i32, tw : i32, srcH : i32, srcW : i32, y0 : i32, x0 : i32, H : i32, W : i32,",
    params: [p.n, p.th, p.tw, p.srcH, p.srcW, p.y0, p.x0, image.height, image.width].map(i32),
  };
}

/** Divides each value of `sum` by its pixel's weight, in place. */
function normalizeProgram(n: number, image: { height: number; width: number; channels: number }): Program {
  const pixels = image.height * image.width;
  return {
    name: "TileBlendNormalizeProgram",
    key: "tile-blend-normalize",
    source: (prelude) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> sum: array<f32>;
@group(0) @binding(1) var<storage, read> wsum: array<f32>;
@group(0) @binding(2) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.count) { return; }
  let w = wsum[(i / u.channels) % u.pixels];
  if (w != 1.0) { sum[i] = sum[i] / w; }
}`,
    dispatch: dispatch1d(n * pixels * image.channels),
    uniforms: "count : i32, channels : i32, pixels : i32,",
    params: [n * pixels * image.channels, image.channels, pixels].map(i32),
  };
}

/** Where one tile's output goes: as TileBlender.add's `at`, and how much of the source is the tile. */
export interface TilePlacement {
  y0: number;
  x0: number;
  /** Feathering weights of the tile's rows and columns (featherWeights); their lengths are its size. */
  wy: Float32Array;
  wx: Float32Array;
}

/**
 * TileBlender (tile.ts) on the GPU: the same feathered average of clamped tile outputs, accumulated
 * in buffers of the device. Sizes as TileBlender's; {@link fits} says whether the device can hold them.
 */
export class TileBlenderWebGPU {
  readonly batch: number;
  readonly width: number;
  readonly height: number;
  readonly channels: number;
  private readonly store: PlannedPass;
  private readonly sum: GPUBuffer;
  private readonly wsum: GPUBuffer;
  /** One small pass per tile added (its uniforms and weights), freed with the blender. */
  private readonly passes: PlannedPass[] = [];

  /** Whether `backend`'s device binds a sum of this shape in one buffer. */
  static fits(
    backend: PassBackend,
    shape: { batch?: number; width: number; height: number; channels: number },
  ) {
    const { maxStorageBufferBindingSize, maxBufferSize } = backend.device.limits;
    const bytes = 4 * (shape.batch ?? 1) * shape.width * shape.height * shape.channels;
    return bytes <= Math.min(maxStorageBufferBindingSize, maxBufferSize);
  }

  /** An empty output (zeros: WebGPU clears new buffers) of `batch` images of `width` x `height` x `channels`. */
  constructor(
    readonly backend: PassBackend,
    shape: { batch?: number; width: number; height: number; channels: number },
  ) {
    this.batch = shape.batch ?? 1;
    this.width = shape.width;
    this.height = shape.height;
    this.channels = shape.channels;
    this.store = new PlannedPass(backend);
    this.sum = this.store.buffer(4 * this.batch * this.width * this.height * this.channels);
    this.wsum = this.store.buffer(4 * this.width * this.height);
  }

  /**
   * Prepares the addition of one tile: the top-left `wy.length` x `wx.length` pixels of a forward's
   * output, f32 NHWC of `sourceShape` ([batch, rows, columns, channels]; a padded patch's output is
   * larger than its tile), at (`y0`, `x0`). Returns what records it into an encoder, after the
   * forward that writes `source` (RRDBNetPlanWebGPU.submit's `then`).
   */
  prepare(sourceShape: number[], at: TilePlacement): (encoder: GPUCommandEncoder, source: GPUBuffer) => void {
    const { y0, x0, wy, wx } = at;
    const [n, srcH, srcW, c] = sourceShape;
    const th = wy.length, tw = wx.length;
    if (n !== this.batch || c !== this.channels || th > srcH || tw > srcW) {
      throw new Error(`TileBlenderWebGPU: a ${th}x${tw} tile from an output of [${sourceShape}]`);
    }
    if (y0 < 0 || x0 < 0 || y0 + th > this.height || x0 + tw > this.width) {
      throw new Error("TileBlenderWebGPU: tile outside the image");
    }
    const pass = new PlannedPass(this.backend);
    this.passes.push(pass);
    const weights = pass.buffer(4 * (th + tw));
    const both = new Float32Array(th + tw);
    both.set(wy), both.set(wx, th);
    this.backend.device.queue.writeBuffer(weights, 0, both);
    const program = accumulateProgram({ n, th, tw, srcH, srcW, y0, x0 }, this);
    return (encoder, source) => {
      const inputs = [{ buffer: this.wsum }, { buffer: source }, { buffer: weights }];
      pass.add(program, { buffer: this.sum }, inputs);
      pass.record(encoder);
    };
  }

  /**
   * The blended images as a tensor (NHWC), submitted on tfjs's queue: the sum divided by the
   * weights, then copied into a tensor of tfjs's own. Add nothing after.
   */
  result(): tf.Tensor4D {
    const pass = this.normalized();
    pass.submitWithTfjs((encoder) => pass.record(encoder));
    return tensorFromBuffer(this.sum, [this.batch, this.height, this.width, this.channels]);
  }

  /** The blended images read back (NHWC floats): divided and copied out in one submit. Add nothing after. */
  read(reader: ReadBack): Promise<Float32Array> {
    const pass = this.normalized();
    return reader.read(
      this.sum,
      this.batch * this.height * this.width * this.channels,
      (e) => pass.record(e),
    );
  }

  /** A pass dividing the sum by the weights. */
  private normalized(): PlannedPass {
    const pass = new PlannedPass(this.backend);
    this.passes.push(pass);
    pass.add(normalizeProgram(this.batch, this), { buffer: this.sum }, [{ buffer: this.wsum }]);
    return pass;
  }

  /** Frees the blender's buffers (work already submitted still completes). */
  dispose(): void {
    for (const p of this.passes) p.dispose();
    this.passes.length = 0;
    this.store.dispose();
  }
}
