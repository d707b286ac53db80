/**
 * A prepared compute pass: our kernels' dispatches with every pipeline, uniform block and bind
 * group made once, so that running them costs three encoder calls per dispatch and nothing else.
 *
 * Why: on an H200 under Deno, a dispatch through tfjs's `recordAndSubmit` (a uniform buffer and a
 * bind group per call, engine bookkeeping) costs about 120 µs of CPU, which for RRDBNet's hundreds
 * of dispatches is more than the GPU's work. Buffers are bound as regions (buffer, byte offset,
 * size), so parameters can live in one flat buffer that a single Adam dispatch updates.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type CustomProgram,
  getPipeline,
  packUniforms,
  type Uniform,
  type WebGPUBackendLike,
} from "./webgpu_program.ts";
import { mapRead, queueDone } from "./webgpu_map.ts";

/** The parts of tfjs-backend-webgpu 4.22's backend a pass records into (not public API). */
export interface PassBackend extends WebGPUBackendLike {
  commandEncoder: GPUCommandEncoder | null;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/** What one binding sees: a buffer, or `size` bytes of it from `offset` (a multiple of 256). */
export interface Region {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/**
 * Runs `make` inside WebGPU error scopes and returns what it made, with the error WebGPU reported
 * meanwhile (out of memory first, then validation; null: none). WebGPU reports those only
 * asynchronously: unchecked, a plan whose buffers could not be made computes garbage.
 */
export function underErrorScopes<T>(
  device: GPUDevice,
  make: () => T,
): { value: T; error: Promise<GPUError | null> } {
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  let value: T;
  try {
    value = make();
  } catch (e) {
    device.popErrorScope(), device.popErrorScope();
    throw e;
  }
  const [invalid, oom] = [device.popErrorScope(), device.popErrorScope()];
  return { value, error: Promise.all([invalid, oom]).then(([i, o]) => o ?? i) };
}

/** One way of running a dispatch: its pipeline, bindings and launch size. */
interface Launch {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

interface Dispatch extends Launch {
  label: string;
  /** Equivalent launches to choose from ({@link PlannedPass.tune}), and the group sharing the choice. */
  choices?: { launch: Launch; name: string }[];
  group?: string;
}

type Program = CustomProgram & { uniforms: string; params: Uniform[] };

/**
 * A buffer or binding larger than the device allows: thrown when a pass is prepared, before any
 * work, rather than leaving WebGPU to reject the binding later and the results garbage.
 */
export class BufferLimitError extends Error {
  constructor(readonly bytes: number, readonly limit: number, what: string) {
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    super(`${what} of ${mib(bytes)} exceeds this GPU's limit of ${mib(limit)}`);
    this.name = "BufferLimitError";
  }
}

/** A storage buffer (also a copy source and target) of at least `bytes`, in 16-byte steps. */
function storageBuffer(device: GPUDevice, bytes: number, usage = 0): GPUBuffer {
  const { maxBufferSize } = device.limits;
  if (bytes > maxBufferSize) throw new BufferLimitError(bytes, maxBufferSize, "a buffer");
  return device.createBuffer({
    size: Math.max(16, Math.ceil(bytes / 16) * 16),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | usage,
  });
}

/**
 * GPU memory that passes run one after another on one queue can share, as the Upscaler's plans for
 * the patch shapes of a tiled image do (each a full RRDBNet forward: 805 MiB for a 176x176 patch in
 * Winograd F(4x4), 268 of them its transformed filters). Scratch goes by slot: the k-th scratch
 * buffer each pass asks for is the arena's k-th, grown where a pass needs it larger (made for the
 * largest patch first, the others fit). A grown slot's old buffer stays with the passes bound to
 * it until the arena is freed, so sharing never changes a result, at worst the memory saved.
 * Contents made once (transformed filters, half-precision weights) are kept per owner and key.
 * Passes sharing an arena must not run at once (one queue, one submit after another, each reading
 * its output before the next run) and must not outlive it.
 */
export class PassArena {
  private readonly slots: GPUBuffer[] = [];
  private readonly retired: GPUBuffer[] = [];
  private readonly made = new Map<GPUBuffer, Map<string, GPUBuffer>>();

  constructor(readonly device: GPUDevice) {}

  /** Bytes the arena holds. */
  get bytes(): number {
    const kept = [...this.made.values()].flatMap((m) => [...m.values()]);
    return [...this.slots, ...this.retired, ...kept].reduce((sum, b) => sum + b.size, 0);
  }

  /** Scratch slot `index`, at least `bytes` large. */
  slot(index: number, bytes: number): GPUBuffer {
    const have = this.slots[index];
    if (have && have.size >= bytes) return have;
    const buffer = storageBuffer(this.device, bytes);
    if (have) this.retired.push(have);
    this.slots[index] = buffer;
    return buffer;
  }

  /** See {@link PlannedPass.kept}. */
  kept(owner: GPUBuffer, key: string, bytes: number): { buffer: GPUBuffer; made: boolean } {
    const byKey = this.made.get(owner) ?? new Map<string, GPUBuffer>();
    this.made.set(owner, byKey);
    const have = byKey.get(key);
    if (have) return { buffer: have, made: false };
    const buffer = storageBuffer(this.device, bytes);
    byKey.set(key, buffer);
    return { buffer, made: true };
  }

  /** Frees every buffer of the arena: the passes made with it must be disposed too. */
  dispose(): void {
    for (const b of [...this.slots, ...this.retired]) b.destroy();
    for (const m of this.made.values()) for (const b of m.values()) b.destroy();
    this.slots.length = this.retired.length = 0;
    this.made.clear();
  }
}

/** Dispatches in the first piece {@link PlannedPass.submit} submits (0: all in one). */
let firstSubmit = 32;

/**
 * How many dispatches {@link PlannedPass.submit} submits first (doubling after): 0 submits a pass
 * whole, as before (for comparison). Returns the previous value.
 */
export function setFirstSubmit(dispatches: number): number {
  if (!Number.isInteger(dispatches) || dispatches < 0) {
    throw new Error(`setFirstSubmit: a whole number of dispatches ≥ 0, not ${dispatches}`);
  }
  const previous = firstSubmit;
  firstSubmit = dispatches;
  return previous;
}

/** Our programs' dispatches, recorded once and replayed into one compute pass per {@link record}. */
export class PlannedPass {
  private readonly dispatches: Dispatch[] = [];
  private readonly owned: GPUBuffer[] = [];

  /** Scratch buffers taken from the arena so far: the next one is its slot of that number. */
  private slotsTaken = 0;

  /**
   * `arena`: where {@link buffer} and {@link kept} take their buffers, shared with the other
   * passes made with it (see {@link PassArena}); without one, the pass makes its own.
   */
  constructor(readonly backend: PassBackend, private readonly arena?: PassArena) {}

  /** Number of dispatches a {@link record} replays. */
  get size(): number {
    return this.dispatches.length;
  }

  /**
   * A storage buffer of at least `bytes` (rounded up to 16) for scratch: what every run writes
   * before it reads it (maps, Winograd's V and M). A new one, freed with the pass, or with an arena
   * its next slot, which other passes made with the arena use too.
   */
  buffer(bytes: number, usage = 0): GPUBuffer {
    if (this.arena && !usage) return this.arena.slot(this.slotsTaken++, bytes);
    const buffer = storageBuffer(this.backend.device, bytes, usage);
    this.owned.push(buffer);
    return buffer;
  }

  /**
   * A storage buffer for contents made once and read by every run (a transformed filter, a
   * half-precision copy of a weight), one per `owner` (the buffer it is made from) and `key`:
   * `made` says whether the caller has to fill it, false where a pass made with the same arena did.
   */
  kept(owner: GPUBuffer, key: string, bytes: number): { buffer: GPUBuffer; made: boolean } {
    if (this.arena) return this.arena.kept(owner, key, bytes);
    return { buffer: this.buffer(bytes), made: true };
  }

  /**
   * Appends one dispatch of `program`: `output` is binding 0, `inputs` follow, the uniforms last.
   * Returns a function that rewrites its uniforms (queued before the next submit).
   */
  add(program: Program, output: Region, inputs: Region[], label = program.name): (params: Uniform[]) => void {
    const { launch, uniform, shapes } = this.prepare(program, output, inputs);
    if (launch) this.dispatches.push({ ...launch, label });
    return (params) => this.backend.device.queue.writeBuffer(uniform, 0, packUniforms(shapes, params));
  }

  /**
   * Appends one dispatch that any of `programs` (the same computation, e.g. other tilings) can run:
   * the first until {@link tune} has timed them. Dispatches of one `group` (the same shapes) share
   * the choice.
   */
  addChoice(
    programs: { program: Program; name: string }[],
    output: Region,
    inputs: Region[],
    options: { label: string; group: string },
  ): void {
    const choices = programs.flatMap(({ program, name }) => {
      const { launch } = this.prepare(program, output, inputs);
      return launch ? [{ launch, name }] : [];
    });
    if (choices.length) this.dispatches.push({ ...choices[0].launch, ...options, choices });
  }

  /**
   * Times each group's choices on the GPU (its dispatches alone, median of `runs` after one to warm
   * up) and keeps the fastest. Values are garbage afterwards: tune before the first real run.
   * Returns the chosen name per group.
   */
  async tune(runs = 3): Promise<Record<string, string>> {
    const gpu = this.backend.device.features.has("timestamp-query");
    const groups = new Map<string, Dispatch[]>();
    for (const d of this.dispatches) {
      if (d.choices && d.group) groups.set(d.group, [...groups.get(d.group) ?? [], d]);
    }
    const chosen: Record<string, string> = {};
    for (const [group, members] of groups) {
      let best = { i: 0, ms: Infinity };
      for (let i = 0; i < members[0].choices!.length; i++) {
        for (const d of members) Object.assign(d, d.choices![i].launch);
        const ms = await this.medianTime((_, g) => g === group, { runs, gpu, warmup: 1 });
        if (ms < best.ms) best = { i, ms };
      }
      chosen[group] = members[0].choices![best.i].name;
    }
    this.choose(chosen);
    return chosen;
  }

  /** Runs each group's dispatches with the choice named (as {@link tune} returns them). */
  choose(chosen: Record<string, string>): void {
    for (const [group, name] of Object.entries(chosen)) {
      const members = this.dispatches.filter((d) => d.group === group);
      if (!members.length) throw new Error(`PlannedPass.choose: no group ${group}`);
      for (const d of members) {
        const choice = d.choices!.find((c) => c.name === name);
        if (!choice) throw new Error(`PlannedPass.choose: group ${group} has no choice ${name}`);
        Object.assign(d, choice.launch);
      }
    }
  }

  /** The choices of each group ({@link addChoice}). */
  get choiceGroups(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const d of this.dispatches) if (d.group && d.choices) out[d.group] = d.choices.map((c) => c.name);
    return out;
  }

  /** Pipeline, uniform block and bind group of one dispatch (no launch when its size is 0). */
  private prepare(program: Program, output: Region, inputs: Region[]) {
    const max = this.backend.device.limits.maxComputeWorkgroupsPerDimension;
    if (program.dispatch.some((d) => d > max)) {
      throw new Error(`${program.name}: dispatch [${program.dispatch}] exceeds the device limit ${max}`);
    }
    const limit = this.backend.device.limits.maxStorageBufferBindingSize;
    for (const r of [output, ...inputs]) {
      const bytes = r.size ?? r.buffer.size - (r.offset ?? 0);
      if (bytes > limit) throw new BufferLimitError(bytes, limit, `${program.name}: a binding`);
    }
    // Our shaders never read the shapes tfjs's uniform prelude declares: rank-1 placeholders.
    const shapes = [...inputs, output].map(() => [1]);
    const pipeline = getPipeline(this.backend, program, shapes);
    const data = packUniforms(shapes, program.params);
    const uniform = this.backend.device.createBuffer({
      size: data.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.backend.device.queue.writeBuffer(uniform, 0, data);
    this.owned.push(uniform);
    const regions: Region[] = [output, ...inputs, { buffer: uniform }];
    const bindGroup = this.backend.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: regions.map((r, binding) => ({ binding, resource: r })),
    });
    const launch: Launch | null = program.dispatch.every((d) => d > 0)
      ? { pipeline, bindGroup, workgroups: program.dispatch }
      : null;
    return { launch, uniform, shapes };
  }

  /**
   * Records the dispatches `from` (default 0) to `to` (exclusive, default all), those `only` keeps,
   * in order, into one compute pass of `encoder` (with `timestampWrites` at its ends, if given).
   */
  record(
    encoder: GPUCommandEncoder,
    options: {
      only?: (label: string, group?: string) => boolean;
      from?: number;
      to?: number;
      timestampWrites?: GPUComputePassTimestampWrites;
    } = {},
  ): void {
    const { only, from = 0, to = this.dispatches.length, timestampWrites } = options;
    const pass = encoder.beginComputePass(timestampWrites ? { timestampWrites } : undefined);
    for (const d of this.dispatches.slice(from, to)) {
      if (only && !only(d.label, d.group)) continue;
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(...d.workgroups);
    }
    pass.end();
  }

  /**
   * Records the dispatches [`from`, `to`) (default all) on tfjs's own encoder, after whatever tfjs
   * has recorded so far, and submits them in pieces that double in size from {@link setFirstSubmit}'s
   * (32 dispatches): wgpu's submit of a pass costs ~3 µs of CPU per dispatch (measured here: 2.8 ms
   * for the 1,049 of a Winograd forward, after 0.6-2 ms of recording), and the GPU would wait for all
   * of it; this way it starts after the first piece while the CPU, several times faster per dispatch
   * than the GPU, records the rest. `before` and `after` record work around them (a copy in, a read).
   */
  submit(
    options: {
      from?: number;
      to?: number;
      before?: (encoder: GPUCommandEncoder) => void;
      after?: (encoder: GPUCommandEncoder) => void;
    } = {},
  ): void {
    const { from = 0, to = this.dispatches.length, before, after } = options;
    const be = this.backend;
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    before?.(be.commandEncoder!);
    for (let start = from, size = firstSubmit; start < to; size *= 2) {
      const end = firstSubmit > 0 ? Math.min(to, start + size) : to;
      this.record(be.commandEncoder!, { from: start, to: end });
      start = end;
      if (start < to) {
        be.submitQueue();
        be.ensureCommandEncoderReady();
      }
    }
    after?.(be.commandEncoder!);
    be.submitQueue();
  }

  /**
   * Runs `work` on tfjs's own command encoder, after whatever tfjs has recorded so far (uploads,
   * kernels writing our inputs), then submits.
   */
  submitWithTfjs(work: (encoder: GPUCommandEncoder) => void): void {
    const be = this.backend;
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    work(be.commandEncoder!);
    be.submitQueue();
  }

  /**
   * GPU time by dispatch label: the dispatches of each label replayed alone, and all of them
   * (`all_ms`), median of `runs`. `clock` "gpu": timestamp queries at the ends of the compute pass;
   * "wall": submit to the queue's completion where the device has no `timestamp-query` (seen by
   * webgpu_map.ts's queueDone, without Deno 2.9.6's 10 ms wait where it can). Values are garbage
   * afterwards (a dispatch reads what others should have written first): for benchmarks only.
   */
  async profile(
    runs = 3,
  ): Promise<
    { kernels: { name: string; ms: number; count: number }[]; all_ms: number; clock: "gpu" | "wall" }
  > {
    const gpu = this.backend.device.features.has("timestamp-query");
    const time = (only?: (label: string) => boolean) => this.medianTime(only, { runs, gpu, warmup: 0 });
    const labels = new Map<string, number>();
    for (const d of this.dispatches) labels.set(d.label, (labels.get(d.label) ?? 0) + 1);
    const kernels = [];
    for (const [name, count] of labels) kernels.push({ name, ms: await time((l) => l === name), count });
    return {
      kernels: kernels.sort((a, b) => b.ms - a.ms),
      all_ms: await time(),
      clock: gpu ? "gpu" : "wall",
    };
  }

  /**
   * Milliseconds of one replay of every dispatch: the median of `runs` after one to warm up (see
   * {@link time}), or the first run alone where it took over a second: a warm-up matters where runs
   * are short, and long ones (a software renderer's) would make choosing slower than the work.
   * Leaves garbage in the pass's buffers.
   */
  async timeAll(runs = 3): Promise<number> {
    const gpu = this.backend.device.features.has("timestamp-query");
    const first = await this.time({}, gpu);
    if (first > 1000) return first;
    return this.medianTime(undefined, { runs, gpu, warmup: 0 });
  }

  /** Median of `runs` replays of the dispatches `only` keeps ({@link time}), after `warmup` untimed ones. */
  private async medianTime(
    only: ((label: string, group?: string) => boolean) | undefined,
    options: { runs: number; gpu: boolean; warmup: number },
  ): Promise<number> {
    for (let r = 0; r < options.warmup; r++) await this.time({ only }, options.gpu);
    const times: number[] = [];
    for (let r = 0; r < options.runs; r++) times.push(await this.time({ only }, options.gpu));
    return times.sort((a, b) => a - b)[options.runs >> 1];
  }

  /**
   * Milliseconds of one replay of the dispatches `options` selects (see {@link record}): between the
   * compute pass's timestamps when `gpu` (the device needs `timestamp-query`), else submit to completion.
   */
  async time(
    options: { only?: (label: string, group?: string) => boolean; from?: number; to?: number },
    gpu: boolean,
  ): Promise<number> {
    const device = this.backend.device;
    // what tfjs recorded and has not submitted yet (a new net's initialisation, uploads) runs first,
    // untimed: it once made a training step's first timing 8.2 s instead of ~0.2 s on llvmpipe
    this.submitWithTfjs(() => {});
    await queueDone(device);
    if (!gpu) {
      const t0 = performance.now();
      this.submitWithTfjs((encoder) => this.record(encoder, options));
      await queueDone(device);
      return performance.now() - t0;
    }
    const querySet = device.createQuerySet({ type: "timestamp", count: 2 });
    const resolved = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    try {
      this.submitWithTfjs((encoder) => {
        this.record(encoder, {
          ...options,
          timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
        });
        encoder.resolveQuerySet(querySet, 0, 2, resolved, 0);
        encoder.copyBufferToBuffer(resolved, 0, read, 0, 16);
      });
      await read.mapAsync(GPUMapMode.READ);
      const [t0, t1] = new BigUint64Array(read.getMappedRange());
      read.unmap();
      return Number(t1 - t0) / 1e6;
    } finally {
      querySet.destroy();
      resolved.destroy();
      read.destroy();
    }
  }

  /** Frees the pass's buffers. */
  dispose(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
    this.dispatches.length = 0;
  }
}

/**
 * What records dispatches: a {@link PlannedPass}, or something that defers to one (the training
 * plan lays its dispatches out first, then records them).
 */
export type PassLike = Pick<PlannedPass, "backend" | "buffer" | "kept" | "add" | "addChoice">;

/** A launch over `count` threads in workgroups of `size`, folded into 2D past the 65535 limit. */
export function dispatch1d(count: number, size = 64): [number, number, number] {
  const groups = Math.ceil(count / size);
  return [Math.min(groups, 65535), Math.ceil(groups / 65535), 1];
}

/** WGSL of a thread's flat index in a {@link dispatch1d} launch with workgroups of `size` (`gid`: the global id). */
export const flatIndex = (size = 64): string => `i32(gid.x + gid.y * ${65535 * size}u)`;

/**
 * A float32 tensor of `shape` with a copy of the first values of `buffer` (our buffers come in
 * 16-byte steps, and tfjs reads a tensor's buffer whole: a larger one is sliced).
 */
export function tensorFromBuffer<R extends tf.Rank>(buffer: GPUBuffer, shape: tf.ShapeMap[R]): tf.Tensor<R> {
  const count = (shape as number[]).reduce((a, b) => a * b, 1), floats = buffer.size / 4;
  if (floats === count) return tf.tensor({ buffer }, shape, "float32") as tf.Tensor<R>;
  return tf.tidy(() => tf.reshape(tf.slice(tf.tensor({ buffer }, [floats], "float32"), 0, count), shape));
}

/**
 * Reads GPU buffers back into host memory through one MAP_READ buffer kept between reads (grown
 * when a read needs more), where tfjs's `data()` first copies the tensor's buffer and takes a
 * staging buffer per read. A read while another is in flight gets a staging buffer of its own.
 */
export class ReadBack {
  private staging?: GPUBuffer;
  private busy = false;

  constructor(readonly backend: PassBackend) {}

  /**
   * The first `count` floats of `source` once the GPU has run what was submitted before and what
   * `record` records (into tfjs's encoder, ahead of the copy): one submit, one map.
   */
  async read(
    source: GPUBuffer,
    count: number,
    record?: (encoder: GPUCommandEncoder) => void,
  ): Promise<Float32Array> {
    const bytes = count * 4;
    const device = this.backend.device;
    const own = !this.busy;
    let staging = own ? this.staging : undefined;
    if (!staging || staging.size < bytes) {
      if (own) this.staging?.destroy();
      staging = device.createBuffer({
        size: Math.max(16, Math.ceil(bytes / 16) * 16),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      if (own) this.staging = staging;
    }
    if (own) this.busy = true;
    try {
      const be = this.backend;
      be.ensureCommandEncoderReady();
      be.endComputePassEncoder();
      record?.(be.commandEncoder!);
      be.commandEncoder!.copyBufferToBuffer(source, 0, staging, 0, bytes);
      be.submitQueue();
      // map and copy only what is read (the kept buffer may be larger)
      return await mapRead(staging, (range) => new Float32Array(range.slice(0)), { size: bytes });
    } catch (e) {
      // a staging buffer left mapped or lost is not used again
      if (own) this.staging = undefined;
      throw e;
    } finally {
      if (own) this.busy = false;
      if (staging !== this.staging) staging.destroy();
    }
  }

  /** Frees the kept staging buffer. */
  dispose(): void {
    this.staging?.destroy();
    this.staging = undefined;
  }
}
