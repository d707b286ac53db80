/**
 * The project's weight format: safetensors in PyTorch layout under BasicSR names, with the
 * architecture in the metadata. Three precisions: fp32, fp16, and int8 with one float32 scale per
 * output channel (symmetric, `NAME` as I8 and `NAME.scale` as F32), where chosen sensitive layers
 * may stay fp16. Biases stay fp32 in int8 files: they are tiny and add straight to the output.
 * @module
 */
import { inferRRDBNetConfig, type RRDBNetConfig } from "../rrdbnet_arch.ts";
import { numel, type StateDict, type TensorData } from "../state_dict.ts";
import {
  decodeFloat,
  decodeFloatInto,
  encodeFloat,
  parseSafetensors,
  type RawTensor,
  serializeSafetensors,
} from "./safetensors.ts";

/** Storage precision of a model file. */
export type WeightDType = "fp32" | "fp16" | "int8";

/** Options for {@link encodeModelFile}. */
export interface EncodeOptions {
  dtype: WeightDType;
  /** int8 only: layers (name prefixes such as `conv_first`) kept in fp16. */
  fp16Layers?: string[];
  /** Extra metadata (source, licence, training notes). */
  metadata?: Record<string, string>;
}

/** What a model file holds once decoded. */
export interface ModelFile {
  arch: "RRDBNet";
  config: RRDBNetConfig;
  dtype: WeightDType;
  stateDict: StateDict;
  metadata: Record<string, string>;
}

/** Int8 layers kept fp16 by default: the first and last convs see raw pixels. */
export const DEFAULT_FP16_LAYERS = ["conv_first", "conv_last"];

/** Encodes an RRDBNet state dict as a model file. */
export function encodeModelFile(sd: StateDict, options: EncodeOptions): Uint8Array {
  const config = inferRRDBNetConfig(sd);
  const fp16Layers = options.dtype === "int8" ? options.fp16Layers ?? DEFAULT_FP16_LAYERS : [];
  const tensors = new Map<string, RawTensor>();
  for (const [name, t] of sd) {
    const isWeight = t.shape.length > 1;
    if (options.dtype === "int8" && isWeight && !fp16Layers.some((p) => name.startsWith(p + "."))) {
      const { q, scales } = quantizeInt8(t.data, t.shape[0]);
      tensors.set(name, { dtype: "I8", shape: t.shape, bytes: new Uint8Array(q.buffer) });
      tensors.set(`${name}.scale`, {
        dtype: "F32",
        shape: [t.shape[0]],
        bytes: encodeFloat(scales, "F32"),
      });
    } else {
      const dtype = options.dtype === "fp32" || (options.dtype === "int8" && !isWeight) ? "F32" : "F16";
      tensors.set(name, { dtype, shape: t.shape, bytes: encodeFloat(t.data, dtype) });
    }
  }
  const metadata = {
    ...options.metadata,
    format: "esrgan-ts",
    arch: "RRDBNet",
    config: JSON.stringify(config),
    dtype: options.dtype,
    ...(fp16Layers.length ? { fp16_layers: fp16Layers.join(",") } : {}),
  };
  return serializeSafetensors({ tensors, metadata });
}

/**
 * A tensor of a lazily decoded model file: each read of `data` decodes it anew; `decodeInto`
 * writes its values into `out` instead, allocating nothing (the CPU kernels' plan decodes every
 * conv into one scratch: 130 MB of short-lived arrays for x4plus stayed resident otherwise).
 */
export interface LazyTensorData extends TensorData {
  decodeInto(out: Float32Array): void;
}

/** Options for {@link decodeModelFile}. */
export interface ModelDecodeOptions {
  /**
   * Decode each tensor when its `data` is read, anew on every read, instead of all at once: a
   * consumer that reads each tensor once (a net being made, the CPU kernels' plan) then never
   * holds the whole net in float32 beside where it puts it (x4plus: 67 MB). The state dict keeps
   * `bytes` and reads them on every read: they must not change meanwhile.
   */
  lazy?: boolean;
}

/** Decodes a model file (any of the three precisions) to float32. */
export function decodeModelFile(
  bytes: Uint8Array,
  name = "model file",
  options: ModelDecodeOptions = {},
): ModelFile {
  const { tensors, metadata } = parseSafetensors(bytes, name);
  const stateDict: StateDict = new Map();
  for (const [key, t] of tensors) {
    if (key.endsWith(".scale") && tensors.get(key.slice(0, -6))?.dtype === "I8") continue;
    let decodeInto = (out: Float32Array) => decodeFloatInto(t, out);
    if (t.dtype === "I8") {
      const scale = tensors.get(`${key}.scale`);
      if (!scale) throw new Error(`${name}: int8 tensor ${key} has no ${key}.scale`);
      // checked here, so that a lazy state dict cannot fail when read
      if (scale.dtype === "I8" || numel(scale.shape) !== t.shape[0]) {
        throw new Error(`${name}: ${key}.scale must be ${t.shape[0]} floats, one per output channel`);
      }
      decodeInto = (out) => dequantizeInt8(t, decodeFloat(scale), out);
    }
    const decode = () => {
      const out = new Float32Array(numel(t.shape));
      decodeInto(out);
      return out;
    };
    const lazy: LazyTensorData = {
      shape: t.shape,
      get data() {
        return decode();
      },
      decodeInto,
    };
    stateDict.set(key, options.lazy ? lazy : { shape: t.shape, data: decode() });
  }
  if (metadata.arch && metadata.arch !== "RRDBNet") {
    throw new Error(`${name}: architecture ${metadata.arch} is not supported`);
  }
  const config = metadata.config ? JSON.parse(metadata.config) : inferRRDBNetConfig(stateDict);
  const dtype = (metadata.dtype as WeightDType) ?? "fp32";
  return { arch: "RRDBNet", config, dtype, stateDict, metadata };
}

/** Symmetric per-output-channel int8: scale = max|w| / 127 over each channel's weights. */
export function quantizeInt8(
  data: Float32Array,
  channels: number,
): { q: Int8Array; scales: Float32Array } {
  const per = data.length / channels;
  const q = new Int8Array(data.length);
  const scales = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    let max = 0;
    for (let i = c * per; i < (c + 1) * per; i++) max = Math.max(max, Math.abs(data[i]));
    const s = max / 127 || 1;
    scales[c] = s;
    for (let i = c * per; i < (c + 1) * per; i++) q[i] = Math.round(data[i] / s);
  }
  return { q, scales };
}

function dequantizeInt8(t: RawTensor, scales: Float32Array, out: Float32Array): void {
  const q = new Int8Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const per = numel(t.shape) / t.shape[0];
  // channel by channel: a division per value made this 2-3x slower (the CLI and endpoint load x4plus's
  // 16.7M at every start)
  for (let c = 0; c < t.shape[0]; c++) {
    const s = scales[c];
    for (let i = c * per, end = i + per; i < end; i++) out[i] = q[i] * s;
  }
}
