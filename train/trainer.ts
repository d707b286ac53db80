/**
 * One ESRGAN training run's state and step, as BasicSR's `SRModel` (stage `psnr`) and
 * `ESRGANModel` (stage `gan`) define `optimize_parameters`:
 * - psnr: L = w_pix · L1(G(lq), gt); Adam on G.
 * - gan: G first, with D's weights fixed: L_G = w_pix · L1 + w_percep · L_percep + w_gan · L_RaGAN;
 *   then D on the same G output (detached): L_D = RaGAN with each half's other mean detached.
 * - then G's EMA moves towards G.
 * The learning rate of step k (0-based count of finished steps) is the schedule at k.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
// tfjs-core alone registers no gradients (the @tensorflow/tfjs bundle does)
import "@tensorflow/tfjs";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { VGGStyleDiscriminator } from "../core/discriminator_arch.ts";
import { pixelL1 } from "../core/losses/pixel_loss.ts";
import { raganDiscriminatorTerms, raganGeneratorLoss } from "../core/losses/gan_loss.ts";
import type { StateDict } from "../core/state_dict.ts";
import { Adam } from "./adam.ts";
import { copyInto, updateEma } from "./ema.ts";
import { scheduleOf, type TrainConfig } from "./config.ts";
import { lrAt } from "./schedule.ts";
import { useFastCpuConvBackprop } from "./cpu_kernels.ts";
import { useFastWasmConvGrads } from "./wasm_conv_grads.ts";
import { useWasmConvKernels } from "../core/kernels/wasm_conv.ts";
import { type Checkpoint, encodeCheckpoint, restoreAdam } from "./checkpoint.ts";
import type { Batch } from "./data.ts";
import {
  type GradScalerState,
  RRDBNetTrainPlanWebGPU,
  type StepResult,
  type TrainPlanOptions,
} from "../core/kernels/webgpu_train_plan.ts";
import { BufferLimitError, underErrorScopes } from "../core/kernels/webgpu_pass.ts";
import { watchBackendErrors } from "../core/kernels/webgpu_errors.ts";
import { type ConvChoice, timeVariants } from "../core/kernels/webgpu_plan.ts";
import type { WebGPUBackendLike } from "../core/kernels/webgpu_program.ts";
import { RRDBNetTrainPlanWasm } from "../core/kernels/wasm_train_plan.ts";
import { disableCustomWebGPUKernels, enableCustomWebGPUKernels } from "../core/kernels/register.ts";

/** The perceptual loss as the trainer uses it (core/losses' PerceptualLoss). */
export interface PerceptualLike {
  layer: string;
  warning?: string | null;
  features(hr: tf.Tensor4D): Map<string, tf.Tensor4D>;
  applyToFeatures(sr: tf.Tensor4D, hrFeatures: Map<string, tf.Tensor4D>): tf.Scalar;
  dispose(): void;
}

/** What G's gan terms need of the real batch: VGG's features of it and D's logits on it. */
interface RealSide {
  features: Map<string, tf.Tensor4D>;
  logits: tf.Tensor;
}

/** Options of {@link Trainer.create}. */
export interface TrainerOptions {
  /** Continue from this checkpoint (its config must match in architecture). */
  checkpoint?: Checkpoint;
  /** Initial G and EMA weights (BasicSR's pretrain_network_g); ignored when resuming. */
  pretrainG?: StateDict;
  /** The gan stage's perceptual loss (owned by the trainer afterwards). */
  perceptual?: PerceptualLike;
}

/** Losses of one step, by BasicSR's log names. */
export type StepLosses = Record<string, number>;

/** The generator config a training config describes. */
export function generatorConfig(c: TrainConfig): RRDBNetConfig {
  return {
    numInCh: 3,
    numOutCh: 3,
    scale: c.scale,
    numFeat: c.numFeat,
    numBlock: c.numBlock,
    numGrowCh: c.numGrowCh,
  };
}

/** Whether G's step can run as prepared passes (webgpu): x4, widths multiples of 4, `plannedStep` on. */
export function plannable(c: TrainConfig): boolean {
  return c.plannedStep && c.scale === 4 && c.numFeat % 4 === 0 && c.numGrowCh % 4 === 0;
}

/**
 * Whether G's step can run on the CPU kernels (wasm): a plannable config whose LR patches have
 * sides that are multiples of 4. The gan stage's D and perceptual terms then run on tfjs-wasm.
 */
export function cpuPlannable(c: TrainConfig): boolean {
  return plannable(c) && (c.gtSize / c.scale) % 4 === 0;
}

/** Nets, optimisers and step counter of a run. Dispose it when done. */
export class Trainer {
  /**
   * Steps taken. A planned psnr step counts once its work is submitted, so that with
   * {@link overlapsSteps} the count includes a step whose losses are still on their way; other
   * steps count when they finish.
   */
  step = 0;
  private readonly gNames: Map<string, string>;
  private readonly dNames: Map<string, string>;
  /** The planned G step (webgpu or wasm) and whether the variables lag behind its buffers. */
  private plan?: RRDBNetTrainPlanWebGPU | RRDBNetTrainPlanWasm;
  private planAhead = false;
  /** The WebGPU plan while WebGPU checks it (see checkedPlan). */
  private planMaking?: Promise<RRDBNetTrainPlanWebGPU>;
  /**
   * What `winograd: "auto"` chose and measured (undefined until the first planned step on webgpu), or
   * the checkpoint's choice on resuming: kept while the batch's shape is the one it was timed on, so
   * a resumed run computes as the run it continues did.
   */
  convChoice?: ConvChoice;
  /** Mixed precision's loss scaling while no plan holds it (from a checkpoint, or a disposed plan). */
  private scaler?: GradScalerState;

  private constructor(
    readonly config: TrainConfig,
    readonly g: RRDBNet,
    readonly ema: RRDBNet,
    readonly optG: Adam,
    readonly d?: VGGStyleDiscriminator,
    readonly optD?: Adam,
    readonly perceptual?: PerceptualLike,
  ) {
    this.gNames = new Map([...g.params].map(([k, v]) => [v.name, k]));
    this.dNames = new Map([...(d?.params ?? [])].map(([k, v]) => [v.name, k]));
  }

  /** Builds the nets: fresh (seeded), from pretrained G weights, or from a checkpoint. */
  static create(config: TrainConfig, options: TrainerOptions = {}): Trainer {
    if (tf.getBackend() === "cpu") useFastCpuConvBackprop();
    if (tf.getBackend() === "wasm") {
      useFastWasmConvGrads();
      // the gan stage's VGG and D run as tfjs ops: their 3x3 convolutions on our CPU kernels
      useWasmConvKernels();
    }
    // the gan stage's VGG and D run as tfjs ops: their 3x3 convolutions on our kernels too
    if (tf.getBackend() === "webgpu") {
      config.plannedStep ? enableCustomWebGPUKernels() : disableCustomWebGPUKernels();
    }
    const ck = options.checkpoint;
    const gCfg = generatorConfig(config);
    const gWeights = ck?.netG ?? options.pretrainG;
    const g = new RRDBNet(gCfg, { weights: gWeights, seed: config.seed, trainable: true });
    const ema = new RRDBNet(gCfg, { weights: ck?.netGEma ?? gWeights, seed: config.seed });
    if (!ck && !gWeights) copyInto(ema.params, g.params); // BasicSR's model_ema(0)
    const betas: [number, number] = [config.beta1, config.beta2];
    const optG = new Adam(g.params, { betas });
    if (ck) restoreAdam(optG, ck.optimizerG, "optimizer_g");
    let d: VGGStyleDiscriminator | undefined, optD: Adam | undefined;
    if (config.stage === "gan") {
      if (!options.perceptual) throw new Error("the gan stage needs a perceptual loss");
      if (ck && !ck.netD) throw new Error("the checkpoint has no discriminator: it was a psnr-stage run");
      d = new VGGStyleDiscriminator(
        { numInCh: 3, numFeat: config.dNumFeat, inputSize: config.gtSize },
        { seed: config.seed + 1000, weights: ck?.netD },
      );
      optD = new Adam(d.params, { betas });
      if (ck?.optimizerD) restoreAdam(optD, ck.optimizerD, "optimizer_d");
    }
    const t = new Trainer(config, g, ema, optG, d, optD, options.perceptual);
    t.step = ck?.step ?? 0;
    t.scaler = ck?.gradScalerG;
    // (a choice for webgpu, where the planned step makes one)
    if (config.winograd === "auto" && tf.getBackend() === "webgpu") t.convChoice = ck?.convChoice;
    return t;
  }

  /** Learning rates of the next step. */
  lr(): { g: number; d: number } {
    const s = scheduleOf(this.config);
    return { g: lrAt(s, this.config.lrG, this.step), d: lrAt(s, this.config.lrD, this.step) };
  }

  /**
   * Whether {@link trainStep} submits a whole step before it returns (planned psnr steps on webgpu,
   * in f32 or mixed precision), so that the next one can start before its losses resolve, one step
   * ahead at most. Deno 2.9.6's read-back blocks the thread until the GPU is done: with the next
   * step's read held back (`readAfter`), the GPU runs it while the caller does this step's
   * bookkeeping and makes the next batch.
   */
  get overlapsSteps(): boolean {
    const c = this.config;
    return tf.getBackend() === "webgpu" && this.planned && c.stage === "psnr" &&
      this.plan !== undefined; // (a step that makes the plan waits for WebGPU's verdict on it first)
  }

  /**
   * Whether G's part of a step runs as prepared WebGPU passes (core/kernels/webgpu_train_plan.ts):
   * webgpu (or the CPU kernels on wasm), x4, widths a multiple of 4, `plannedStep` on.
   */
  get planned(): boolean {
    const backend = tf.getBackend();
    return backend === "webgpu" ? plannable(this.config) : backend === "wasm" && cpuPlannable(this.config);
  }

  /**
   * Brings G's, the EMA's and Adam's variables up to date after planned steps (which keep them in
   * buffers of their own): before reading the nets or the optimizer.
   */
  sync(): void {
    if (this.plan && this.planAhead) this.plan.writeBack();
    this.planAhead = false;
  }

  /**
   * One optimisation step on `batch`; returns the losses (read back once per step). It fails if
   * WebGPU reports an error meanwhile, unless `checkGPU` is false: for a caller that checks a wider
   * window itself (runTraining, up to where it takes the losses). `readAfter`: a step that
   * {@link overlapsSteps} reads its losses only once this settles (the GPU runs the step meanwhile:
   * RRDBNetTrainPlanWebGPU.backward).
   */
  async trainStep(
    batch: Batch,
    options: { checkGPU?: boolean; readAfter?: Promise<unknown> } = {},
  ): Promise<StepLosses> {
    // tfjs's ops run outside any error scope: an error WebGPU reports on them leaves the step garbage
    const gpuCheck = options.checkGPU === false ? undefined : watchBackendErrors();
    const step = this.step + 1;
    const losses =
      await (this.planned ? this.plannedStep(batch, options.readAfter) : this.autodiffStep(batch));
    await gpuCheck?.(`training step ${step}`);
    return losses;
  }

  /** {@link trainStep} by tfjs's autodiff and train/adam.ts. */
  private async autodiffStep(batch: Batch): Promise<StepLosses> {
    const c = this.config;
    const lr = this.lr();
    const lq = tf.tensor4d(batch.lq, [batch.n, batch.lqSize, batch.lqSize, 3]);
    const gt = tf.tensor4d(batch.gt, [batch.n, batch.gtSize, batch.gtSize, 3]);
    const names: string[] = [];
    let parts: tf.Tensor | undefined;
    let sr: tf.Tensor4D | undefined;
    const real = c.stage === "gan" ? this.realSide(gt) : undefined;
    try {
      const gVars = [...this.g.params.values()];
      const { value, grads } = tf.variableGrads(() => {
        const out = this.g.apply(lq);
        const terms: [string, tf.Scalar][] = [[
          "l_pix",
          tf.mul(pixelL1(out, gt), c.pixelWeight) as tf.Scalar,
        ]];
        if (c.stage === "gan") {
          sr = tf.keep(out);
          const { percep, gan } = this.generatorGanTerms(out, real!);
          terms.push(["l_percep", percep], ["l_gan", gan]);
        }
        for (const [n] of terms) names.push(n);
        parts = tf.keep(tf.stack(terms.map(([, t]) => t)));
        return tf.addN(terms.map(([, t]) => t)) as tf.Scalar;
      }, gVars);
      value.dispose();
      this.optG.step(this.byParam(grads, this.gNames), lr.g);
      tf.dispose(grads);
      if (c.stage === "gan") {
        const dParts = this.discriminatorStep(gt, sr!, lr.d);
        const all = tf.concat([parts!, dParts]);
        tf.dispose([parts!, dParts]);
        parts = all;
        names.push("l_d_real", "l_d_fake");
      }
      updateEma(this.ema.params, this.g.params, { decay: c.emaDecay });
      const values = await parts!.data();
      this.step++;
      const out: StepLosses = { lr: lr.g };
      names.forEach((n, i) => out[n] = values[i]);
      return out;
    } finally {
      tf.dispose([lq, gt, ...(sr ? [sr] : []), ...(parts ? [parts] : []), ...disposeRealSide(real)]);
    }
  }

  /**
   * The real batch's side of G's gan terms, computed before the gradient scope: inside it, tfjs's
   * tape would keep every VGG and D activation on `gt` until the backward ends, though no gradient
   * flows there (on tfjs-wasm, whose memory stops at 4 GiB, that is what limits the batch).
   */
  private realSide(gt: tf.Tensor4D): RealSide {
    return { features: this.perceptual!.features(gt), logits: this.d!.apply(gt, { training: true }) };
  }

  /**
   * The WebGPU plan, made under WebGPU's error scopes: a batch whose buffers exceed the device's
   * limits, or that runs out of GPU memory, fails here saying so (not as a garbage loss later).
   */
  private async checkedPlan(options: TrainPlanOptions): Promise<RRDBNetTrainPlanWebGPU> {
    const too = (why: string) =>
      new Error(
        `a batch of ${options.batch} at ${options.lqSize * 4} px is too much for this GPU (${why}): ` +
          "use a smaller --batch-size or --gt-size",
      );
    let made;
    try {
      made = underErrorScopes(
        (tf.backend() as unknown as WebGPUBackendLike).device,
        () => new RRDBNetTrainPlanWebGPU(this.g, options),
      );
    } catch (e) {
      throw e instanceof BufferLimitError ? too(e.message) : e;
    }
    const error = await made.error;
    if (!error) return made.value;
    made.value.dispose();
    if (error instanceof GPUOutOfMemoryError) throw too(`out of GPU memory: ${error.message}`);
    throw new Error(`WebGPU rejected the training step's work: ${error.message}`);
  }

  /**
   * With `winograd: "auto"`: a step of the direct plan and of the Winograd F(4x4) one timed
   * (timeVariants: made, checked, timed and freed in turn; timing scrambles a plan's weights), then
   * the faster made again from the net's. A choice already made for this shape (earlier in the run,
   * or the checkpoint's) is kept, unless its plan cannot be made here (a resumed run on a smaller GPU).
   */
  private async fastestPlan(options: TrainPlanOptions): Promise<RRDBNetTrainPlanWebGPU> {
    const shape = [options.batch, options.lqSize, options.lqSize, 3];
    const kept = this.convChoice?.shape.join() === shape.join() ? this.convChoice : undefined;
    if (kept) {
      try {
        return await this.checkedPlan({ ...options, winograd: kept.winograd || undefined });
      } catch (e) {
        console.warn(
          `note: the convolutions chosen before cannot run here (${(e as Error).message}); timing again`,
        );
      }
    }
    const { winograd, timings } = await timeVariants(
      [0, 4],
      (w) => this.checkedPlan({ ...options, winograd: w || undefined }),
    );
    this.convChoice = { winograd, shape, precision: "f32", timings };
    return this.checkedPlan({ ...options, winograd: winograd || undefined });
  }

  /** The gan stage's weighted perceptual and RaGAN terms of G's loss (D's weights fixed). */
  private generatorGanTerms(out: tf.Tensor4D, real: RealSide): { percep: tf.Scalar; gan: tf.Scalar } {
    const c = this.config;
    const percep = tf.mul(
      this.perceptual!.applyToFeatures(out, real.features),
      c.perceptualWeight,
    ) as tf.Scalar;
    const fake = this.d!.apply(out, { training: true });
    return { percep, gan: tf.mul(raganGeneratorLoss(real.logits, fake), c.ganWeight) as tf.Scalar };
  }

  /** D's step on real `gt` and (detached) fake `sr`; returns [l_d_real, l_d_fake] (the caller disposes). */
  private discriminatorStep(gt: tf.Tensor4D, sr: tf.Tensor4D, lr: number): tf.Tensor {
    const dVars = [...this.d!.params.values()];
    let parts: tf.Tensor | undefined;
    const { value, grads } = tf.variableGrads(() => {
      const terms = raganDiscriminatorTerms(
        this.d!.apply(gt, { training: true }),
        this.d!.apply(sr, { training: true }),
      );
      parts = tf.keep(tf.stack([terms.real, terms.fake]));
      return terms.total;
    }, dVars);
    value.dispose();
    this.optD!.step(this.byParam(grads, this.dNames), lr);
    tf.dispose(grads);
    return parts!;
  }

  /**
   * A step with G's forward, backward and update (L1, Adam, EMA) as core/kernels' prepared passes.
   * The gan stage's other G terms (perceptual, RaGAN with D fixed) and D's step run as tfjs ops on
   * G's output; their gradient w.r.t. that output joins the L1 gradient in the planned backward.
   */
  private async plannedStep(batch: Batch, readAfter?: Promise<unknown>): Promise<StepLosses> {
    const c = this.config;
    if (this.plan && (this.plan.options.batch !== batch.n || this.plan.options.lqSize !== batch.lqSize)) {
      this.sync();
      this.scaler = this.gradScaler;
      this.plan.dispose();
      this.plan = undefined;
    }
    const options = {
      batch: batch.n,
      lqSize: batch.lqSize,
      ema: this.ema.params,
      adam: this.optG,
      emaDecay: c.emaDecay,
      pixelWeight: c.pixelWeight,
      // a resumed mixed-precision run goes on at its loss scale, as PyTorch's GradScaler state does
      ...(this.scaler ? { lossScale: this.scaler.scale, goodSteps: this.scaler.growthTracker } : {}),
    };
    if (!this.plan && tf.getBackend() === "wasm") this.plan = new RRDBNetTrainPlanWasm(this.g, options);
    if (!this.plan) {
      // steps started meanwhile wait for the same plan, and then run in the order they started
      const winograd = c.winograd === "auto" ? undefined : c.winograd || undefined;
      this.planMaking ??= c.winograd === "auto" && c.precision === "f32"
        ? this.fastestPlan({ ...options, precision: c.precision })
        : this.checkedPlan({ ...options, precision: c.precision, winograd });
      const making = this.planMaking;
      try {
        this.plan ??= await making;
      } finally {
        if (this.planMaking === making) this.planMaking = undefined;
      }
    }
    // mixed precision: the step's loss scale shows in the logs (it halves at each skipped step)
    const scaled = (l: StepLosses, r: StepResult): StepLosses =>
      r.lossScale === undefined ? l : { ...l, loss_scale: r.lossScale };
    const lr = this.lr();
    this.planAhead = true;
    if (c.stage === "psnr") {
      this.step++;
      const r = await this.plan.step(batch, lr.g, { readAfter });
      return scaled({ lr: lr.g, l_pix: r.loss }, r);
    }
    const sr = (await this.plan.forward(batch))!;
    const gt = tf.tensor4d(batch.gt, [batch.n, batch.gtSize, batch.gtSize, 3]);
    const real = this.realSide(gt);
    let gParts: tf.Tensor | undefined, dParts: tf.Tensor | undefined, dSr: tf.Tensor | undefined;
    try {
      const { value, grad } = tf.valueAndGrad((x: tf.Tensor) => {
        const { percep, gan } = this.generatorGanTerms(x as tf.Tensor4D, real);
        gParts = tf.keep(tf.stack([percep, gan]));
        return tf.add(percep, gan) as tf.Scalar;
      })(sr);
      value.dispose();
      dSr = grad;
      const r = await this.plan.backward(dSr, lr.g);
      dParts = this.discriminatorStep(gt, sr, lr.d);
      const [g, d] = [await gParts!.data(), await dParts.data()];
      this.step++;
      return scaled(
        { lr: lr.g, l_pix: r.loss, l_percep: g[0], l_gan: g[1], l_d_real: d[0], l_d_fake: d[1] },
        r,
      );
    } finally {
      tf.dispose([
        sr,
        gt,
        ...[gParts, dParts, dSr].filter((t): t is tf.Tensor => !!t),
        ...disposeRealSide(real),
      ]);
    }
  }

  /** Mixed precision's loss scaling as the steps so far left it (undefined in f32). */
  get gradScaler(): GradScalerState | undefined {
    if (this.config.precision === "f32") return undefined;
    return (this.plan instanceof RRDBNetTrainPlanWebGPU ? this.plan.gradScaler : undefined) ?? this.scaler;
  }

  /** The whole state as checkpoint bytes. */
  async checkpoint(metadata: Record<string, string> = {}): Promise<Uint8Array> {
    this.sync();
    return encodeCheckpoint({
      gradScalerG: this.gradScaler,
      convChoice: this.convChoice,
      step: this.step,
      config: this.config,
      rng: { seed: this.config.seed },
      netG: await this.g.stateDict(),
      netGEma: await this.ema.stateDict(),
      netD: this.d ? await this.d.stateDict() : undefined,
      optimizerG: this.optG,
      optimizerD: this.optD,
      metadata,
    });
  }

  /** Frees every net and optimiser state. */
  dispose(): void {
    this.plan?.dispose();
    this.g.dispose();
    this.ema.dispose();
    this.optG.dispose();
    this.d?.dispose();
    this.optD?.dispose();
    this.perceptual?.dispose();
  }

  private byParam(grads: tf.NamedTensorMap, names: Map<string, string>): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [varName, g] of Object.entries(grads)) {
      const k = names.get(varName);
      if (k) out.set(k, g);
    }
    return out;
  }
}

/** The tensors of a {@link RealSide}, for tf.dispose. */
function disposeRealSide(real: RealSide | undefined): tf.Tensor[] {
  return real ? [...real.features.values(), real.logits] : [];
}
