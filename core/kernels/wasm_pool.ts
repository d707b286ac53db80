/**
 * The CPU kernels' runtime: rrdb_cpu.c's module on one shared WebAssembly memory, and a pool of
 * workers (wasm_worker.ts) that run a list of layers together, each on its band of rows. Where
 * workers are not available (Deno Deploy) it says so and runs one thread on the calling thread.
 *
 * Workers start with the first run and stop after {@link IDLE_MS} without one: a live Deno worker
 * keeps its program running, so a program that forgets dispose() still ends, that much later.
 * @module
 */
import { SOURCE_SHA256, WASM_BASE64 } from "./wasm/rrdb_cpu_wasm.ts";
import { decodeBase64 } from "./wasm/digest.ts";
import { CTRL, CTRL_SLOTS, type RunRequest, type WorkerInit } from "./wasm_barrier.ts";

const PAGE = 65536;
/** wasm32's ceiling, which the module declares as its memory's maximum. */
export const MAX_MEMORY_BYTES = 4 * 1024 ** 3;

let compiled: WebAssembly.Module | undefined;

/** Idle time after which the workers stop (the next run starts them again, in some 10 ms). */
export const IDLE_MS = 2000;

/** The compiled module (compiled once per process). */
export function kernelsModule(): WebAssembly.Module {
  return compiled ??= new WebAssembly.Module(decodeBase64(WASM_BASE64));
}

/** The digest of the C source the embedded module was built from. */
export const KERNELS_SOURCE_SHA256 = SOURCE_SHA256;

/** Options for {@link KernelPool}. */
export interface KernelPoolOptions {
  /** Threads (default: the logical cores, at most 16). */
  threads?: number;
  /** Run on the calling thread even where workers exist (tests). */
  inline?: boolean;
}

/** The shared memory and the threads that run layers on it. Dispose it: workers keep running. */
export class KernelPool {
  readonly memory: WebAssembly.Memory;
  readonly threads: number;
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(4 * CTRL_SLOTS));
  private readonly error = new Uint8Array(new SharedArrayBuffer(1024));
  private workers: Worker[] = [];
  private runLayer?: (layer: number, t: number, threads: number) => void;
  private busy = false;
  private disposed = false;
  private idle?: ReturnType<typeof setTimeout>;

  constructor(options: KernelPoolOptions = {}) {
    const module = kernelsModule();
    this.memory = new WebAssembly.Memory({ initial: 32, maximum: MAX_MEMORY_BYTES / PAGE, shared: true });
    let threads = Math.max(
      1,
      Math.min(16, Math.floor(options.threads ?? navigator.hardwareConcurrency ?? 1)),
    );
    if (!options.inline && typeof Worker === "undefined") {
      console.warn("CPU kernels: no Worker in this runtime, running on one thread (slower, same results)");
    }
    if (options.inline || typeof Worker === "undefined") {
      threads = 1;
      const instance = new WebAssembly.Instance(module, { env: { memory: this.memory } });
      this.runLayer = instance.exports.run_layer as typeof this.runLayer;
    }
    this.threads = threads;
  }

  /** The workers, started if they are not running. */
  private start(): Worker[] {
    clearTimeout(this.idle);
    if (!this.workers.length) {
      const module = kernelsModule();
      for (let t = 0; t < this.threads; t++) {
        const w = new Worker(new URL("./wasm_worker.ts", import.meta.url), { type: "module" });
        const init: WorkerInit = {
          module,
          memory: this.memory,
          ctrl: this.ctrl,
          error: this.error,
          t,
          threads: this.threads,
        };
        w.postMessage(init);
        this.workers.push(w);
      }
    }
    return this.workers;
  }

  /** Stops the workers after IDLE_MS unless a run comes first. */
  private stopWhenIdle(): void {
    clearTimeout(this.idle);
    const timer = setTimeout(() => this.stopWorkers(), IDLE_MS);
    // the timer alone must not keep a program alive (the workers do, until it fires)
    Deno.unrefTimer(timer);
    this.idle = timer;
  }

  private stopWorkers(): void {
    clearTimeout(this.idle);
    for (const w of this.workers.splice(0)) w.terminate();
  }

  /** Makes the memory at least `bytes` long. */
  reserve(bytes: number): void {
    const gib = (bytes / 1024 ** 3).toFixed(1);
    if (bytes > MAX_MEMORY_BYTES) {
      throw new Error(
        `the CPU kernels need ${gib} GiB for this patch, more than wasm's 4 GiB: use smaller tiles`,
      );
    }
    const have = this.memory.buffer.byteLength;
    if (bytes <= have) return;
    try {
      this.memory.grow(Math.ceil((bytes - have) / PAGE));
    } catch (e) {
      throw new Error(`the CPU kernels could not grow their memory to ${gib} GiB (${(e as Error).message})`);
    }
  }

  /** A float view of the memory as it is now (growing the memory detaches older views' lengths). */
  floats(): Float32Array {
    return new Float32Array(this.memory.buffer);
  }

  /** Fails the run in progress (see dispose). */
  private failRun?: (e: Error) => void;

  /**
   * How many layers of the run in progress (or the last one) the threads have done, for progress
   * ({@link run} resets it). A run on the calling thread (no workers) blocks it: only its end shows.
   */
  get layersDone(): number {
    return Atomics.load(this.ctrl, CTRL.layers);
  }

  /** Runs `count` layer records from byte offset `layers`; aborting stops between layers. One run at a time. */
  async run(request: RunRequest, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.claim();
    Atomics.store(this.ctrl, CTRL.layers, 0);
    try {
      if (this.runInline(request)) return;
      Atomics.store(this.ctrl, CTRL.abort, 0);
      const onAbort = () => Atomics.store(this.ctrl, CTRL.abort, 1);
      signal?.addEventListener("abort", onAbort);
      try {
        type Reply = { done?: boolean; aborted?: boolean; error?: string };
        // the first failure settles the run: the other threads may wait at a barrier it never reaches
        let fail: (e: Error) => void;
        const failed = new Promise<never>((_, reject) => fail = reject);
        // disposed meanwhile (its workers stopped): the run fails rather than waiting forever
        this.failRun = (e) => fail(e);
        const onError = (message: string) => {
          this.dispose();
          fail(new Error(`CPU kernels: ${message}`));
        };
        const replies = await Promise.race([
          failed,
          Promise.all(
            this.start().map((w) =>
              new Promise<Reply>((resolve) => {
                w.onmessage = (e: MessageEvent<Reply>) =>
                  e.data.error ? onError(e.data.error) : resolve(e.data);
                w.onerror = (e) => {
                  e.preventDefault();
                  onError(e.message);
                };
                w.postMessage(request);
              })
            ),
          ),
        ]);
        if (replies.some((r) => r.aborted)) signal!.throwIfAborted();
      } finally {
        this.failRun = undefined;
        signal?.removeEventListener("abort", onAbort);
        if (!this.disposed) this.stopWhenIdle();
      }
    } finally {
      this.busy = false;
    }
  }

  /**
   * {@link run}, blocking the calling thread until the layers are done: for callers that must
   * return synchronously (tfjs kernels). Nothing else on this thread runs meanwhile, and a worker
   * that dies without reporting (killed) would leave it waiting: use it for short runs.
   */
  runSync(request: RunRequest): void {
    this.claim();
    try {
      if (this.runInline(request)) return;
      const ctrl = this.ctrl;
      Atomics.store(ctrl, CTRL.abort, 0);
      Atomics.store(ctrl, CTRL.done, 0);
      Atomics.store(ctrl, CTRL.failed, 0);
      for (const w of this.start()) w.postMessage({ ...request, sync: true });
      // a failed thread reports at once; the others may wait at a barrier it never reaches
      for (let done; (done = Atomics.load(ctrl, CTRL.done)) < this.threads;) {
        if (Atomics.load(ctrl, CTRL.failed)) break;
        Atomics.wait(ctrl, CTRL.done, done);
      }
      if (Atomics.load(ctrl, CTRL.failed)) {
        const end = this.error.indexOf(0);
        const message = new TextDecoder().decode(this.error.slice(0, end < 0 ? undefined : end));
        this.dispose();
        throw new Error(`CPU kernels: ${message}`);
      }
    } finally {
      this.busy = false;
      if (!this.disposed) this.stopWhenIdle();
    }
  }

  /** Marks the pool busy for a run, if it may start one. */
  private claim(): void {
    if (this.disposed) throw new Error("CPU kernels: the pool was disposed (or a worker failed)");
    if (this.busy) throw new Error("CPU kernels: one run at a time");
    this.busy = true;
  }

  /** Runs the request on this thread where the pool has no workers; false where it has. */
  private runInline(request: RunRequest): boolean {
    if (!this.runLayer) return false;
    for (let i = 0; i < request.count; i++) {
      this.runLayer(request.layers + i * request.stride, 0, 1);
      Atomics.store(this.ctrl, CTRL.layers, i + 1);
    }
    return true;
  }

  /** Stops the workers; a run in progress fails. */
  dispose(): void {
    this.disposed = true;
    this.stopWorkers();
    this.failRun?.(new Error("CPU kernels: the pool was disposed during a run"));
  }
}
