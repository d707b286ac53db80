/**
 * The safetensors container (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length, a JSON header of `{name: {dtype, shape, data_offsets}}` plus `__metadata__`
 * (string → string), then the raw little-endian tensor bytes.
 * @module
 */

/** The element types this project reads and writes. */
export type SafeDType = "F32" | "F16" | "I8";

/** One stored tensor: its raw bytes, not yet decoded. */
export interface RawTensor {
  dtype: SafeDType;
  shape: number[];
  bytes: Uint8Array;
}

/** A parsed file. */
export interface Safetensors {
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
}

const BYTES: Record<SafeDType, number> = { F32: 4, F16: 2, I8: 1 };

/** Parses a safetensors file, checking that every offset lies inside it. */
export function parseSafetensors(file: Uint8Array, name = "safetensors file"): Safetensors {
  if (file.byteLength < 8) throw new Error(`${name}: too short to be safetensors`);
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > file.byteLength - 8 || headerLen > 100_000_000) {
    throw new Error(`${name}: header length ${headerLen} exceeds the file (truncated?)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + headerLen)));
  } catch {
    throw new Error(`${name}: header is not JSON (not a safetensors file?)`);
  }
  const body = file.subarray(8 + headerLen);
  const tensors = new Map<string, RawTensor>();
  let metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(header)) {
    if (key === "__metadata__") {
      metadata = value as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: [start, end] } = value as {
      dtype: SafeDType;
      shape: number[];
      data_offsets: [number, number];
    };
    if (!(dtype in BYTES)) throw new Error(`${name}: ${key} has unsupported dtype ${dtype}`);
    const expected = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    if (end > body.byteLength || end - start !== expected) {
      throw new Error(`${name}: ${key} lies outside the file or has the wrong size (truncated?)`);
    }
    tensors.set(key, { dtype, shape, bytes: body.subarray(start, end) });
  }
  return { tensors, metadata };
}

/** Serialises tensors and metadata; tensors are laid out in the map's order. */
export function serializeSafetensors(st: Safetensors): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: st.metadata };
  let offset = 0;
  for (const [key, t] of st.tensors) {
    header[key] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  // pad the header with spaces so the data starts 8-byte aligned, as the reference writer does
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(pad));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of st.tensors.values()) {
    out.set(t.bytes, at);
    at += t.bytes.length;
  }
  return out;
}

/** Decodes a raw F32 or F16 tensor to float32 (I8 needs its scales: see model_file.ts). */
export function decodeFloat(t: RawTensor): Float32Array {
  const out = new Float32Array(t.bytes.byteLength / BYTES[t.dtype]);
  decodeFloatInto(t, out);
  return out;
}

/** {@link decodeFloat} into `out` (as many values as the tensor holds), allocating nothing for F32. */
export function decodeFloatInto(t: RawTensor, out: Float32Array): void {
  const n = t.bytes.byteLength / BYTES[t.dtype];
  if (out.length !== n) throw new Error(`decodeFloatInto: ${out.length} floats for ${n} values`);
  if (t.dtype === "F32") new Uint8Array(out.buffer, out.byteOffset, 4 * n).set(t.bytes);
  else if (t.dtype === "F16") {
    // a view where the file aligns the values (the reference writer pads its header to 8 bytes)
    const b = t.bytes.byteOffset % 2 ? t.bytes.slice() : t.bytes;
    out.set(new Float16Array(b.buffer, b.byteOffset, n));
  } else throw new Error(`cannot decode ${t.dtype} as float`);
}

/** Encodes float32 values as F32 or F16 bytes. */
export function encodeFloat(data: Float32Array, dtype: "F32" | "F16"): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.slice().buffer);
  return new Uint8Array(Float16Array.from(data).buffer);
}
