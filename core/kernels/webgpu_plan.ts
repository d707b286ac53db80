/**
 * RRDBNet inference as a prepared plan: for one input shape, every buffer, uniform block and
 * bind group of the 351 fused dispatches (see webgpu_rrdb.ts) is made once; a forward then only
 * records setPipeline / setBindGroup / dispatch per convolution into one compute pass and submits.
 *
 * Why: on an H200 under Deno the fused forward of a 16x16 image (negligible GPU work) still took
 * 43 ms for 351 dispatches, i.e. about 120 µs per dispatch spent around tfjs's `recordAndSubmit`
 * (uniform buffer and bind group per dispatch, engine bookkeeping). The plan removes all of that
 * except the three encoder calls. Weights are bound as they are when the plan is made: rebuild
 * the plan after changing the net's parameters.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { conv3x3Program, type Conv3x3Spec } from "./webgpu_conv3x3.ts";
import { getPipeline, packUniforms, type WebGPUBackendLike } from "./webgpu_program.ts";
import { fuseConvSpec, growthConvSpec } from "./webgpu_rrdb.ts";
import { pixelUnshuffle, type RRDBNet } from "../rrdbnet_arch.ts";

interface PlanBackend extends WebGPUBackendLike {
  commandEncoder: GPUCommandEncoder | null;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/** A buffer of the plan: its own GPUBuffer, or the input (bound per call). */
type Slot = { buffer: GPUBuffer; shape: number[] } | "input";

interface Step {
  pipeline: GPUComputePipeline;
  dispatch: [number, number, number];
  uniform: GPUBuffer;
  slots: Slot[]; // [output, ...inputs]
  bindGroup?: GPUBindGroup;
}

/** A prepared forward of `net` for inputs of one shape [n, h, w, numInCh] (webgpu only). */
export class RRDBNetPlanWebGPU {
  readonly inputShape: number[];
  readonly outputShape: number[];
  private readonly backend: PlanBackend;
  private readonly steps: Step[] = [];
  private readonly owned: GPUBuffer[] = [];
  private readonly out: GPUBuffer;
  private lastInput: GPUBuffer | null = null;

  constructor(readonly net: RRDBNet, inputShape: number[]) {
    if (tf.getBackend() !== "webgpu") throw new Error("RRDBNetPlanWebGPU: the webgpu backend is not active");
    this.backend = tf.backend() as unknown as PlanBackend;
    const { scale, numFeat: nf, numGrowCh: gc, numBlock, numOutCh } = net.config;
    const [n, hh, ww] = inputShape;
    const unshuffle = scale === 4 ? 1 : scale === 2 ? 2 : 4;
    if (hh % unshuffle || ww % unshuffle) {
      throw new Error(`RRDBNetPlanWebGPU: sides must be divisible by ${unshuffle}`);
    }
    const h = hh / unshuffle, w = ww / unshuffle;
    const cin = inputShape[3] * unshuffle * unshuffle;
    this.inputShape = inputShape;
    const H = h * 4, W = w * 4;
    this.outputShape = [n, H, W, numOutCh];
    const buf = (shape: number[]) => {
      const size = shape.reduce((a, b) => a * b, 1) * 4;
      const buffer = this.backend.device.createBuffer({
        size: Math.max(16, Math.ceil(size / 16) * 16),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      this.owned.push(buffer);
      return { buffer, shape };
    };
    const param = (name: string): Slot => {
      const v = net.params.get(name);
      if (!v) throw new Error(`RRDBNetPlanWebGPU: the net has no parameter ${name}`);
      this.backend.uploadToGPU(v.dataId);
      return { buffer: this.backend.tensorMap.get(v.dataId)!.resource as GPUBuffer, shape: v.shape };
    };
    const f = [n, h, w, nf];
    const feat = buf(f), trunk = [buf(f), buf(f)], rdbOut = [buf(f), buf(f)], grow = buf([n, h, w, 4 * gc]);
    const body = buf(f), up1 = buf([n, 2 * h, 2 * w, nf]), up2 = buf([n, H, W, nf]), hr = buf([n, H, W, nf]);
    this.out = buf(this.outputShape).buffer;
    const conv = (spec: Conv3x3Spec, output: Slot, inputs: Slot[]) => this.add(spec, output, inputs);
    const base = { n, h, w };
    conv({ ...base, c0: cin, x0Stride: cin, cout: nf, bias: true }, feat, [
      "input",
      param("conv_first.weight"),
      param("conv_first.bias"),
    ]);
    let x: Slot = feat;
    for (let b = 0; b < numBlock; b++) {
      const rrdbIn = x;
      for (let r = 1; r <= 3; r++) {
        const name = `body.${b}.rdb${r}`;
        for (let k = 1; k <= 4; k++) {
          conv(
            growthConvSpec(base, nf, gc, k),
            grow,
            [x, param(`${name}.conv${k}.weight`), param(`${name}.conv${k}.bias`)],
          );
        }
        const last = r === 3;
        const output = last ? trunk[b % 2] : rdbOut[r - 1];
        conv(
          fuseConvSpec(base, nf, gc, { resScale: 0.2, skipScale: last ? 0.2 : undefined }),
          output,
          [x, grow, param(`${name}.conv5.weight`), param(`${name}.conv5.bias`), ...(last ? [rrdbIn] : [])],
        );
        x = output;
      }
    }
    const lin = (cout: number, extra: Partial<Conv3x3Spec>, b2: { n: number; h: number; w: number }) => ({
      ...b2,
      c0: nf,
      x0Stride: nf,
      cout,
      bias: true,
      ...extra,
    });
    conv(lin(nf, { res2Scale: 1 }, base), body, [
      x,
      param("conv_body.weight"),
      param("conv_body.bias"),
      feat,
    ]);
    const lrelu = { activation: "leakyrelu" as const, alpha: 0.2 };
    conv(lin(nf, { ...lrelu, upsample: true }, { n, h: 2 * h, w: 2 * w }), up1, [
      body,
      param("conv_up1.weight"),
      param("conv_up1.bias"),
    ]);
    conv(lin(nf, { ...lrelu, upsample: true }, { n, h: H, w: W }), up2, [
      up1,
      param("conv_up2.weight"),
      param("conv_up2.bias"),
    ]);
    conv(lin(nf, lrelu, { n, h: H, w: W }), hr, [up2, param("conv_hr.weight"), param("conv_hr.bias")]);
    conv(lin(numOutCh, {}, { n, h: H, w: W }), { buffer: this.out, shape: this.outputShape }, [
      hr,
      param("conv_last.weight"),
      param("conv_last.bias"),
    ]);
  }

  private add(spec: Conv3x3Spec, output: Slot, inputs: Slot[]) {
    const program = conv3x3Program(spec);
    const shapeOf = (s: Slot) => (s === "input" ? this.inputShape : s.shape);
    const shapes = [...inputs, output].map(shapeOf);
    const pipeline = getPipeline(this.backend, program, shapes);
    const data = packUniforms(shapes, program.params);
    const uniform = this.backend.device.createBuffer({
      size: data.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.backend.device.queue.writeBuffer(uniform, 0, data);
    this.owned.push(uniform);
    const step: Step = { pipeline, dispatch: program.dispatch, uniform, slots: [output, ...inputs] };
    if (!step.slots.includes("input")) step.bindGroup = this.bindGroup(step, null);
    this.steps.push(step);
  }

  private bindGroup(step: Step, input: GPUBuffer | null): GPUBindGroup {
    const entries = [...step.slots.map((s) => ({ buffer: s === "input" ? input! : s.buffer })), {
      buffer: step.uniform,
    }];
    return this.backend.device.createBindGroup({
      layout: step.pipeline.getBindGroupLayout(0),
      entries: entries.map((resource, binding) => ({ binding, resource })),
    });
  }

  /** `net.apply(x)` for x of the plan's input shape. */
  run(x: tf.Tensor4D): tf.Tensor4D {
    if (x.shape.join() !== this.inputShape.join()) {
      throw new Error(`RRDBNetPlanWebGPU: input [${x.shape}] differs from the plan's [${this.inputShape}]`);
    }
    const s = this.net.config.scale;
    const input = s === 4 ? x : tf.tidy(() => pixelUnshuffle(x, s === 2 ? 2 : 4));
    const be = this.backend;
    be.uploadToGPU(input.dataId);
    const inBuf = be.tensorMap.get(input.dataId)!.resource as GPUBuffer;
    if (inBuf !== this.lastInput) {
      for (const step of this.steps) {
        if (step.slots.includes("input")) step.bindGroup = this.bindGroup(step, inBuf);
      }
      this.lastInput = inBuf;
    }
    // Into tfjs's own encoder, after whatever it has recorded (the input's upload, for one).
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    const pass = be.commandEncoder!.beginComputePass();
    for (const step of this.steps) {
      pass.setPipeline(step.pipeline);
      pass.setBindGroup(0, step.bindGroup!);
      pass.dispatchWorkgroups(...step.dispatch);
    }
    pass.end();
    be.submitQueue();
    if (input !== x) input.dispose();
    // A copy the caller owns: the plan's output buffer is overwritten by the next run.
    const shape = this.outputShape as [number, number, number, number];
    return tf.tensor({ buffer: this.out }, shape, "float32") as tf.Tensor4D;
  }

  /** Frees the plan's buffers (not the net's). */
  dispose(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
    this.steps.length = 0;
  }
}
