/**
 * The ESRGAN discriminator: BasicSR's `VGGStyleDiscriminator` (`discriminator_arch.py`) with its
 * module names, so BasicSR `net_d` checkpoints load one to one. Each stage is a 3x3 stride-1 conv
 * and a 4x4 stride-2 conv (PyTorch padding 1 on both), each followed by batch norm and
 * LeakyReLU 0.2 (the very first conv has a bias and no batch norm); then the 4x4 map is flattened in
 * PyTorch's NCHW order into `linear1` (→ 100), LeakyReLU, `linear2` (→ 1 logit).
 *
 * BasicSR accepts 128 (5 stages) and 256 (6 stages) pixels. For small test nets any input of
 * 4·2^k pixels works: stage i has `numFeat · min(2^i, 8)` channels, exactly BasicSR's rule, and
 * `linear1` takes the last stage's channels × 16.
 *
 * Batch norm follows PyTorch: eps 1e-5, momentum 0.1; training mode normalises with the batch's
 * biased variance and moves the running mean and the *unbiased* running variance.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { numel, type StateDict } from "./state_dict.ts";
import { countElements, readStateDict, torchToTf } from "./tf_layout.ts";

/** Hyper-parameters, named as BasicSR names them. */
export interface DiscriminatorConfig {
  numInCh: number;
  numFeat: number;
  /** Side of the square input: BasicSR's 128 or 256, or any 4·2^k (k ≥ 1) for small nets. */
  inputSize: number;
}

/** BasicSR's ESRGAN discriminator: 3 colours, 64 features, 128x128 crops. */
export const DISCRIMINATOR_128: DiscriminatorConfig = { numInCh: 3, numFeat: 64, inputSize: 128 };

/** Options for {@link VGGStyleDiscriminator}. */
export interface DiscriminatorOptions {
  /** Seed of PyTorch-style default initialisation (used when `weights` is absent). */
  seed?: number;
  /** A BasicSR-named state dict (PyTorch layout); `num_batches_tracked` may be absent. */
  weights?: StateDict;
}

/** Options for {@link VGGStyleDiscriminator.apply}. */
export interface DiscriminatorApplyOptions {
  /** Batch statistics (train) or running statistics (eval), as PyTorch's `net_d.train()`/`.eval()`. */
  training: boolean;
  /**
   * Training only: whether this forward moves the running statistics, as every train-mode forward
   * does in PyTorch. Default true. The update is a plain `assign` to non-trainable variables, so
   * it works inside `tf.variableGrads` and `tf.tidy` and takes no part in the gradient.
   */
  updateStats?: boolean;
}

const EPS = 1e-5;
const MOMENTUM = 0.1;
const SLOPE = 0.2;

interface ConvSpec {
  name: string;
  cin: number;
  cout: number;
  k: 3 | 4;
  bias: boolean;
  bn: string | null;
}

/** The conv stack of a config, in forward order. */
function convSpecs(config: DiscriminatorConfig): { convs: ConvSpec[]; lastCh: number } {
  const stages = Math.round(Math.log2(config.inputSize / 4));
  if (!(stages >= 1) || 4 * 2 ** stages !== config.inputSize) {
    throw new Error(`discriminator input size ${config.inputSize} is not 4·2^k (BasicSR uses 128 or 256)`);
  }
  const nf = config.numFeat;
  const ch = (i: number) => nf * Math.min(2 ** i, 8);
  const convs: ConvSpec[] = [
    { name: "conv0_0", cin: config.numInCh, cout: nf, k: 3, bias: true, bn: null },
    { name: "conv0_1", cin: nf, cout: nf, k: 4, bias: false, bn: "bn0_1" },
  ];
  for (let i = 1; i < stages; i++) {
    convs.push({ name: `conv${i}_0`, cin: ch(i - 1), cout: ch(i), k: 3, bias: false, bn: `bn${i}_0` });
    convs.push({ name: `conv${i}_1`, cin: ch(i), cout: ch(i), k: 4, bias: false, bn: `bn${i}_1` });
  }
  return { convs, lastCh: ch(stages - 1) };
}

/** Parameter and buffer names with PyTorch shapes, in PyTorch's `state_dict()` order. */
export function discriminatorShapes(config: DiscriminatorConfig): Map<string, number[]> {
  const { convs, lastCh } = convSpecs(config);
  const shapes = new Map<string, number[]>();
  for (const c of convs) {
    shapes.set(`${c.name}.weight`, [c.cout, c.cin, c.k, c.k]);
    if (c.bias) shapes.set(`${c.name}.bias`, [c.cout]);
    if (c.bn) {
      for (const p of ["weight", "bias", "running_mean", "running_var"]) shapes.set(`${c.bn}.${p}`, [c.cout]);
      shapes.set(`${c.bn}.num_batches_tracked`, []);
    }
  }
  shapes.set("linear1.weight", [100, lastCh * 16]);
  shapes.set("linear1.bias", [100]);
  shapes.set("linear2.weight", [1, 100]);
  shapes.set("linear2.bias", [1]);
  return shapes;
}

const isBuffer = (name: string) => /\.(running_mean|running_var|num_batches_tracked)$/.test(name);

/**
 * BasicSR's VGG-style discriminator. Dispose it when done: it owns GPU memory.
 *
 * Training with it: `tf.variableGrads(() => loss(d.apply(x, {training: true})), [...d.params.values()])`
 * works as is; each train-mode `apply` also moves the running statistics (see
 * {@link DiscriminatorApplyOptions.updateStats}).
 */
export class VGGStyleDiscriminator {
  readonly config: DiscriminatorConfig;
  /** Trainable parameters in TF layout (conv HWIO, linear [in, out]), under BasicSR names. */
  readonly params: Map<string, tf.Variable>;
  /** Batch-norm buffers (`running_mean`, `running_var`, `num_batches_tracked`), non-trainable. */
  readonly buffers: Map<string, tf.Variable>;
  private readonly convs: ConvSpec[];

  constructor(config: Partial<DiscriminatorConfig> = {}, options: DiscriminatorOptions = {}) {
    this.config = { ...DISCRIMINATOR_128, ...config };
    this.convs = convSpecs(this.config).convs;
    this.params = new Map();
    this.buffers = new Map();
    const w = options.weights;
    let seed = options.seed ?? 0;
    const shapes = discriminatorShapes(this.config);
    for (const [name, shape] of shapes) {
      const given = w?.get(name);
      const optional = name.endsWith(".num_batches_tracked");
      if (w && !given && !optional) throw new Error(`discriminator weights lack ${name}`);
      const shapeOk = optional ? numel(given?.shape ?? []) === 1 : given?.shape.join(",") === shape.join(",");
      if (given && !shapeOk) {
        throw new Error(`${name}: weights have shape [${given.shape}], the net wants [${shape}]`);
      }
      const fanIn = shapes.get(name.replace(/bias$/, "weight"))!.slice(1).reduce((a, b) => a * b, 1);
      const s = seed++;
      const value = tf.tidy(() =>
        torchToTf(given ? tf.tensor(given.data, shape) : initParam(name, shape, fanIn, s))
      );
      const buffer = isBuffer(name);
      // unnamed: tfjs registers variable names globally, and several nets share BasicSR names
      const v = tf.variable(value, !buffer);
      value.dispose();
      (buffer ? this.buffers : this.params).set(name, v);
    }
  }

  /** Logits for a batch of NHWC images in [0, 1]: [N, inputSize, inputSize, numInCh] → [N, 1]. */
  apply(x: tf.Tensor4D, options: DiscriminatorApplyOptions): tf.Tensor2D {
    const [, h, w, c] = x.shape;
    const { inputSize, numInCh } = this.config;
    if (h !== inputSize || w !== inputSize || c !== numInCh) {
      throw new Error(`discriminator wants [N, ${inputSize}, ${inputSize}, ${numInCh}], got [${x.shape}]`);
    }
    const update = options.training && (options.updateStats ?? true);
    return tf.tidy(() => {
      let feat: tf.Tensor4D = x;
      for (const spec of this.convs) {
        feat = this.conv(spec, feat);
        if (spec.bn) feat = this.batchNorm(spec.bn, feat, options.training, update);
        feat = tf.leakyRelu(feat, SLOPE);
      }
      // PyTorch flattens C, H, W: linear1's inputs are channel-major.
      const n = feat.shape[0];
      const flat = tf.reshape(tf.transpose(feat, [0, 3, 1, 2]), [n, -1]) as tf.Tensor2D;
      const h1 = tf.leakyRelu(this.linear("linear1", flat), SLOPE);
      return this.linear("linear2", h1);
    });
  }

  /** Weights and buffers in PyTorch layout under BasicSR names (`num_batches_tracked` as float). */
  stateDict(): Promise<StateDict> {
    return readStateDict(
      [...discriminatorShapes(this.config).keys()].map((name) => [
        name,
        this.params.get(name) ?? this.buffers.get(name)!,
      ]),
    );
  }

  /** Number of trainable parameters. */
  get size(): number {
    return countElements(this.params.values());
  }

  /** Frees the variables. */
  dispose(): void {
    for (const v of [...this.params.values(), ...this.buffers.values()]) v.dispose();
    this.params.clear();
    this.buffers.clear();
  }

  private conv(spec: ConvSpec, x: tf.Tensor4D): tf.Tensor4D {
    const filter = this.params.get(`${spec.name}.weight`)! as tf.Tensor4D;
    let y: tf.Tensor4D;
    if (spec.k === 3) {
      y = tf.conv2d(x, filter, 1, "same");
    } else {
      // PyTorch's padding 1 on a 4x4 stride-2 conv pads one pixel on every side; TF's "same"
      // would pad 1 before and 2 after, shifting the sampling grid.
      y = tf.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), filter, 2, "valid");
    }
    return spec.bias ? tf.add(y, this.params.get(`${spec.name}.bias`)!) : y;
  }

  private batchNorm(name: string, x: tf.Tensor4D, training: boolean, update: boolean): tf.Tensor4D {
    const gamma = this.params.get(`${name}.weight`)!;
    const beta = this.params.get(`${name}.bias`)!;
    const runMean = this.buffers.get(`${name}.running_mean`)!;
    const runVar = this.buffers.get(`${name}.running_var`)!;
    let mean: tf.Tensor, variance: tf.Tensor;
    if (training) {
      // Elementary ops rather than tf.batchNorm so the gradient through the batch statistics is
      // exact on every backend.
      ({ mean, variance } = tf.moments(x, [0, 1, 2]));
      if (update) {
        const [n, h, w] = x.shape;
        const count = n * h * w;
        const unbiased = tf.mul(variance, count / Math.max(count - 1, 1));
        runMean.assign(tf.add(tf.mul(runMean, 1 - MOMENTUM), tf.mul(mean, MOMENTUM)));
        runVar.assign(tf.add(tf.mul(runVar, 1 - MOMENTUM), tf.mul(unbiased, MOMENTUM)));
        const tracked = this.buffers.get(`${name}.num_batches_tracked`)!;
        tracked.assign(tf.add(tracked, 1));
      }
    } else {
      mean = runMean;
      variance = runVar;
    }
    const scale = tf.mul(gamma, tf.rsqrt(tf.add(variance, EPS)));
    return tf.add(tf.mul(tf.sub(x, mean), scale), beta) as tf.Tensor4D;
  }

  private linear(name: string, x: tf.Tensor2D): tf.Tensor2D {
    return tf.add(
      tf.matMul(x, this.params.get(`${name}.weight`)! as tf.Tensor2D),
      this.params.get(`${name}.bias`)!,
    ) as tf.Tensor2D;
  }
}

/**
 * PyTorch's defaults, which BasicSR keeps for this net: conv and linear weights and biases
 * uniform in ±1/√fan_in (kaiming-uniform with a = √5), batch norm weight 1 and bias 0, running
 * mean 0 and variance 1.
 */
function initParam(name: string, shape: number[], fanIn: number, seed: number): tf.Tensor {
  if (name.startsWith("bn")) {
    if (/\.(weight|running_var)$/.test(name)) return tf.ones(shape);
    return tf.zeros(shape);
  }
  const bound = 1 / Math.sqrt(fanIn);
  return tf.randomUniform(shape, -bound, bound, "float32", seed);
}
