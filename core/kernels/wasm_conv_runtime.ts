/**
 * What the tfjs-wasm convolutions on our CPU kernels (wasm_conv.ts) share: the pool of threads and
 * its memory, packed filters kept there between calls, each call's work space after them, and the
 * feature maps' layout and copies in and out of tfjs's memory.
 * @module
 */
import { KernelPool, MAX_MEMORY_BYTES } from "./wasm_pool.ts";
import {
  align,
  ARENA_BASE,
  type LayerRecord,
  NR,
  RECORD_BYTES,
  roundUp,
  writeRecords,
} from "./wasm_layer.ts";

/** Options for `useWasmConvKernels`. */
export interface WasmConvOptions {
  /** Threads of the kernels (default: the logical cores, at most 16). */
  threads?: number;
  /**
   * Memory for packed filters kept between calls (default {@link FILTER_CACHE_BYTES}): VGG19's
   * frozen filters are packed once, the discriminator's once per update.
   */
  filterCacheBytes?: number;
}

/** Default memory for packed filters kept between calls: VGG19 to conv5_4 takes some 640 MB. */
export const FILTER_CACHE_BYTES = 1024 ** 3;

/**
 * Packed filters kept in the kernels' memory from ARENA_BASE on, by content and packing, least
 * recently used first out. By content, because tfjs hands a conv's gradient a copy of its filter
 * (the tape keeps copies of a kernel's inputs), a new tensor each time: the discriminator's three
 * input gradients of a step share one packing. A tensor's content key is computed once (tfjs never
 * changes a tensor's data: a variable's update makes a new one). Evicted blocks are reused by size:
 * a discriminator's next update packs into its last one's.
 */
class PackedFilters {
  /** Where the blocks end: each call's work space starts there. */
  top = ARENA_BASE;
  private readonly keys = new WeakMap<object, string>();
  private readonly blocks = new Map<string, { ptr: number; floats: number }>();
  private readonly free = new Map<number, number[]>();

  constructor(readonly bytes: number) {}

  /**
   * The block of `floats` for `filter`'s values packed as `kind`, and whether it must be packed
   * now; null when it would not fit the budget at all.
   */
  get(
    filter: { dataId: object; shape: number[] },
    values: () => Float32Array,
    kind: string,
    floats: number,
  ): { ptr: number; fresh: boolean } | null {
    if (4 * floats > this.bytes) return null;
    let content = this.keys.get(filter.dataId);
    if (content === undefined) {
      this.keys.set(filter.dataId, content = `${filter.shape} ${fingerprint(values())}`);
    }
    const key = `${content} ${kind}`, hit = this.blocks.get(key);
    if (hit) {
      this.blocks.delete(key);
      this.blocks.set(key, hit);
      return { ptr: hit.ptr, fresh: false };
    }
    const ptr = this.allocate(floats);
    this.blocks.set(key, { ptr, floats });
    return { ptr, fresh: true };
  }

  private allocate(floats: number): number {
    for (;;) {
      const reused = this.free.get(floats)?.pop();
      if (reused !== undefined) return reused;
      if (this.top - ARENA_BASE + 4 * floats <= this.bytes) {
        const ptr = this.top;
        this.top = align(this.top + 4 * floats);
        return ptr;
      }
      const oldest = this.blocks.keys().next();
      if (oldest.done) break;
      const block = this.blocks.get(oldest.value)!;
      this.blocks.delete(oldest.value);
      this.free.set(block.floats, [...this.free.get(block.floats) ?? [], block.ptr]);
    }
    // all evicted, none of this size: start again from the bottom
    this.free.clear();
    this.top = align(ARENA_BASE + 4 * floats);
    return ARENA_BASE;
  }
}

let options: WasmConvOptions = {};
let runtime: { pool: KernelPool; filters: PackedFilters } | undefined;

/**
 * Two 32-bit multiplicative hashes of the values' bits (4 ms for a 512x512 3x3 filter here, once
 * per tensor): two filters of one shape share a key only where both collide.
 */
function fingerprint(values: Float32Array): string {
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  let a = 0x811c9dc5 ^ bits.length, b = 0x27d4eb2f;
  for (let i = 0; i < bits.length; i++) {
    const v = bits[i];
    a = Math.imul(a ^ v, 0x01000193);
    b = Math.imul(b ^ v, 0x5bd1e995);
    b ^= b >>> 15;
  }
  return `${(a >>> 0).toString(16)}${(b >>> 0).toString(16).padStart(8, "0")}`;
}

/** Sets the options of the runtime made next (see {@link disposeRuntime}). */
export function configureRuntime(wanted: WasmConvOptions): void {
  options = wanted;
}

/** Stops the threads and forgets the packed filters. */
export function disposeRuntime(): void {
  runtime?.pool.dispose();
  runtime = undefined;
}

/**
 * A batch of n maps in the kernels' memory, each with a zero border and sides rounded up to
 * `round` (4 for Winograd's tiles; the rest zero): one after another, or side by side in one wide
 * map 4 zero columns apart (`stacked`), so that small maps make long rows of Winograd tiles and the
 * packed filters stream through once per row of tiles, not once per image's row.
 */
export class Maps {
  readonly hp: number;
  readonly wp: number;
  /** Pixels per padded row. */
  readonly pw: number;
  /** Floats from one image's padded origin to the next's. */
  readonly next: number;
  readonly floats: number;
  constructor(
    /** Byte offset of image 0's padded origin. */
    readonly ptr: number,
    readonly n: number,
    h: number,
    w: number,
    /** Floats per pixel. */
    readonly cs: number,
    readonly stacked: boolean,
    round: number,
  ) {
    this.hp = roundUp(h, round), this.wp = roundUp(w, round);
    this.pw = stacked ? n * (this.wp + 4) - 2 : this.wp + 2;
    // 4 spare zero rows below, as the other plans give their maps
    const image = (this.hp + 6) * this.pw * cs;
    this.next = stacked ? (this.wp + 4) * cs : image;
    this.floats = stacked ? image : n * image;
  }
  /** Float index of pixel (y, x) of image i's interior. */
  pixel(i: number, y: number, x: number): number {
    return this.ptr / 4 + i * this.next + ((y + 1) * this.pw + 1 + x) * this.cs;
  }
  /** The maps as the kernels' records see them: padded origin (bytes) and width of each. */
  strips(): { ptr: number; w: number }[] {
    if (this.stacked) return [{ ptr: this.ptr, w: this.pw - 2 }];
    return Array.from({ length: this.n }, (_, i) => ({ ptr: this.ptr + 4 * i * this.next, w: this.wp }));
  }
  /** Calls `row` for each of the n x h rows of the images, in memory order. */
  eachRow(h: number, row: (i: number, y: number) => void): void {
    if (this.stacked) { for (let y = 0; y < h; y++) for (let i = 0; i < this.n; i++) row(i, y); }
    else for (let i = 0; i < this.n; i++) for (let y = 0; y < h; y++) row(i, y);
  }
}

/** Maps at most this wide are stacked side by side (see {@link Maps}). */
const STACK_MAX_SIDE = 16;

/** The kernels' threads, memory and packed filters (made on first use; the threads stop when idle). */
export function kernels(): { pool: KernelPool; filters: PackedFilters } {
  return runtime ??= {
    pool: new KernelPool(options),
    filters: new PackedFilters(options.filterCacheBytes ?? FILTER_CACHE_BYTES),
  };
}

/**
 * Starts a call that runs with a packed filter: the kernels, the call's work space (after the kept
 * filters), where `filter`'s values packed as `kind` (`floats` of them) live, in the cache or in the
 * work space when they cannot be kept, and whether the call must pack them.
 */
export function withPackedFilter(
  filter: { dataId: object; shape: number[] },
  values: () => Float32Array,
  kind: string,
  floats: number,
): { pool: KernelPool; arena: Arena; weight: number; pack: boolean } {
  const { pool, filters } = kernels();
  const cached = filters.get(filter, values, kind, floats);
  const arena = new Arena(filters.top);
  const weight = cached?.ptr ?? arena.take(floats);
  return { pool, arena, weight, pack: !cached || cached.fresh };
}

/** A conv's bias as the kernels read it at byte offset `at`: cout values, zeros up to a block of NR. */
export function writeBias(f: Float32Array, at: number, cout: number, values?: Float32Array): void {
  f.fill(0, at / 4, at / 4 + roundUp(cout, NR));
  if (values) f.set(values, at / 4);
}

/** Hands out the kernels' memory for one call, from `at` on. */
export class Arena {
  constructor(public at: number) {}
  take(floats: number): number {
    const ptr = this.at;
    this.at = align(this.at + 4 * floats);
    return ptr;
  }
  /**
   * n maps of h x w pixels of `c` channels (`cs` floats apart: default c rounded up to 4), for
   * Winograd (sides rounded up to 4, narrow ones stacked) or for the direct convolution (`direct`).
   */
  maps(n: number, h: number, w: number, c: number, o: { cs?: number; direct?: boolean } = {}): Maps {
    const stacked = !o.direct && n > 1 && roundUp(w, 4) <= STACK_MAX_SIDE;
    const maps = new Maps(this.at, n, h, w, o.cs ?? roundUp(c, 4), stacked, o.direct ? 1 : 4);
    this.take(maps.floats);
    return maps;
  }
  /** Reserves what was taken, writes the records after it and runs them. */
  run(p: KernelPool, records: LayerRecord[], fill: (f: Float32Array) => void): void {
    const at = this.take(records.length * RECORD_BYTES / 4);
    try {
      if (this.at > MAX_MEMORY_BYTES) {
        throw new Error(
          `a convolution on the CPU kernels needs ${(this.at / 1024 ** 3).toFixed(1)} GiB, more than ` +
            `wasm's 4 GiB: use a smaller batch`,
        );
      }
      p.reserve(this.at);
      fill(p.floats());
      writeRecords(p.memory, at, records);
      p.runSync({ layers: at, count: records.length, stride: RECORD_BYTES });
    } catch (e) {
      // a filter this call was to pack is in the cache unpacked: start again with none
      disposeRuntime();
      throw e;
    }
  }
}

/**
 * Writes every float of `maps`: the NHWC values of `src` (shape [n, h, w, c]) in the images'
 * interiors, zeros elsewhere (borders, gaps, padding channels, rows and columns past the sides).
 */
export function copyIn(src: Float32Array, shape: number[], f: Float32Array, maps: Maps): void {
  const [, h, w, c] = shape, cs = maps.cs;
  let zeroFrom = maps.ptr / 4;
  maps.eachRow(h, (i, y) => {
    const row = maps.pixel(i, y, 0), from = (i * h + y) * w * c;
    f.fill(0, zeroFrom, row);
    if (cs === c) f.set(src.subarray(from, from + w * c), row);
    else {
      for (let x = 0; x < w; x++) {
        f.set(src.subarray(from + x * c, from + (x + 1) * c), row + x * cs);
        f.fill(0, row + x * cs + c, row + (x + 1) * cs);
      }
    }
    zeroFrom = row + w * cs;
  });
  f.fill(0, zeroFrom, maps.ptr / 4 + maps.floats);
}

/** The interior values of `maps` (pixels `c` floats apart) as NHWC [n, h, w, c] into `dst`. */
export function copyOut(f: Float32Array, maps: Maps, shape: number[], dst: Float32Array): void {
  const [, h, w, c] = shape;
  maps.eachRow(h, (i, y) => {
    const row = maps.pixel(i, y, 0);
    dst.set(f.subarray(row, row + w * c), (i * h + y) * w * c);
  });
}
