/**
 * VGG19's convolutional trunk as a frozen feature extractor (BasicSR's `VGGFeatureExtractor`):
 * 3x3 "same" convs with ReLU, 2x2 max pooling, layers named as BasicSR names them (`conv5_4` is
 * the conv output before `relu5_4`).
 *
 * Two weight sources, each with its own input convention, both taking NHWC RGB in [0, 1]:
 * - `torchvision`: `vgg19-dcbb9e9d.pth` (what BasicSR loads) or the same tensors as safetensors,
 *   keys `features.N.weight|bias` (OIHW); input RGB normalised with ImageNet mean/std.
 * - `caffe`: the Keras/Oxford release (`vgg19-partial` in ../shared), keys `convX_Y.kernel|bias`
 *   (HWIO, input channels BGR); input BGR in 0..255 minus [103.939, 116.779, 123.68]. The BGR order
 *   is folded into conv1_1 at load (its input channels reversed), so the net sees RGB.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { readPth } from "./import/pth.ts";
import { numel, type StateDict } from "./state_dict.ts";
import { oihwToHwio } from "./tf_layout.ts";
import { decodeFloat, parseSafetensors } from "./weights/safetensors.ts";

/** How a set of weights wants its input. */
export type VggConvention = "torchvision" | "caffe";

/** VGG19's conv layers with their output channels, in order. */
const CONVS: [string, number][] = [
  ["conv1_1", 64],
  ["conv1_2", 64],
  ["conv2_1", 128],
  ["conv2_2", 128],
  ["conv3_1", 256],
  ["conv3_2", 256],
  ["conv3_3", 256],
  ["conv3_4", 256],
  ["conv4_1", 512],
  ["conv4_2", 512],
  ["conv4_3", 512],
  ["conv4_4", 512],
  ["conv5_1", 512],
  ["conv5_2", 512],
  ["conv5_3", 512],
  ["conv5_4", 512],
];

/** VGG19's conv layer names in order. */
export const VGG19_CONVS: readonly string[] = CONVS.map(([n]) => n);

/** All VGG19 feature layer names in order (BasicSR's `NAMES['vgg19']`). */
export const VGG19_LAYERS: readonly string[] = (() => {
  const names: string[] = [];
  for (let block = 1; block <= 5; block++) {
    for (const [conv] of CONVS.filter(([n]) => n.startsWith(`conv${block}_`))) {
      names.push(conv, conv.replace("conv", "relu"));
    }
    names.push(`pool${block}`);
  }
  return names;
})();

/** Index of a conv in torchvision's `vgg19().features` (conv1_1 → 0, conv5_4 → 34). */
export function torchvisionIndex(conv: string): number {
  const i = VGG19_LAYERS.indexOf(conv);
  if (i < 0 || !conv.startsWith("conv")) throw new Error(`${conv} is not a VGG19 conv layer`);
  return i;
}

/** One conv's weights: kernel HWIO (input channels RGB-ordered for conv1_1), bias. */
export interface VggConv {
  kernel: Float32Array;
  shape: [number, number, number, number];
  bias: Float32Array;
}

/** A (possibly partial) set of VGG19 weights and the input convention they were trained with. */
export interface Vgg19Weights {
  /** The convs present, a prefix of {@link VGG19_CONVS}. */
  convs: Map<string, VggConv>;
  convention: VggConvention;
  /** Where they came from (file name, or "random"). */
  source: string;
}

/** Per-channel (RGB) input normalisation: (x − mean) / std with x in [0, 1]. */
export const VGG_INPUT_NORM: Record<VggConvention, { mean: number[]; std: number[] }> = {
  torchvision: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
  // caffe: 255·x − [123.68, 116.779, 103.939] (RGB order) = (x − mean/255) / (1/255)
  caffe: { mean: [123.68 / 255, 116.779 / 255, 103.939 / 255], std: [1 / 255, 1 / 255, 1 / 255] },
};

function expectShape(name: string, conv: string, shape: number[], cin: number, cout: number) {
  const want = [3, 3, cin, cout];
  if (shape.join(",") !== want.join(",")) {
    throw new Error(`${name}: ${conv} has shape [${shape}] (HWIO), VGG19 wants [${want}]`);
  }
}

/** Keeps the convs that form an unbroken prefix from conv1_1 (deeper ones are useless without it). */
function prefix(convs: Map<string, VggConv>): Map<string, VggConv> {
  const out = new Map<string, VggConv>();
  for (const name of VGG19_CONVS) {
    const c = convs.get(name);
    if (!c) break;
    out.set(name, c);
  }
  return out;
}

/** Reads torchvision's layout (`features.N.weight` OIHW, `features.N.bias`). */
export function vgg19FromTorchvision(sd: StateDict, source = "torchvision weights"): Vgg19Weights {
  const convs = new Map<string, VggConv>();
  let cin = 3;
  for (const [conv, cout] of CONVS) {
    const i = torchvisionIndex(conv);
    const w = sd.get(`features.${i}.weight`);
    const b = sd.get(`features.${i}.bias`);
    if (!w || !b) break;
    if (w.shape.join(",") !== [cout, cin, 3, 3].join(",") || numel(b.shape) !== cout) {
      throw new Error(
        `${source}: features.${i} has shape [${w.shape}], VGG19's ${conv} is [${cout},${cin},3,3]`,
      );
    }
    convs.set(conv, { kernel: oihwToHwio(w.data, w.shape), shape: [3, 3, cin, cout], bias: b.data });
    cin = cout;
  }
  if (!convs.size) throw new Error(`${source}: no VGG19 weights (no features.0.weight)`);
  return { convs, convention: "torchvision", source };
}

/** Reads the Keras/caffe layout (`convX_Y.kernel` HWIO with BGR input, `convX_Y.bias`). */
export function vgg19FromCaffe(
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  source = "caffe weights",
): Vgg19Weights {
  const convs = new Map<string, VggConv>();
  let cin = 3;
  for (const [conv, cout] of CONVS) {
    const k = tensors.get(`${conv}.kernel`);
    const b = tensors.get(`${conv}.bias`);
    if (!k || !b) break;
    expectShape(source, conv, k.shape, cin, cout);
    let kernel = k.data;
    if (conv === "conv1_1") {
      // BGR → RGB: reverse the input-channel axis so the net can take RGB.
      kernel = new Float32Array(k.data.length);
      for (let hw = 0; hw < 9; hw++) {
        for (let c = 0; c < 3; c++) {
          kernel.set(k.data.subarray((hw * 3 + c) * cout, (hw * 3 + c + 1) * cout), (hw * 3 + 2 - c) * cout);
        }
      }
    }
    convs.set(conv, { kernel, shape: [3, 3, cin, cout], bias: b.data });
    cin = cout;
  }
  if (!convs.size) throw new Error(`${source}: no VGG19 weights (no conv1_1.kernel)`);
  return { convs: prefix(convs), convention: "caffe", source };
}

/**
 * Loads VGG19 weights from torchvision's `.pth`, its safetensors form, or a Keras/caffe-layout
 * safetensors file (told apart by their keys).
 */
export async function loadVgg19Weights(path: string): Promise<Vgg19Weights> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read VGG19 weights (${(e as Error).message})`);
  }
  if (/\.(pth|pt)$/i.test(path)) return vgg19FromTorchvision(await readPth(bytes, path), path);
  const st = parseSafetensors(bytes, path);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, t] of st.tensors) {
    if (t.dtype !== "I8") tensors.set(k, { shape: t.shape, data: decodeFloat(t) });
  }
  if (tensors.has("features.0.weight")) return vgg19FromTorchvision(tensors, path);
  if (tensors.has("conv1_1.kernel")) {
    const layout = st.metadata.kernel_layout;
    if (layout && layout !== "HWIO") throw new Error(`${path}: kernel_layout ${layout}, expected HWIO`);
    return vgg19FromCaffe(tensors, path);
  }
  throw new Error(`${path}: not VGG19 weights (neither features.0.weight nor conv1_1.kernel)`);
}

/**
 * Random VGG19 weights (He-normal, zero bias) up to `upTo`, for tests of the plumbing only: the
 * features mean nothing.
 */
export function randomVgg19Weights(upTo = "conv5_4", seed = 0): Vgg19Weights {
  // mulberry32 + Box-Muller: backend-independent and reproducible
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const gauss = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const convs = new Map<string, VggConv>();
  let cin = 3;
  for (const [conv, cout] of CONVS) {
    const shape: [number, number, number, number] = [3, 3, cin, cout];
    const kernel = new Float32Array(9 * cin * cout);
    const std = Math.sqrt(2 / (9 * cin));
    for (let i = 0; i < kernel.length; i++) kernel[i] = std * gauss();
    convs.set(conv, { kernel, shape, bias: new Float32Array(cout) });
    cin = cout;
    if (conv === upTo) break;
  }
  return { convs, convention: "torchvision", source: "random" };
}

/** Whether `layer` can be computed from the convs in `weights`. */
export function hasVggLayer(weights: Vgg19Weights, layer: string): boolean {
  const i = VGG19_LAYERS.indexOf(layer);
  if (i < 0) throw new Error(`unknown VGG19 layer ${layer} (expected e.g. conv5_4, relu3_4, pool2)`);
  return VGG19_LAYERS.slice(0, i + 1).every((n) => !n.startsWith("conv") || weights.convs.has(n));
}

/** The deepest conv layer the weights can compute. */
export function deepestVggConv(weights: Vgg19Weights): string {
  return VGG19_CONVS.filter((c) => weights.convs.has(c)).at(-1)!;
}

/** VGG19 as a frozen feature extractor. Dispose it when done. */
export class VGG19Features {
  readonly convention: VggConvention;
  readonly source: string;
  /** Layers this instance computes, deepest last. */
  readonly layers: readonly string[];
  private readonly kernels = new Map<string, tf.Tensor4D>();
  private readonly biases = new Map<string, tf.Tensor1D>();
  /** Each conv as a function of its input alone, with ReLU fused and without. */
  private readonly convs = new Map<string, Record<"relu" | "linear", (x: tf.Tensor4D) => tf.Tensor4D>>();
  private readonly mean: tf.Tensor1D;
  private readonly invStd: tf.Tensor1D;

  /** Keeps the convs needed for `layers` (all must be computable from `weights`). */
  constructor(weights: Vgg19Weights, layers: string[]) {
    if (!layers.length) throw new Error("VGG19Features: no layers requested");
    for (const l of layers) {
      if (!hasVggLayer(weights, l)) {
        throw new Error(`${weights.source}: VGG19 layer ${l} needs convs that these weights lack`);
      }
    }
    this.layers = [...layers].sort((a, b) => VGG19_LAYERS.indexOf(a) - VGG19_LAYERS.indexOf(b));
    this.convention = weights.convention;
    this.source = weights.source;
    const last = VGG19_LAYERS.indexOf(this.layers.at(-1)!);
    for (const name of VGG19_LAYERS.slice(0, last + 1)) {
      const c = weights.convs.get(name);
      if (!c) continue;
      // Constants, not variables: the perceptual net is frozen and must never reach an optimizer.
      const kernel = tf.tensor4d(c.kernel, c.shape), bias = tf.tensor1d(c.bias);
      this.kernels.set(name, kernel);
      this.biases.set(name, bias);
      this.convs.set(name, { relu: frozenConv(kernel, bias, true), linear: frozenConv(kernel, bias, false) });
    }
    const norm = VGG_INPUT_NORM[weights.convention];
    this.mean = tf.tensor1d(norm.mean);
    this.invStd = tf.tensor1d(norm.std.map((s) => 1 / s));
  }

  /** Features of NHWC RGB images in [0, 1], by layer name (all of {@link layers}). */
  apply(x: tf.Tensor4D): Map<string, tf.Tensor4D> {
    if (x.shape[3] !== 3) throw new Error(`VGG19 wants RGB input, got [${x.shape}]`);
    const want = new Set(this.layers);
    const out = new Map<string, tf.Tensor4D>();
    const lastIndex = VGG19_LAYERS.indexOf(this.layers.at(-1)!);
    const result = tf.tidy(() => {
      let h = tf.mul(tf.sub(x, this.mean), this.invStd) as tf.Tensor4D;
      for (let i = 0; i <= lastIndex; i++) {
        const name = VGG19_LAYERS[i];
        if (name.startsWith("conv")) {
          const reluToo = !want.has(name) && i < lastIndex; // fuse the ReLU unless the raw conv is wanted
          h = this.convs.get(name)![reluToo ? "relu" : "linear"](h);
          if (reluToo) i++; // the relu layer was fused
          if (reluToo && want.has(VGG19_LAYERS[i])) out.set(VGG19_LAYERS[i], h);
        } else if (name.startsWith("relu")) {
          h = tf.relu(h);
        } else {
          h = tf.maxPool(h, 2, 2, "valid");
        }
        if (want.has(name)) out.set(name, h);
      }
      return [...out.values()];
    });
    return new Map([...out.keys()].map((k, i) => [k, result[i]]));
  }

  /** Frees the weights. */
  dispose(): void {
    for (const t of [...this.kernels.values(), ...this.biases.values(), this.mean, this.invStd]) t.dispose();
    this.kernels.clear();
    this.biases.clear();
  }
}

/**
 * A 3x3 'same' conv of frozen weights (+ bias, + ReLU when `relu`) whose gradient is its input's
 * alone. tfjs's fused conv also computes the filter's and the bias's gradients and keeps its input
 * for them, all for nothing in a frozen net; this keeps only the output (the ReLU's mask) and
 * computes one transposed convolution.
 */
function frozenConv(filter: tf.Tensor4D, bias: tf.Tensor1D, relu: boolean): (x: tf.Tensor4D) => tf.Tensor4D {
  // customGrad's typing takes the save function as one of the inputs
  const f = (x: tf.Tensor, save: tf.GradSaveFunc) => {
    const shape = x.shape as [number, number, number, number];
    const y = tf.fused.conv2d({
      x: x as tf.Tensor4D,
      filter,
      bias,
      strides: 1,
      pad: "same",
      activation: relu ? "relu" : "linear",
    });
    save([y]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const g = relu ? tf.mul(dy, tf.step(saved[0])) : dy;
        return tf.conv2dTranspose(g as tf.Tensor4D, filter, shape, 1, "same");
      },
    };
  };
  return tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (
    x: tf.Tensor4D,
  ) => tf.Tensor4D;
}
