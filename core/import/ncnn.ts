/**
 * Reads Real-ESRGAN's ncnn models (`.param` text + `.bin` weights), as realesrgan-ncnn-vulkan
 * ships them, into a BasicSR-named RRDBNet state dict. The graph's Convolution layers appear in
 * forward order (conv_first, per block rdb1..3 conv1..5, conv_body, conv_up1, conv_up2, conv_hr,
 * conv_last), so names follow from position; counts, shapes and activations are checked against
 * the architecture so that a different net is refused rather than misread.
 * @module
 */
import { inferRRDBNetConfig, rrdbnetShapes } from "../rrdbnet_arch.ts";
import type { StateDict } from "../state_dict.ts";

/** One layer line of a `.param` file. */
export interface NcnnLayer {
  type: string;
  name: string;
  /** `k=v` parameters; arrays (`-23310=1,0.2`) are stored under their plain key (10). */
  params: Map<number, number | number[]>;
}

/** Layers that hold no weights in the `.bin`, so they can be stepped over. */
const WEIGHTLESS = new Set([
  "Input",
  "Split",
  "Concat",
  "Eltwise",
  "BinaryOp",
  "Interp",
  "ReLU",
  "Crop",
  "Reshape",
  "Permute",
  "PixelShuffle",
  "Noop",
]);

const TAG_FP16 = 0x01306b47;
const TAG_INT8 = 0x000d4b38;
const TAG_FP32_SCALED = 0x0002c056;

/** Parses a text `.param` file. */
export function parseNcnnParam(text: string, name = "ncnn param"): NcnnLayer[] {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length);
  if (lines[0] !== "7767517") {
    throw new Error(`${name}: not a text ncnn .param file (magic ${JSON.stringify(lines[0]?.slice(0, 12))})`);
  }
  const [layerCount] = (lines[1] ?? "").split(/\s+/).map(Number);
  const layers: NcnnLayer[] = [];
  for (const line of lines.slice(2)) {
    const tok = line.split(/\s+/);
    const [type, lname] = tok;
    const nIn = Number(tok[2]), nOut = Number(tok[3]);
    if (!type || !lname || !Number.isInteger(nIn) || !Number.isInteger(nOut)) {
      throw new Error(`${name}: malformed layer line: ${line.slice(0, 80)}`);
    }
    const params = new Map<number, number | number[]>();
    for (const kv of tok.slice(4 + nIn + nOut)) {
      const m = /^(-?\d+)=(.*)$/.exec(kv);
      if (!m) throw new Error(`${name}: layer ${lname}: malformed parameter ${kv}`);
      const k = Number(m[1]);
      if (k <= -23300) {
        const [, ...values] = m[2].split(",").map(Number);
        params.set(-k - 23300, values);
      } else {
        params.set(k, Number(m[2]));
      }
    }
    layers.push({ type, name: lname, params });
  }
  if (layers.length !== layerCount) {
    throw new Error(`${name}: header says ${layerCount} layers, the file has ${layers.length} (truncated?)`);
  }
  return layers;
}

/** Names of the convs of an RRDBNet with `numBlock` blocks, in forward order. */
function convNames(numBlock: number): string[] {
  const names = ["conv_first"];
  for (let b = 0; b < numBlock; b++) {
    for (let r = 1; r <= 3; r++) for (let c = 1; c <= 5; c++) names.push(`body.${b}.rdb${r}.conv${c}`);
  }
  return [...names, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"];
}

/** Whether BasicSR's RRDBNet puts a LeakyReLU after this conv. */
function hasLeakyRelu(conv: string): boolean {
  return /conv[1-4]$/.test(conv) || ["conv_up1", "conv_up2", "conv_hr"].includes(conv);
}

/** Reads an ncnn RRDBNet (`param` text, `bin` bytes) into a BasicSR-named state dict. */
export function readNcnn(param: string, bin: Uint8Array, name = "ncnn model"): StateDict {
  const layers = parseNcnnParam(param, `${name}.param`);
  const convs = layers.filter((l) => l.type === "Convolution");
  const unknown = layers.find((l) => l.type !== "Convolution" && !WEIGHTLESS.has(l.type));
  if (unknown) throw new Error(`${name}: layer type ${unknown.type} (${unknown.name}) is not supported`);
  const numBlock = (convs.length - 6) / 15;
  if (!Number.isInteger(numBlock) || numBlock < 1) {
    throw new Error(`${name}: ${convs.length} convolutions do not form an RRDBNet (1 + 15·blocks + 5)`);
  }
  const names = convNames(numBlock);
  const view = new DataView(bin.buffer, bin.byteOffset, bin.byteLength);
  let at = 0;
  const need = (bytes: number, what: string) => {
    if (at + bytes > bin.byteLength) {
      throw new Error(`${name}.bin: truncated in ${what} (needs ${at + bytes} bytes, has ${bin.byteLength})`);
    }
  };
  const sd: StateDict = new Map();
  convs.forEach((layer, i) => {
    const conv = names[i];
    const p = (k: number, d: number) => (layer.params.get(k) as number | undefined) ?? d;
    const out = p(0, 0), kw = p(1, 0), kh = p(11, kw), count = p(6, 0);
    if (p(2, 1) !== 1 || p(12, p(2, 1)) !== 1 || p(3, 1) !== 1 || p(13, p(3, 1)) !== 1) {
      throw new Error(`${name}: ${layer.name} is dilated or strided; RRDBNet's convs are not`);
    }
    if (p(8, 0) !== 0) throw new Error(`${name}: ${layer.name} is int8-quantised ncnn, not supported`);
    if (p(5, 0) !== 1) throw new Error(`${name}: ${layer.name} has no bias; RRDBNet's convs have one`);
    const act = p(9, 0);
    const slope = (layer.params.get(10) as number[] | undefined)?.[0];
    const leaky = act === 2 && Math.abs((slope ?? 0) - 0.2) < 1e-6;
    if (leaky !== hasLeakyRelu(conv) || (act !== 0 && act !== 2)) {
      throw new Error(
        `${name}: convolution ${i} (${layer.name}) has activation ${act}; as ${conv} it should${
          hasLeakyRelu(conv) ? "" : " not"
        } have LeakyReLU(0.2): not an RRDBNet graph`,
      );
    }
    const inCh = count / (out * kh * kw);
    if (!Number.isInteger(inCh) || inCh < 1) {
      throw new Error(`${name}: ${layer.name}: weight count 6=${count} does not fit ${out}×${kh}×${kw}`);
    }
    need(4, `${layer.name} weight tag`);
    const tag = view.getUint32(at, true);
    at += 4;
    let weight: Float32Array;
    if (tag === TAG_FP16) {
      need(count * 2, `${layer.name} fp16 weights`);
      weight = Float32Array.from(new Float16Array(bin.slice(at, at + count * 2).buffer));
      at += Math.ceil((count * 2) / 4) * 4;
    } else if (tag === 0 || tag === TAG_FP32_SCALED) {
      need(count * 4, `${layer.name} fp32 weights`);
      weight = new Float32Array(bin.slice(at, at + count * 4).buffer);
      at += count * 4;
    } else {
      if (tag === TAG_INT8) throw new Error(`${name}: ${layer.name} stores int8 weights, not supported`);
      throw new Error(
        `${name}.bin: unknown weight tag 0x${tag.toString(16)} for ${layer.name} at byte ${at - 4} ` +
          `(the .bin does not match the .param, or holds table-quantised weights)`,
      );
    }
    need(out * 4, `${layer.name} bias`);
    const bias = new Float32Array(bin.slice(at, at + out * 4).buffer);
    at += out * 4;
    sd.set(`${conv}.weight`, { shape: [out, inCh, kh, kw], data: weight });
    sd.set(`${conv}.bias`, { shape: [out], data: bias });
  });
  if (at !== bin.byteLength) {
    throw new Error(
      `${name}.bin: ${bin.byteLength - at} bytes left over: the .bin does not match the .param`,
    );
  }
  const shapes = rrdbnetShapes(inferRRDBNetConfig(sd));
  for (const [k, shape] of shapes) {
    const got = sd.get(k)!.shape;
    if (got.join(",") !== shape.join(",")) {
      throw new Error(`${name}: ${k} has shape [${got}], an RRDBNet wants [${shape}]`);
    }
  }
  return sd;
}
