/**
 * RRDBNet, the ESRGAN generator (Wang et al. 2018), as BasicSR's `rrdbnet_arch.py` defines it:
 * 23 Residual-in-Residual Dense Blocks, no batch norm, residual scaling 0.2, two nearest x2
 * upsamplings. Scales 2 and 1 pixel-unshuffle the input first. Parameter names are BasicSR's.
 * The original ESRGAN code also made x1, x2 and x8 nets with 0, 1 or 3 upsamplings and no
 * unshuffle (many published models are such): `numUpsample` says so, their extra convs are
 * `conv_up3`, as spandrel names them.
 *
 * Tensors are NHWC float32 in [0, 1]; parameters live as tf.Variables in TF layout (HWIO),
 * while `stateDict()` speaks PyTorch's layout (OIHW) so checkpoints map one to one.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { StateDict } from "./state_dict.ts";
import { countElements, readStateDict, torchToTf } from "./tf_layout.ts";
import { chunkedChannelConcat } from "./channel_concat.ts";

/** Architecture hyper-parameters, named as BasicSR names them. */
export interface RRDBNetConfig {
  numInCh: number;
  numOutCh: number;
  scale: 1 | 2 | 4 | 8;
  numFeat: number;
  numBlock: number;
  numGrowCh: number;
  /** Nearest x2 upsamplings (conv_up1, ...); absent: 2 (BasicSR's nets, x4, x2 and x1 alike). */
  numUpsample?: number;
}

/** The number of x2 upsamplings of a net. */
export function upsamplings(config: RRDBNetConfig): number {
  return config.numUpsample ?? 2;
}

/** The pixel-unshuffle factor of a net's input: 2^upsamplings / scale (BasicSR's x2: 2, x1: 4). */
export function unshuffleFactor(config: RRDBNetConfig): number {
  const u = 2 ** upsamplings(config) / config.scale;
  if (![1, 2, 4].includes(u)) {
    throw new Error(`RRDBNet: scale ${config.scale} does not go with ${upsamplings(config)} upsamplings`);
  }
  return u;
}

/** The paper's generator: x4, 64 features, 23 blocks, growth 32. */
export const ESRGAN_X4: RRDBNetConfig = {
  numInCh: 3,
  numOutCh: 3,
  scale: 4,
  numFeat: 64,
  numBlock: 23,
  numGrowCh: 32,
};

/** Parameter names and PyTorch-layout shapes of an RRDBNet, in BasicSR's order. */
export function rrdbnetShapes(config: RRDBNetConfig): Map<string, number[]> {
  const { numFeat: nf, numGrowCh: gc } = config;
  const inCh = config.numInCh * unshuffleFactor(config) ** 2;
  const shapes = new Map<string, number[]>();
  const conv = (name: string, cin: number, cout: number) => {
    shapes.set(`${name}.weight`, [cout, cin, 3, 3]);
    shapes.set(`${name}.bias`, [cout]);
  };
  conv("conv_first", inCh, nf);
  for (let b = 0; b < config.numBlock; b++) {
    for (let r = 1; r <= 3; r++) {
      for (let c = 1; c <= 5; c++) {
        conv(`body.${b}.rdb${r}.conv${c}`, nf + (c - 1) * gc, c === 5 ? nf : gc);
      }
    }
  }
  conv("conv_body", nf, nf);
  for (let k = 1; k <= upsamplings(config); k++) conv(`conv_up${k}`, nf, nf);
  conv("conv_hr", nf, nf);
  conv("conv_last", nf, config.numOutCh);
  return shapes;
}

/** Reads the architecture off a BasicSR-named state dict. */
export function inferRRDBNetConfig(sd: StateDict): RRDBNetConfig {
  const shape = (k: string) => {
    const t = sd.get(k);
    if (!t) throw new Error(`not an RRDBNet state dict: no ${k}`);
    return t.shape;
  };
  const [numFeat, firstIn] = shape("conv_first.weight");
  const [numGrowCh] = shape("body.0.rdb1.conv1.weight");
  const [numOutCh] = shape("conv_last.weight");
  let numBlock = 0;
  while (sd.has(`body.${numBlock}.rdb1.conv1.weight`)) numBlock++;
  let numUpsample = 0;
  while (sd.has(`conv_up${numUpsample + 1}.weight`)) numUpsample++;
  // BasicSR folds the pixel-unshuffle into conv_first's input channels (x4: 3, x2: 12, x1: 48);
  // the output channel count tells the image's channel count.
  const numInCh = numOutCh;
  const ratio = firstIn / numInCh;
  const unshuffle = ratio === 1 ? 1 : ratio === 4 ? 2 : ratio === 16 ? 4 : 0;
  const scale = 2 ** numUpsample / unshuffle;
  if (!unshuffle || ![1, 2, 4, 8].includes(scale)) {
    throw new Error(
      `conv_first has ${firstIn} input channels for ${numInCh} colours and ${numUpsample} upsamplings`,
    );
  }
  return {
    numInCh,
    numOutCh,
    scale: scale as RRDBNetConfig["scale"],
    numFeat,
    numBlock,
    numGrowCh,
    ...(numUpsample === 2 ? {} : { numUpsample }),
  };
}

/**
 * Throws unless `weights` are exactly `config`'s: every tensor present at its shape, none extra
 * (strict, as PyTorch's load_state_dict: an x8 net's weights in an x4 net would otherwise lose
 * conv_up3).
 */
export function checkRRDBNetWeights(config: RRDBNetConfig, weights: StateDict): void {
  const shapes = rrdbnetShapes(config);
  const extra = [...weights.keys()].filter((k) => !shapes.has(k));
  if (extra.length) {
    throw new Error(
      `the weights have ${extra.slice(0, 3).join(", ")}${extra.length > 3 ? ", ..." : ""}, which this net ` +
        `(x${config.scale}, ${config.numBlock} blocks, ${upsamplings(config)} upsamplings) has not`,
    );
  }
  for (const [name, shape] of shapes) {
    const given = weights.get(name);
    if (!given) throw new Error(`weights lack ${name}`);
    if (given.shape.join(",") !== shape.join(",")) {
      throw new Error(`${name}: weights have shape [${given.shape}], the net wants [${shape}]`);
    }
  }
}

/** An RRDBNet's architecture and weights (PyTorch layout), for consumers that need no tfjs net. */
export interface RRDBNetWeights {
  config: RRDBNetConfig;
  weights: StateDict;
}

/** Options for {@link RRDBNet}. */
export interface RRDBNetOptions {
  /** Weights in PyTorch layout; absent: BasicSR's initialisation, drawn with `seed`. */
  weights?: StateDict;
  seed?: number;
  /** Whether the variables take gradients (training). */
  trainable?: boolean;
}

/** The ESRGAN generator. Dispose it when done: it owns GPU memory. */
export class RRDBNet {
  readonly config: RRDBNetConfig;
  /** Parameters in TF layout (HWIO), under BasicSR names. */
  readonly params: Map<string, tf.Variable>;
  /** tfjs's fused conv has no gradient for LeakyReLU, so training runs the unfused ops. */
  private readonly fused: boolean;

  constructor(config: RRDBNetConfig, options: RRDBNetOptions = {}) {
    this.config = config;
    this.params = new Map();
    this.fused = !options.trainable;
    const shapes = rrdbnetShapes(config);
    if (options.weights) checkRRDBNetWeights(config, options.weights);
    let seed = options.seed ?? 0;
    for (const [name, shape] of shapes) {
      const given = options.weights?.get(name);
      const value = tf.tidy(() =>
        torchToTf(given ? tf.tensor(given.data, shape) : initParam(name, shape, seed++))
      );
      // unnamed: tfjs registers variable names globally, and G and its EMA copy share BasicSR names
      this.params.set(name, tf.variable(value, options.trainable ?? false));
      value.dispose();
    }
  }

  /** Upscales a batch: [N, H, W, C] in [0, 1] → [N, H·s, W·s, C] (not clamped). */
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const u = unshuffleFactor(this.config);
      let feat = u === 1 ? x : pixelUnshuffle(x, u);
      feat = this.conv("conv_first", feat);
      let body = feat;
      // One scope per block and per upsampling: under apply()'s single tidy every intermediate of
      // all blocks would stay alive until it returns (about 10x the peak memory at inference).
      for (let b = 0; b < this.config.numBlock; b++) {
        const prev = body;
        body = tf.tidy(() => this.rrdb(`body.${b}`, prev));
      }
      feat = tf.add(feat, this.conv("conv_body", body));
      for (let k = 1; k <= upsamplings(this.config); k++) {
        const up = `conv_up${k}`;
        const prev = feat;
        const [, h, w] = prev.shape;
        // tfjs-cpu's ResizeNearestNeighborGrad is wrong for batches > 1 (4.22): training upsamples
        // with stacks, whose gradients are exact on every backend
        feat = tf.tidy(() =>
          this.conv(
            up,
            this.fused ? tf.image.resizeNearestNeighbor(prev, [h * 2, w * 2]) : upsample2x(prev),
            true,
          )
        );
      }
      return this.conv("conv_last", this.conv("conv_hr", feat, true));
    });
  }

  /** The weights in PyTorch layout under BasicSR names. */
  stateDict(): Promise<StateDict> {
    return readStateDict(this.params);
  }

  /** Number of parameters. */
  get size(): number {
    return countElements(this.params.values());
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
  }

  private conv(name: string, x: tf.Tensor4D, lrelu = false): tf.Tensor4D {
    const filter = this.params.get(`${name}.weight`)! as tf.Tensor4D;
    const bias = this.params.get(`${name}.bias`)!;
    if (!this.fused) {
      const y = tf.add(tf.conv2d(x, filter, 1, "same"), bias) as tf.Tensor4D;
      return lrelu ? tf.leakyRelu(y, 0.2) : y;
    }
    return tf.fused.conv2d({
      x,
      filter,
      bias,
      strides: 1,
      pad: "same",
      activation: lrelu ? "leakyrelu" : "linear",
      leakyreluAlpha: 0.2,
    });
  }

  private rdb(name: string, x: tf.Tensor4D): tf.Tensor4D {
    const feats = [x];
    // on wasm, tf.concat's per-pixel JavaScript copies cost 7% of a forward: see channel_concat.ts
    const cat = this.fused && tf.getBackend() === "wasm" && x.shape[3] % this.config.numGrowCh === 0
      ? chunkedChannelConcat(x, feats, this.config.numGrowCh)
      : () => tf.concat(feats, 3);
    // at inference each concatenation is freed after its conv instead of at the block's end
    const conv = (c: number, lrelu: boolean) => {
      const input = cat();
      const y = this.conv(`${name}.conv${c}`, input, lrelu);
      if (this.fused && input !== x) input.dispose();
      return y;
    };
    for (let c = 1; c <= 4; c++) feats.push(conv(c, true));
    return tf.add(tf.mul(conv(5, false), 0.2), x);
  }

  private rrdb(name: string, x: tf.Tensor4D): tf.Tensor4D {
    let out = x;
    for (let r = 1; r <= 3; r++) out = this.rdb(`${name}.rdb${r}`, out);
    return tf.add(tf.mul(out, 0.2), x);
  }
}

/** Nearest-neighbour x2 upsampling (each pixel becomes a 2x2 block) from stacks and reshapes. */
export function upsample2x(x: tf.Tensor4D): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const cols = tf.reshape(tf.stack([x, x], 3), [n, h, 2 * w, c]);
  return tf.reshape(tf.stack([cols, cols], 2), [n, 2 * h, 2 * w, c]);
}

/** BasicSR's `pixel_unshuffle` in NHWC: output channel c·s² + i·s + j takes pixel (i, j). */
export function pixelUnshuffle(x: tf.Tensor4D, s: number): tf.Tensor4D {
  const [n, hh, ww, c] = x.shape;
  if (hh % s || ww % s) throw new Error(`pixel-unshuffle by ${s} needs sides divisible by ${s}`);
  const h = hh / s, w = ww / s;
  return tf.reshape(
    tf.transpose(tf.reshape(x, [n, h, s, w, s, c]), [0, 1, 3, 5, 2, 4]),
    [n, h, w, c * s * s],
  );
}

/**
 * BasicSR's initialisation: kaiming-normal scaled by 0.1 inside the dense blocks (so the residual
 * path starts near identity), PyTorch's default kaiming-uniform elsewhere; biases zero.
 */
function initParam(name: string, shape: number[], seed: number): tf.Tensor {
  const fanIn = shape.length === 4 ? shape[1] * shape[2] * shape[3] : 0;
  const inBody = name.startsWith("body.");
  if (shape.length === 1) return tf.zeros(shape);
  if (inBody) return tf.mul(tf.randomNormal(shape, 0, Math.sqrt(2 / fanIn), "float32", seed), 0.1);
  const bound = 1 / Math.sqrt(fanIn); // kaiming_uniform with a = sqrt(5)
  return tf.randomUniform(shape, -bound, bound, "float32", seed);
}
