/**
 * Plans Winograd convolutions (webgpu_winograd.ts) into a prepared pass: which convolutions
 * qualify, scratch buffers for V and M shared by all of them, filters transformed by a setup
 * pass, and the dispatches of one convolution (input transforms, GEMMs with their tuning choices,
 * output transform).
 * @module
 */
import type { Conv3x3Input, Conv3x3Spec } from "./webgpu_conv3x3.ts";
import type { FilterGradSpec } from "./webgpu_filter_grad.ts";
import type { PassLike, Region } from "./webgpu_pass.ts";
import {
  MAX_DISPATCH,
  winogradBytes,
  winogradCanRun,
  winogradFilterProgram,
  winogradGemmProgram,
  type WinogradGemmTile,
  winogradInputProgram,
  winogradOutputProgram,
  type WinogradSize,
  winogradTiles,
} from "./webgpu_winograd.ts";
import {
  winogradDyProgram,
  winogradFilterGradGemmProgram,
  winogradFilterGradOutputProgram,
  winogradGradSplits,
} from "./webgpu_winograd_grad.ts";

/** An input transformed for Winograd: V, its channels per tile, how many are written so far. */
export interface WinogradMaps {
  buffer: GPUBuffer;
  stride: number;
  filled: number;
  shape: { n: number; h: number; w: number; upsample?: boolean };
}

/**
 * Adds Winograd convolutions to a prepared pass: scratch buffers for V and M shared by every
 * convolution (one per size met), each filter transformed by the `setup` pass where first used
 * (once, for inference; the training plan passes its own pass, so every step transforms the
 * current weights).
 */
export class WinogradPlanner {
  private readonly scratch = {
    V: [] as GPUBuffer[],
    M: [] as GPUBuffer[],
    D: [] as GPUBuffer[],
    block: [] as GPUBuffer[],
  };
  /** U per filter buffer, byte offset and flip (the training plan's filters share one buffer). */
  private readonly filters = new Map<GPUBuffer, Map<string, Region>>();
  private readonly limit: number;

  constructor(
    private readonly pass: PassLike,
    private readonly setup: PassLike,
    private readonly options: {
      m: WinogradSize;
      gemmCandidates?: Partial<WinogradGemmTile>[];
      /** Maps, filters, V and U in f16, the arithmetic in f32 (see winogradCanRun). */
      half?: boolean;
      /** With `half`, the GEMMs' products in f16 too (WinogradGemmSpec.halfMath). */
      halfMath?: boolean;
    },
  ) {
    const { limits } = pass.backend.device;
    this.limit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  }

  /** Whether `spec` runs as Winograd: it qualifies, and its V and M fit the device's buffers. */
  canRun(spec: Conv3x3Spec, channels = spec.c0 + (spec.c1 ?? 0)): boolean {
    const { m } = this.options;
    return winogradCanRun(spec) && ((spec.precision ?? "f32") !== "f32") === !!this.options.half &&
      Math.ceil(winogradTiles(spec, m).tiles / 32) <= MAX_DISPATCH &&
      winogradBytes(spec, m, Math.max(channels, spec.cout)) <= this.limit;
  }

  /**
   * A V for `channels` channels (default: x0's and x1's) of `spec`'s tiles, with x0 (and x1)
   * transformed into its first ones; in the scratch buffer `scratch` (default "V", which every
   * convolution's own input transform reuses: "block" keeps a dense block's V through the
   * convolutions between its uses).
   */
  transformInput(
    spec: Conv3x3Input & { x0Offset?: number },
    io: { x0: GPUBuffer; x1?: GPUBuffer },
    options: { channels?: number; scratch?: "V" | "block" } = {},
  ): WinogradMaps {
    const { n, h, w, upsample } = spec;
    const channels = options.channels ?? spec.c0 + (spec.c1 ?? 0);
    const maps: WinogradMaps = {
      buffer: this.scratchBuffer(
        options.scratch ?? "V",
        winogradBytes(spec, this.options.m, channels, this.options.half ? 2 : 4),
      ),
      stride: channels,
      filled: 0,
      shape: { n, h, w, upsample },
    };
    this.transformSlice(maps, { buffer: io.x0, c: spec.c0, stride: spec.x0Stride, offset: spec.x0Offset });
    if (spec.c1) this.transformSlice(maps, { buffer: io.x1!, c: spec.c1, stride: spec.x1Stride ?? spec.c1 });
    return maps;
  }

  /** Transforms `c` channels from `offset` of `buffer` (stride channels per pixel) into the next of V. */
  transformSlice(
    maps: WinogradMaps,
    src: { buffer: GPUBuffer; c: number; stride: number; offset?: number },
  ): void {
    const program = winogradInputProgram({
      ...maps.shape,
      c: src.c,
      xStride: src.stride,
      xOffset: src.offset,
      vStride: maps.stride,
      vOffset: maps.filled,
      m: this.options.m,
      half: this.options.half,
    });
    this.pass.add(program, { buffer: maps.buffer }, [{ buffer: src.buffer }], "winograd input");
    maps.filled += src.c;
  }

  /**
   * `spec`'s convolution of the channels of `v` (all of its filled ones): GEMMs, then the output
   * transform; `epilogue`: what {@link winogradOutputProgram} binds after M. Labels say "input grad"
   * for a flipped filter.
   */
  conv(
    spec: Conv3x3Spec,
    output: GPUBuffer,
    io: { v: WinogradMaps; weight: Region; epilogue: Region[] },
  ): void {
    const { m, gemmCandidates = [] } = this.options;
    const c = spec.c0 + (spec.c1 ?? 0);
    if (io.v.filled !== c) throw new Error(`winograd: V holds ${io.v.filled} channels, the conv reads ${c}`);
    const { tiles } = winogradTiles(spec, m);
    const products = this.scratchBuffer("M", winogradBytes(spec, m, spec.cout));
    const { half, halfMath } = this.options;
    const gemm = { tiles, c, vStride: io.v.stride, cout: spec.cout, m, half, halfMath };
    const flip = !!spec.flipTransposed, kind = flip ? "winograd input grad" : "winograd";
    const inputs = [
      { buffer: io.v.buffer },
      this.filter(io.weight, { cin: c, cout: spec.cout, flipTransposed: flip }),
    ];
    const builtIn = winogradGemmProgram(gemm);
    const programs = [{ program: builtIn, name: "built-in" }];
    for (const tile of gemmCandidates) {
      try {
        const program = winogradGemmProgram({ ...gemm, tile });
        if (programs.every((p) => p.program.key !== program.key)) {
          programs.push({ program, name: JSON.stringify(tile) });
        }
      } catch { /* a tiling this shape cannot take */ }
    }
    if (programs.length === 1) this.pass.add(builtIn, { buffer: products }, inputs, `${kind} gemm`);
    else {
      this.pass.addChoice(programs, { buffer: products }, inputs, {
        label: `${kind} gemm`,
        group: `${builtIn.key} ${JSON.stringify({ tiles, c, cout: spec.cout })}`,
      });
    }
    const epilogue = [{ buffer: products }, ...io.epilogue];
    this.pass.add(winogradOutputProgram({ ...spec, m }), { buffer: output }, epilogue, `${kind} output`);
  }

  /** U of a filter (as used: flipped or not), transformed by the setup pass the first time it is asked for. */
  private filter(weight: Region, shape: { cin: number; cout: number; flipTransposed: boolean }): Region {
    const half = this.options.half;
    const byPlace = this.filters.get(weight.buffer) ?? new Map<string, Region>();
    this.filters.set(weight.buffer, byPlace);
    const key = `${weight.offset ?? 0} ${shape.flipTransposed}`;
    let u = byPlace.get(key);
    if (!u) {
      const { m } = this.options;
      const bytes = (m + 2) ** 2 * shape.cin * shape.cout * (half ? 2 : 4);
      const kept = this.pass.kept(weight.buffer, `winograd ${m} ${half ? "f16" : "f32"} ${key}`, bytes);
      u = { buffer: kept.buffer };
      if (kept.made) this.setup.add(winogradFilterProgram({ ...shape, half }, m), u, [weight]);
      byPlace.set(key, u);
    }
    return u;
  }

  /** Whether the filter gradient of `spec` can run as Winograd (f32, channels in multiples of 4). */
  canRunFilterGrad(spec: FilterGradSpec): boolean {
    const c = spec.c0 + (spec.c1 ?? 0);
    const counts = [
      spec.c0,
      spec.x0Stride,
      spec.c1 ?? 0,
      spec.x1Stride ?? 4,
      spec.cout,
      spec.dyStride ?? spec.cout,
      spec.dyOffset ?? 0,
      spec.biasAt ?? 0,
    ];
    return !spec.half && counts.every((v) => v % 4 === 0) &&
      winogradBytes(spec, this.options.m, Math.max(c, spec.cout)) <= this.limit;
  }

  /**
   * The filter (and bias) gradient of `spec` from the first c0 + c1 channels of `v` (the
   * forward's input, transformed again) and `dy`, into `grad` (HWIO, the bias at `biasAt`).
   */
  filterGrad(spec: FilterGradSpec, grad: Region, io: { v: WinogradMaps; dy: GPUBuffer }): void {
    const { m } = this.options;
    const c = spec.c0 + (spec.c1 ?? 0);
    if (io.v.filled < c) {
      throw new Error(`winograd: V holds ${io.v.filled} channels, the gradient reads ${c}`);
    }
    const { tiles } = winogradTiles(spec, m);
    const dM = this.scratchBuffer("M", winogradBytes(spec, m, spec.cout));
    this.pass.add(winogradDyProgram(spec, m), { buffer: dM }, [{ buffer: io.dy }], "winograd filter grad dy");
    const gemm = { tiles, c, vStride: io.v.stride, cout: spec.cout, m };
    const splits = winogradGradSplits(gemm);
    const dU = this.scratchBuffer("D", splits * (m + 2) ** 2 * (c + 1) * spec.cout * 4);
    const products = [{ buffer: io.v.buffer }, { buffer: dM }];
    this.pass.add(winogradFilterGradGemmProgram(gemm), { buffer: dU }, products, "winograd filter grad gemm");
    const out = { c, cout: spec.cout, splits, scale: spec.scale, biasAt: spec.biasAt ?? 9 * c * spec.cout };
    this.pass.add(
      winogradFilterGradOutputProgram(out, m),
      grad,
      [{ buffer: dU }],
      "winograd filter grad sum",
    );
  }

  private scratchBuffer(kind: "V" | "M" | "D" | "block", bytes: number): GPUBuffer {
    const found = this.scratch[kind].find((b) => b.size >= bytes);
    if (found) return found;
    const buffer = this.pass.buffer(bytes);
    this.scratch[kind].push(buffer);
    return buffer;
  }
}
