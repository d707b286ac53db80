/**
 * Reads PyTorch checkpoints (`torch.save` of a state dict) without Python, in both formats:
 * the zip format of PyTorch ≥ 1.6 (`NAME/data.pkl` plus one raw file per storage under
 * `NAME/data/`) and the legacy format (magic number, protocol, sys-info and state-dict pickles,
 * then the storage keys and each storage's raw bytes after an 8-byte element count).
 * Pickles are parsed by `pickleparser`; torch's globals are registered on its name registry.
 * @module
 */
import { unzipSync } from "fflate";
import { BufferReader, NameRegistry, Parser } from "pickleparser";
import { numel, type StateDict } from "../state_dict.ts";

/** Element types of torch storages, by the storage class name PyTorch pickles. */
const STORAGE_TYPES: Record<
  string,
  { bytes: number; read: (b: Uint8Array, n: number) => ArrayLike<number> }
> = {
  FloatStorage: { bytes: 4, read: (b, n) => new Float32Array(b.buffer, b.byteOffset, n) },
  HalfStorage: { bytes: 2, read: (b, n) => new Float16Array(b.buffer, b.byteOffset, n) },
  DoubleStorage: { bytes: 8, read: (b, n) => new Float64Array(b.buffer, b.byteOffset, n) },
  BFloat16Storage: {
    bytes: 2,
    // bfloat16 is the top half of a float32
    read: (b, n) => {
      const u16 = new Uint16Array(b.buffer, b.byteOffset, n);
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
      return new Float32Array(u32.buffer);
    },
  },
  LongStorage: {
    bytes: 8,
    read: (b, n) => Array.from(new BigInt64Array(b.buffer, b.byteOffset, n), Number),
  },
  IntStorage: { bytes: 4, read: (b, n) => new Int32Array(b.buffer, b.byteOffset, n) },
  ShortStorage: { bytes: 2, read: (b, n) => new Int16Array(b.buffer, b.byteOffset, n) },
  CharStorage: { bytes: 1, read: (b, n) => new Int8Array(b.buffer, b.byteOffset, n) },
  ByteStorage: { bytes: 1, read: (b, n) => new Uint8Array(b.buffer, b.byteOffset, n) },
  BoolStorage: { bytes: 1, read: (b, n) => new Uint8Array(b.buffer, b.byteOffset, n) },
};

/** The stand-ins registered for storage class globals (`torch.FloatStorage`) → type name. */
const STORAGE_CLASSES = new Map<unknown, string>(
  Object.keys(STORAGE_TYPES).map((type) => [
    function storageClass() {
      throw new Error(`torch.${type} cannot be built outside a tensor`);
    },
    type,
  ]),
);

/** A storage met in the pickle; its bytes arrive later (zip entry or legacy tail). */
interface StorageRef {
  key: string;
  type: string;
  numel: number;
  bytes?: Uint8Array;
  /** Legacy view storages: offset and length inside the root storage, in elements. */
  view?: { key: string; offset: number; numel: number };
}

/** A tensor met in the pickle, materialised once every storage has its bytes. */
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** Magic number of the legacy format, pickled with protocol 2 as a 10-byte LONG1. */
const LEGACY_MAGIC = Uint8Array.from("80028a0a6cfc9c46f9206aa850192e".match(/../g)!, (h) => parseInt(h, 16));

/** Whether the bytes start like a PyTorch checkpoint (zip or legacy). */
export function isPth(bytes: Uint8Array): boolean {
  return isZip(bytes) || LEGACY_MAGIC.every((b, i) => bytes[i] === b);
}

function isZip(bytes: Uint8Array): boolean {
  return bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 0x03 && bytes[3] === 0x04;
}

/**
 * Reads a `.pth` checkpoint into a flat map of float32 tensors under dotted keys
 * (`{params_ema: {conv_first.weight: …}}` becomes `params_ema.conv_first.weight`); values that
 * are not tensors (iteration counts, strings) are left out.
 */
export function readPth(bytes: Uint8Array, name = "checkpoint"): Promise<StateDict> {
  // parsing is synchronous; the promise keeps room for streaming large checkpoints later
  try {
    return Promise.resolve(isZip(bytes) ? readZip(bytes, name) : readLegacy(bytes, name));
  } catch (e) {
    return Promise.reject(e);
  }
}

function makeParser(
  name: string,
  onStorage: (pid: unknown[]) => StorageRef,
): Parser {
  const registry = new NameRegistry();
  for (const [cls, type] of STORAGE_CLASSES) {
    registry.register("torch", type, cls as () => never);
  }
  const rebuildTensor = (storage: StorageRef, offset: number, shape: number[], stride: number[]) => {
    if (!storage || typeof storage.key !== "string") {
      throw new Error(`${name}: a tensor's storage is not a torch storage (unsupported checkpoint)`);
    }
    return new TensorRef(storage, offset, [...shape], [...stride]);
  };
  registry
    .register("torch._utils", "_rebuild_tensor_v2", rebuildTensor)
    .register("torch._utils", "_rebuild_tensor", rebuildTensor)
    .register("torch._utils", "_rebuild_parameter", (data: unknown) => data)
    .register("torch._utils", "_rebuild_parameter_with_state", (data: unknown) => data)
    .register(
      "torch._tensor",
      "_rebuild_from_type_v2",
      (func: (...a: unknown[]) => unknown, _type: unknown, args: unknown[]) => func(...args),
    )
    // An OrderedDict is a Map; the parser fills it through SETITEMS.
    .register("collections", "OrderedDict", () => new Map());
  return new Parser({
    nameResolver: registry,
    persistentResolver: {
      resolve: (pid: unknown) => {
        if (!Array.isArray(pid) || pid[0] !== "storage") {
          throw new Error(`${name}: unsupported persistent id ${JSON.stringify(pid)}`);
        }
        return onStorage(pid);
      },
    },
    unpicklingTypeOfDictionary: "Map",
  });
}

function storageTypeName(name: string, t: unknown): string {
  const type = STORAGE_CLASSES.get(t);
  if (type) return type;
  const desc = (t as { __module__?: string; __name__?: string })?.__name__;
  throw new Error(`${name}: unsupported storage type ${desc ?? String(t)}`);
}

function readZip(bytes: Uint8Array, name: string): StateDict {
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes);
  } catch (e) {
    throw new Error(`${name}: broken zip archive (${(e as Error).message}; truncated?)`);
  }
  const pkl = Object.keys(files).find((k) => /^[^/]+\/data\.pkl$/.test(k));
  if (!pkl) throw new Error(`${name}: zip archive has no data.pkl (not a PyTorch checkpoint)`);
  const prefix = pkl.slice(0, -"data.pkl".length);
  const order = files[`${prefix}byteorder`];
  if (order && new TextDecoder().decode(order).trim() !== "little") {
    throw new Error(`${name}: big-endian checkpoints are not supported`);
  }
  const storages = new Map<string, StorageRef>();
  const parser = makeParser(name, (pid) => {
    const [, type, key, , count] = pid as [string, unknown, string, string, number];
    let ref = storages.get(key);
    if (!ref) {
      ref = { key, type: storageTypeName(name, type), numel: count };
      const data = files[`${prefix}data/${key}`];
      if (!data) throw new Error(`${name}: storage ${key} is missing from the archive`);
      ref.bytes = data;
      storages.set(key, ref);
    }
    return ref;
  });
  const obj = parsePickle(parser, new BufferReader(files[pkl]), name);
  return flatten(obj, name);
}

function readLegacy(bytes: Uint8Array, name: string): StateDict {
  if (!LEGACY_MAGIC.every((b, i) => bytes[i] === b)) {
    throw new Error(`${name}: not a PyTorch checkpoint (neither zip nor legacy magic number)`);
  }
  const reader = new BufferReader(bytes);
  // the magic number's LONG1 holds 10 bytes, more than pickleparser's 8-byte integers
  reader.skip(LEGACY_MAGIC.length);
  const storages = new Map<string, StorageRef>();
  const parser = makeParser(name, (pid) => {
    const [, type, key, , count, view] = pid as [string, unknown, string, string, number, unknown];
    let ref = storages.get(key);
    if (!ref) {
      ref = { key, type: storageTypeName(name, type), numel: count };
      storages.set(key, ref);
    }
    if (Array.isArray(view) && view.length === 3) {
      const [viewKey, offset, viewNumel] = view as [string, number, number];
      return { key: viewKey, type: ref.type, numel: viewNumel, view: { key, offset, numel: viewNumel } };
    }
    return ref;
  });
  const protocol = parsePickle(parser, reader, name);
  if (protocol !== 1001) throw new Error(`${name}: unsupported legacy protocol version ${protocol}`);
  const sysInfo = parsePickle(parser, reader, name) as Map<string, unknown>;
  if (sysInfo instanceof Map && sysInfo.get("little_endian") === false) {
    throw new Error(`${name}: big-endian checkpoints are not supported`);
  }
  const obj = parsePickle(parser, reader, name);
  const keys = parsePickle(parser, reader, name);
  if (!Array.isArray(keys)) throw new Error(`${name}: storage key list missing (truncated?)`);
  let at = reader.position;
  for (const key of keys as string[]) {
    const ref = storages.get(key);
    if (!ref) throw new Error(`${name}: storage ${key} is listed but never used`);
    const size = STORAGE_TYPES[ref.type].bytes;
    if (at + 8 > bytes.byteLength) throw new Error(`${name}: truncated at storage ${key}`);
    const count = Number(new DataView(bytes.buffer, bytes.byteOffset + at, 8).getBigInt64(0, true));
    at += 8;
    if (count !== ref.numel) {
      throw new Error(`${name}: storage ${key} holds ${count} elements, the pickle says ${ref.numel}`);
    }
    if (at + count * size > bytes.byteLength) throw new Error(`${name}: truncated in storage ${key}`);
    ref.bytes = bytes.subarray(at, at + count * size);
    at += count * size;
  }
  return flatten(obj, name, storages);
}

function parsePickle(parser: Parser, reader: BufferReader, name: string): unknown {
  try {
    return parser.read(reader);
  } catch (e) {
    const msg = (e as Error).message;
    throw new Error(msg.startsWith(name) ? msg : `${name}: broken pickle (${msg})`);
  }
}

/** Walks dicts, lists and tuples down to tensors, joining keys with dots. */
function flatten(obj: unknown, name: string, storages?: Map<string, StorageRef>): StateDict {
  const sd: StateDict = new Map();
  const walk = (v: unknown, key: string) => {
    if (v instanceof TensorRef) {
      sd.set(key, { shape: v.shape, data: materialise(v, key, name, storages) });
    } else if (v instanceof Map) {
      for (const [k, x] of v) walk(x, key ? `${key}.${k}` : String(k));
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, key ? `${key}.${i}` : String(i)));
    } else if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
      for (const [k, x] of Object.entries(v)) walk(x, key ? `${key}.${k}` : k);
    }
  };
  walk(obj, "");
  return sd;
}

function materialise(
  t: TensorRef,
  key: string,
  name: string,
  storages?: Map<string, StorageRef>,
): Float32Array {
  let storage = t.storage;
  let base = t.offset;
  if (storage.view) {
    const root = storages?.get(storage.view.key);
    if (!root) throw new Error(`${name}: ${key}: view of unknown storage ${storage.view.key}`);
    base += storage.view.offset;
    storage = root;
  }
  if (!storage.bytes) throw new Error(`${name}: ${key}: storage ${storage.key} has no data (truncated?)`);
  const values = storageValues(storage);
  const available = values.length;
  const n = numel(t.shape);
  const out = new Float32Array(n);
  if (n === 0) return out;
  if (t.stride.length !== t.shape.length || t.stride.some((s) => s < 0)) {
    throw new Error(`${name}: ${key}: unsupported strides [${t.stride}] for shape [${t.shape}]`);
  }
  let last = base;
  for (let d = 0; d < t.shape.length; d++) last += (t.shape[d] - 1) * t.stride[d];
  if (last >= available) {
    throw new Error(
      `${name}: ${key}: needs element ${last} of storage ${storage.key}, which holds ${available} (truncated?)`,
    );
  }
  if (isContiguous(t.shape, t.stride)) {
    for (let i = 0; i < n; i++) out[i] = values[base + i];
    return out;
  }
  // a strided view (a transposed tensor saved as is): gather in row-major order
  const idx = new Array(t.shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    let at = base;
    for (let d = 0; d < idx.length; d++) at += idx[d] * t.stride[d];
    out[i] = values[at];
    for (let d = idx.length - 1; d >= 0; d--) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

const decoded = new WeakMap<StorageRef, ArrayLike<number>>();

/** A storage's elements, decoded once even when many tensors view it. */
function storageValues(storage: StorageRef): ArrayLike<number> {
  let values = decoded.get(storage);
  if (!values) {
    const type = STORAGE_TYPES[storage.type];
    const available = Math.floor(storage.bytes!.byteLength / type.bytes);
    // an aligned copy, since zip entries and legacy storages sit at arbitrary offsets
    values = type.read(storage.bytes!.slice(0, available * type.bytes), available);
    decoded.set(storage, values);
  }
  return values;
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}
