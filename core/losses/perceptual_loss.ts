/**
 * ESRGAN's perceptual loss, as BasicSR's `PerceptualLoss` with ESRGAN's options: VGG19 features
 * before the activation (`layer_weights {conv5_4: 1}`), input normalised for the weights' convention
 * (`use_input_norm`), L1 between the features of SR and HR (`criterion 'l1'`), times
 * `perceptual_weight` (1). The HR features take no gradient (BasicSR's `gt.detach()`).
 *
 * Weights: an explicit path, else `$VGG19_WEIGHTS`, else `weights/vgg19-dcbb9e9d.pth` or
 * `weights/vgg19.safetensors` (torchvision's ImageNet VGG19, `deno task vgg:fetch`), else the partial
 * Keras VGG19 in `../shared/models/vgg19-partial/` (conv1_1..conv3_4 only). A requested layer that
 * the weights cannot compute falls back to their deepest conv, with a loud warning; with no weights
 * at all loading throws, unless `allowRandom` (tests only, also warned).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { existsSync } from "node:fs";
import {
  deepestVggConv,
  hasVggLayer,
  loadVgg19Weights,
  randomVgg19Weights,
  VGG19_LAYERS,
  VGG19Features,
  type Vgg19Weights,
} from "../vgg19_arch.ts";
import { stopGradient } from "./gan_loss.ts";

/**
 * How much larger the Keras/caffe input (BGR 0..255 minus the mean) is than torchvision's
 * ((x − mean) / std on 0..1): 255 · 0.226, the ImageNet std averaged over channels. Features before
 * an activation scale with the input in a ReLU net (exactly without biases), so a loss on caffe-
 * convention weights is divided by this to be on torchvision's scale, which ESRGAN's loss weights
 * (perceptual 1, RaGAN 5e-3, L1 1e-2) assume; without it the perceptual term outweighs the others by
 * another factor of ~58.
 */
export const CAFFE_INPUT_SCALE = 255 * 0.226;

/** ESRGAN's choice: conv5_4 before its ReLU, weight 1. */
export const ESRGAN_LAYER_WEIGHTS: Readonly<Record<string, number>> = { conv5_4: 1 };

/** Environment variable naming a VGG19 weights file. */
export const VGG19_WEIGHTS_ENV = "VGG19_WEIGHTS";

/** Where {@link PerceptualLoss.load} looks when no path is given, in order. */
export const DEFAULT_VGG19_PATHS: readonly string[] = [
  new URL("../../weights/vgg19-dcbb9e9d.pth", import.meta.url).pathname,
  new URL("../../weights/vgg19.safetensors", import.meta.url).pathname,
  new URL("../../../shared/models/vgg19-partial/vgg19_conv1_1-conv3_4.safetensors", import.meta.url).pathname,
];

/** Options shared by {@link PerceptualLoss.load} and {@link PerceptualLoss.fromWeights}. */
export interface PerceptualLossOptions {
  /** BasicSR's `layer_weights`: layer name (`conv5_4`, `relu3_4`, `pool2`, …) → weight. */
  layerWeights?: Record<string, number>;
  /** BasicSR's `perceptual_weight`, default 1. */
  perceptualWeight?: number;
}

/** Options of {@link PerceptualLoss.load}. */
export interface PerceptualLossLoadOptions extends PerceptualLossOptions {
  /** A VGG19 weights file (.pth or .safetensors); absent: the default lookup. */
  weights?: string;
  /** With no weights found, use random ones (with a warning) instead of throwing. Tests only. */
  allowRandom?: boolean;
  /** Where to look when no path is given; default {@link DEFAULT_VGG19_PATHS}. */
  searchPaths?: readonly string[];
}

function envPath(): string | undefined {
  try {
    return Deno.env.get(VGG19_WEIGHTS_ENV) || undefined;
  } catch {
    return undefined; // no --allow-env: the env route is simply unavailable
  }
}

function shout(message: string): void {
  const bar = "!".repeat(78);
  console.warn(`${bar}\n${message}\n${bar}`);
}

/** VGG19 perceptual loss. Dispose it when done: it holds the VGG weights on the backend. */
export class PerceptualLoss {
  /** The deepest layer actually used. */
  readonly layer: string;
  /** The layer weights actually used (after any fallback). */
  readonly layerWeights: Readonly<Record<string, number>>;
  /** Why the loss is not what was asked for (fallback layer, random weights), or undefined. */
  readonly warning: string | undefined;
  /** Where the VGG weights came from. */
  readonly source: string;
  private readonly vgg: VGG19Features;
  private readonly perceptualWeight: number;

  private constructor(
    vgg: VGG19Features,
    layerWeights: Record<string, number>,
    pw: number,
    warning?: string,
  ) {
    this.vgg = vgg;
    this.layerWeights = layerWeights;
    this.layer = vgg.layers.at(-1)!;
    this.perceptualWeight = pw;
    this.warning = warning;
    this.source = vgg.source;
  }

  /**
   * Finds and loads VGG19 weights (see the module doc for the lookup order) and builds the loss.
   * Throws when there are none, unless `allowRandom`.
   */
  static async load(options: PerceptualLossLoadOptions = {}): Promise<PerceptualLoss> {
    const search = options.searchPaths ?? DEFAULT_VGG19_PATHS;
    const path = options.weights ?? envPath() ?? search.find((p) => existsSync(p));
    if (path) return PerceptualLoss.fromWeights(await loadVgg19Weights(path), options);
    if (!options.allowRandom) {
      throw new Error(
        `no VGG19 weights for the perceptual loss: none given, $${VGG19_WEIGHTS_ENV} unset, and none of ` +
          `${
            search.join(", ") || "(no search paths)"
          } exists. Run \`deno task vgg:fetch\` where the internet is reachable.`,
      );
    }
    const deepest = Object.keys(options.layerWeights ?? ESRGAN_LAYER_WEIGHTS)
      .sort((a, b) => VGG19_LAYERS.indexOf(a) - VGG19_LAYERS.indexOf(b)).at(-1)!;
    return PerceptualLoss.fromWeights(randomVgg19Weights(convAtOrBefore(deepest)), options);
  }

  /** Builds the loss from weights already in memory, falling back (loudly) to the deepest conv present. */
  static fromWeights(weights: Vgg19Weights, options: PerceptualLossOptions = {}): PerceptualLoss {
    const requested = options.layerWeights ?? ESRGAN_LAYER_WEIGHTS;
    if (!Object.keys(requested).length) throw new Error("perceptual loss: layerWeights is empty");
    const used: Record<string, number> = {};
    const missing: string[] = [];
    const deepest = deepestVggConv(weights);
    for (const [layer, w] of Object.entries(requested)) {
      if (hasVggLayer(weights, layer)) {
        used[layer] = (used[layer] ?? 0) + w;
      } else {
        missing.push(layer);
        used[deepest] = (used[deepest] ?? 0) + w;
      }
    }
    const warnings: string[] = [];
    if (weights.source === "random") {
      warnings.push(
        "PERCEPTUAL LOSS ON RANDOM VGG19 WEIGHTS (allowRandom): its features mean nothing; for tests only.",
      );
    }
    if (missing.length) {
      warnings.push(
        `PERCEPTUAL LOSS FALLBACK: ${weights.source} holds VGG19 only up to ${deepest}, so ` +
          `${missing.join(", ")} ${missing.length > 1 ? "are" : "is"} replaced by ${deepest} ` +
          `(layer weights now ${JSON.stringify(used)}). This is not ESRGAN's VGG54 loss; run ` +
          "`deno task vgg:fetch` (or set $VGG19_WEIGHTS) for torchvision's full VGG19.",
      );
    }
    if (weights.convention === "caffe") {
      warnings.push(
        "(these are Keras/caffe VGG weights: the net sees BGR 0..255 minus the ImageNet mean, about " +
          `${
            CAFFE_INPUT_SCALE.toFixed(1)
          }x torchvision's normalised input, and the loss is divided by that ` +
          "to stay on torchvision's scale.)",
      );
    }
    // Only the fallback and random cases are a deviation; the caffe note rides along with them.
    const warning = missing.length || weights.source === "random" ? warnings.join("\n") : undefined;
    if (warning) shout(warning);
    const vgg = new VGG19Features(weights, Object.keys(used));
    const inputScale = weights.convention === "caffe" ? CAFFE_INPUT_SCALE : 1;
    return new PerceptualLoss(vgg, used, (options.perceptualWeight ?? 1) / inputScale, warning);
  }

  /** The loss between SR and HR batches (NHWC RGB in [0, 1], same shape); gradients flow to `sr` only. */
  apply(sr: tf.Tensor4D, hr: tf.Tensor4D): tf.Scalar {
    if (sr.shape.join(",") !== hr.shape.join(",")) {
      throw new Error(`perceptual loss: SR [${sr.shape}] and HR [${hr.shape}] differ in shape`);
    }
    return tf.tidy(() => this.applyToFeatures(sr, this.vgg.apply(stopGradient(hr))));
  }

  /**
   * HR's features at the loss's layers (the caller disposes them). Taken outside a gradient scope,
   * VGG's activations on HR are not kept for a backward pass that never reaches them.
   */
  features(hr: tf.Tensor4D): Map<string, tf.Tensor4D> {
    const layers = Object.keys(this.layerWeights);
    const kept = tf.tidy(() => {
      const all = this.vgg.apply(hr);
      return layers.map((l) => all.get(l)!);
    });
    return new Map(layers.map((l, i) => [l, kept[i]]));
  }

  /** {@link apply} with HR's features from {@link features}. */
  applyToFeatures(sr: tf.Tensor4D, hrFeatures: Map<string, tf.Tensor4D>): tf.Scalar {
    return tf.tidy(() => {
      const fs = this.vgg.apply(sr);
      let loss: tf.Scalar = tf.scalar(0);
      for (const [layer, w] of Object.entries(this.layerWeights)) {
        const fh = hrFeatures.get(layer);
        if (!fh) throw new Error(`perceptual loss: no HR features of ${layer}`);
        if (fh.shape.join(",") !== fs.get(layer)!.shape.join(",")) {
          throw new Error(
            `perceptual loss: SR [${sr.shape}] and HR features of ${layer} [${fh.shape}] differ`,
          );
        }
        const l1 = tf.mean(tf.abs(tf.sub(fs.get(layer)!, stopGradient(fh))));
        loss = tf.add(loss, tf.mul(l1, w));
      }
      return tf.mul(loss, this.perceptualWeight) as tf.Scalar;
    });
  }

  /** Frees the VGG weights. */
  dispose(): void {
    this.vgg.dispose();
  }
}

/** The conv a layer is computed from (relu5_4 → conv5_4, pool3 → conv3_4). */
function convAtOrBefore(layer: string): string {
  const i = VGG19_LAYERS.indexOf(layer);
  if (i < 0) throw new Error(`unknown VGG19 layer ${layer}`);
  return VGG19_LAYERS.slice(0, i + 1).filter((n) => n.startsWith("conv")).at(-1)!;
}
