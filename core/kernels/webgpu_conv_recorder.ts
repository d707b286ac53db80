/**
 * RRDBNet's 3x3 convolutions of the forward kernel (the forward pass's, and the input gradients',
 * which are the same kernel on a flipped filter) as dispatches of a prepared pass, shared by the
 * inference plan (webgpu_plan.ts) and the training step (webgpu_train_plan.ts): each direct
 * (webgpu_conv3x3.ts, with tilings for the pass to tune if given) or, with `winograd`, as Winograd
 * where it qualifies (webgpu_winograd.ts); and a dense block's five forward convolutions, which
 * under Winograd transform the block's input once and each grown slice once as it is made.
 * @module
 */
import { conv3x3Program, type Conv3x3Spec, type ConvPrecision, type ConvTile } from "./webgpu_conv3x3.ts";
import type { PassLike, Region } from "./webgpu_pass.ts";
import { fuseConvSpec, growthConvSpec } from "./webgpu_rrdb.ts";
import { WINOGRAD_GEMM_CANDIDATES, type WinogradSize } from "./webgpu_winograd.ts";
import { type WinogradMaps, WinogradPlanner } from "./webgpu_winograd_planner.ts";

/** A convolution's buffers (those its spec reads) and its parameters' name prefix. */
export interface ConvIO {
  /** The input, unless the spec reads it from the output (`x0IsOutput`). */
  x0?: GPUBuffer;
  x1?: GPUBuffer;
  /** `conv_first`: the filter is `conv_first.weight`, the bias `conv_first.bias`. */
  weight: string;
  res2?: GPUBuffer;
  resA?: GPUBuffer;
  resB?: GPUBuffer;
  mask?: GPUBuffer;
}

/** Options of {@link ConvRecorder}. */
export interface ConvRecorderOptions {
  precision: ConvPrecision;
  /** A parameter's region, by name. */
  param: (name: string) => Region;
  /** Tilings each direct convolution (and Winograd's GEMMs their own) may run besides the built-in ones. */
  candidates?: Partial<ConvTile>[];
  /**
   * Winograd F(m x m) where it qualifies (in the half precisions with f16 storage and f32
   * arithmetic, or f16 products with `halfMath`); `setup` records the filter transforms.
   */
  winograd?: { m: WinogradSize; setup: PassLike; halfMath?: boolean };
}

/** Records convolutions of the forward kernel into a pass. */
export class ConvRecorder {
  /** How many convolutions were recorded as Winograd. */
  winogradConvs = 0;
  private readonly wino: WinogradPlanner | null;

  constructor(private readonly pass: PassLike, private readonly options: ConvRecorderOptions) {
    const w = options.winograd;
    this.wino = w
      ? new WinogradPlanner(pass, w.setup, {
        m: w.m,
        half: options.precision !== "f32",
        halfMath: w.halfMath,
        gemmCandidates: options.candidates?.length ? WINOGRAD_GEMM_CANDIDATES : [],
      })
      : null;
  }

  /** The Winograd planner the convolutions use (null: all direct). */
  get winograd(): WinogradPlanner | null {
    return this.wino;
  }

  /** One convolution; `transformed`: its input's V, already made (a dense block's). */
  conv(convSpec: Conv3x3Spec, output: GPUBuffer, io: ConvIO, transformed?: WinogradMaps): void {
    const { param, precision } = this.options;
    const spec = { ...convSpec, precision };
    if (!this.wino?.canRun(spec)) return this.direct(spec, output, io);
    const x0 = spec.x0IsOutput ? output : io.x0!;
    const v = transformed ?? this.wino.transformInput(spec, { x0, x1: spec.x1IsOutput ? output : io.x1 });
    this.winogradConvs++;
    const epilogue = [
      ...(spec.bias ? [param(`${io.weight}.bias`)] : []),
      ...[io.res2, io.resA, io.resB, io.mask].flatMap((b) => (b ? [{ buffer: b }] : [])),
      ...(spec.res1Scale !== undefined && !spec.x0IsOutput ? [{ buffer: x0 }] : []),
    ];
    this.wino.conv(spec, output, { v, weight: param(`${io.weight}.weight`), epilogue });
  }

  /**
   * Dense block `name` on `x`: four growth convolutions into `grow` (4·gc channels), then conv5
   * into `out` as 0.2·conv5 + x (then 0.2·that + skip, an RRDB's last block).
   */
  denseBlock(
    size: { n: number; h: number; w: number },
    io: {
      nf: number;
      gc: number;
      x: GPUBuffer;
      grow: GPUBuffer;
      out: GPUBuffer;
      name: string;
      skip?: GPUBuffer;
    },
  ): void {
    const { nf, gc, x, grow, out, name, skip } = io;
    const growth = [1, 2, 3, 4].map((k) => growthConvSpec(size, nf, gc, k));
    const fuse = fuseConvSpec(size, nf, gc, { resScale: 0.2, skipScale: skip ? 0.2 : undefined });
    const wino = this.wino;
    const { precision } = this.options;
    const shared = wino && [...growth, fuse].every((s) => wino.canRun({ ...s, precision }))
      ? wino.transformInput({ ...size, c0: nf, x0Stride: nf }, { x0: x }, { channels: nf + 4 * gc })
      : undefined;
    growth.forEach((spec, i) => {
      this.conv(spec, grow, { x0: x, weight: `${name}.conv${i + 1}` }, shared);
      if (shared) wino!.transformSlice(shared, { buffer: grow, c: gc, stride: 4 * gc, offset: i * gc });
    });
    this.conv(fuse, out, { x0: x, x1: grow, weight: `${name}.conv5`, res2: skip }, shared);
  }

  private direct(spec: Conv3x3Spec, output: GPUBuffer, io: ConvIO): void {
    const { precision, param, candidates = [] } = this.options;
    const buffers = (list: (GPUBuffer | undefined)[]) => list.flatMap((b) => (b ? [{ buffer: b }] : []));
    const inputs = [
      ...buffers([spec.x0IsOutput ? undefined : io.x0, io.x1]),
      param(`${io.weight}.weight`),
      ...(spec.bias ? [param(`${io.weight}.bias`)] : []),
      ...buffers([io.res2, io.resA, io.resB, io.mask]),
    ];
    const builtIn = conv3x3Program({ ...spec, precision });
    const label = spec.flipTransposed ? "conv3x3 input grad" : "conv3x3 forward";
    if (!candidates.length) return void this.pass.add(builtIn, { buffer: output }, inputs, label);
    const programs = [{ program: builtIn, name: "built-in" }];
    for (const tile of candidates) {
      try {
        const program = conv3x3Program({ ...spec, precision, tile });
        if (programs.every((p) => p.program.key !== program.key)) {
          programs.push({ program, name: JSON.stringify(tile) });
        }
      } catch { /* a tiling this shape cannot take (tm/tn not dividing its tile) */ }
    }
    const { n, h, w, c0, c1, cout } = spec;
    this.pass.addChoice(programs, { buffer: output }, inputs, {
      label,
      group: `${builtIn.key} ${JSON.stringify({ n, h, w, c0, c1, cout })}`,
    });
  }
}
