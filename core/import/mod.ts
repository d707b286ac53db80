/**
 * Imports RRDBNet weights from the formats they are published in: PyTorch `.pth`/`.pt` (zip or
 * legacy; BasicSR or original ESRGAN names), ncnn `.param` + `.bin`, and safetensors (this
 * project's model files or plain BasicSR-named ones). The result is a BasicSR-named state dict
 * whose names and shapes have been checked against the architecture they imply.
 * @module
 */
import { inferRRDBNetConfig, rrdbnetShapes } from "../rrdbnet_arch.ts";
import { assertSameLayout, type StateDict } from "../state_dict.ts";
import { decodeModelFile } from "../weights/model_file.ts";
import { decodeFloat, parseSafetensors } from "../weights/safetensors.ts";
import { toBasicSR } from "./esrgan_keys.ts";
import { readNcnn } from "./ncnn.ts";
import { isPth, readPth } from "./pth.ts";

export { isPth, readPth } from "./pth.ts";
export { parseNcnnParam, readNcnn } from "./ncnn.ts";
export { detectLayout, toBasicSR } from "./esrgan_keys.ts";

/** Options for {@link importWeightBytes}. */
export interface ImportBytesOptions {
  /** File name, for messages and for choosing the format by extension. */
  name?: string;
  /** The `.bin` of an ncnn model, when `bytes` is its `.param`. */
  ncnnBin?: Uint8Array;
}

/**
 * Imports weights from a file: `.param` or `.bin` (the ncnn pair, found side by side),
 * `.safetensors`, or anything else that starts like a PyTorch checkpoint.
 */
export async function importWeights(path: string): Promise<StateDict> {
  const ncnn = /\.(param|bin)$/i.exec(path);
  if (ncnn) {
    const stem = path.slice(0, -ncnn[0].length);
    const [param, bin] = await Promise.all([
      readFile(`${stem}.param`),
      readFile(`${stem}.bin`),
    ]);
    return importWeightBytes(param, { name: `${stem}.param`, ncnnBin: bin });
  }
  return importWeightBytes(await readFile(path), { name: path });
}

/** Imports weights from bytes already in memory (a browser upload, say). */
export async function importWeightBytes(
  bytes: Uint8Array,
  options: ImportBytesOptions = {},
): Promise<StateDict> {
  const name = options.name ?? "weights";
  let sd: StateDict;
  if (options.ncnnBin) {
    sd = readNcnn(new TextDecoder().decode(bytes), options.ncnnBin, name.replace(/\.param$/i, ""));
  } else if (isPth(bytes)) {
    sd = toBasicSR(await readPth(bytes, name), name);
  } else if (/\.safetensors$/i.test(name) || looksLikeSafetensors(bytes)) {
    sd = readSafetensors(bytes, name);
  } else {
    throw new Error(`${name}: unknown weight format (expected .pth/.pt, .param + .bin or .safetensors)`);
  }
  checkArchitecture(sd, name);
  return sd;
}

function readSafetensors(bytes: Uint8Array, name: string): StateDict {
  const { tensors, metadata } = parseSafetensors(bytes, name);
  if (metadata.format === "esrgan-ts") return decodeModelFile(bytes, name).stateDict;
  const sd: StateDict = new Map();
  for (const [k, t] of tensors) {
    if (t.dtype === "I8") throw new Error(`${name}: int8 tensor ${k} outside an esrgan-ts model file`);
    sd.set(k, { shape: t.shape, data: decodeFloat(t) });
  }
  return toBasicSR(sd, name);
}

/** A safetensors file starts with a small little-endian length and then `{`. */
function looksLikeSafetensors(bytes: Uint8Array): boolean {
  if (bytes.byteLength < 9) return false;
  const len = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  return len < BigInt(bytes.byteLength) && bytes[8] === 0x7b;
}

/** Throws unless the names and shapes are exactly those of the RRDBNet they imply. */
function checkArchitecture(sd: StateDict, name: string): void {
  try {
    const expected: StateDict = new Map();
    for (const [k, shape] of rrdbnetShapes(inferRRDBNetConfig(sd))) {
      expected.set(k, { shape, data: new Float32Array(0) });
    }
    assertSameLayout(expected, sd);
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  }
}

async function readFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new Error(`${path}: ${why}`);
  }
}
