/**
 * rrdb_cpu.c's layer records as the training step (wasm_train_plan.ts) and the tfjs convolution
 * kernels (wasm_conv.ts) write them: the ops, the `Layer` struct's fields in order, and the sizes
 * of the work areas its Winograd ops read.
 * @module
 */

/** rrdb_cpu.c's ops. */
export const OP = {
  conv: 0,
  winograd: 2,
  upsample: 1,
  upsampleGrad: 3,
  add: 4,
  wgradTransform: 5,
  wgradGemm: 6,
  wgradFinal: 7,
  pack: 8,
  adam: 9,
} as const;

/** rrdb_cpu.c's `Layer`, field by field (4 bytes each). */
const FIELDS = [
  "op",
  "in",
  "ics",
  "cin",
  "h",
  "w",
  "weight",
  "bias",
  "out",
  "ocs",
  "cout",
  "lrelu",
  "s0",
  "r1",
  "r1cs",
  "s1",
  "r2",
  "r2cs",
  "s2",
  "scratch",
  "scratchFloats",
  "rn",
  "mask",
  "maskCs",
  "maskFrom",
  "t0",
  "gscale",
  "vchannels",
  "tiles",
  "realCin",
  "grad",
  "biasGrad",
  "taps",
] as const;
/** A field of rrdb_cpu.c's `Layer`. */
export type Field = typeof FIELDS[number];
const FLOAT_FIELDS = new Set<Field>(["s0", "s1", "s2", "gscale"]);
/** Bytes of one record. */
export const RECORD_BYTES = 4 * FIELDS.length;
/** A record: its fields (absent: 0) and what it does, for profiles. */
export type LayerRecord = Partial<{ [K in Field]: number }> & { kind: string };

/** rrdb_cpu.c's NR (output channels per packed block) and MR (tiles per register block). */
export const NR = 8, MR = 6;
/** Below this the module keeps its stack (the linker's default layout); our data starts here. */
export const ARENA_BASE = 1 << 20;
/** OP_PACK's `lrelu`: pack the input-gradient conv's filters (flipped, channels swapped). */
export const PACK_INPUT_GRAD = 1;
/** OP_CONV's taps: 3x3 "same"; 2x2 at (+0, +1) and at (-1, 0) of the output pixel. */
export const TAPS = { same3x3: 0, ahead2x2: 1, behind2x2: 2 } as const;
/** The epilogue's activations (`lrelu`). */
export const ACT = { none: 0, leaky02: 1, relu: 2 } as const;

/** Writes `records` at byte offset `at` of `memory` (whose buffer must hold them). */
export function writeRecords(memory: WebAssembly.Memory, at: number, records: LayerRecord[]): void {
  const f = new Float32Array(memory.buffer), i32 = new Int32Array(memory.buffer);
  records.forEach((rec, k) => {
    const o = (at + k * RECORD_BYTES) / 4;
    i32.fill(0, o, o + FIELDS.length);
    FIELDS.forEach((field, j) => {
      const v = rec[field];
      if (v === undefined) return;
      if (FLOAT_FIELDS.has(field)) f[o + j] = v;
      else i32[o + j] = v;
    });
  });
}

/** Floats of OP_WINOGRAD's per-thread scratch for rows of `w` pixels of `cin` channels (4 x k). */
export function winogradScratchFloats(w: number, cin: number): number {
  return 36 * ((Math.ceil(w / 4)) * cin + 16) + 36 * MR * NR + 144;
}

/** Floats of the filter gradient's per-thread scratch (OP_WGRAD_TRANSFORM's two 6x6x4 tiles). */
export const WGRAD_SCRATCH_FLOATS = 2 * 144;

/** Floats of the filter gradient's V' area (rrdb_cpu.c's v_pos): `vchannels` inputs, `tiles` tiles. */
export function wgradVFloats(vchannels: number, tiles: number): number {
  return 36 * ((roundUp(vchannels, NR) / NR) * (tiles * NR + 16) + 16);
}

/** Floats of the filter gradient's M' area (rrdb_cpu.c's m_pos). */
export function wgradMFloats(cout: number, tiles: number): number {
  return 36 * (roundUp(cout, 4) * tiles + 16);
}

/** Floats of the filter gradient's dU' area. */
export function wgradDUFloats(cin: number, cout: number): number {
  return 36 * roundUp(cout, 4) * roundUp(cin, NR);
}

/** `c` rounded up to a multiple of `k`. */
export function roundUp(c: number, k: number): number {
  return Math.ceil(c / k) * k;
}

/** `bytes` rounded up to a cache line. */
export function align(bytes: number): number {
  return Math.ceil(bytes / 64) * 64;
}
