/**
 * Chooses and starts a tfjs backend: `webgpu` only on a real GPU adapter (a software adapter such
 * as Mesa llvmpipe is far slower than XNNPACK), otherwise `wasm`; `cpu` on request.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-webgpu";
import { BackendWasm, setThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { hasShaderF16, useWebGPUWithF16 } from "./kernels/webgpu_f16.ts";
import { readTfjsTensorsEarly } from "./kernels/webgpu_tfjs_reads.ts";
import type { WebGPUBackendLike } from "./kernels/webgpu_program.ts";
import threadedSimdFactory from "@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.js";
import { wasmWorkerContents } from "@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js";

/** The backends this project runs on. */
export type BackendName = "webgpu" | "wasm" | "cpu";

/** Which backend runs, and why it was chosen. */
export interface BackendInfo {
  name: BackendName;
  /** The GPU adapter's description, for webgpu. */
  adapter?: string;
  /** Why this backend: "requested" or the reason automatic choice gave. */
  reason: string;
  /** Threads of the wasm backend: our CPU kernels' (see {@link backendThreads}). */
  threads?: number;
  /** Threads of tfjs's own wasm ops (XNNPACK's pool), where fewer than `threads` ({@link BackendOptions.opsThreads}). */
  opsThreads?: number;
  /** Whether the webgpu device compiles half-precision shaders (`shader-f16`). */
  f16?: boolean;
}

/** Options of {@link initBackend}. */
export interface BackendOptions {
  /**
   * Threads for the wasm backend (our CPU kernels and XNNPACK's pool, at most 8); default: the
   * logical cores. 1 runs tfjs's stock single-threaded SIMD module, more the threaded one through
   * Node worker threads.
   */
  threads?: number;
  /**
   * Threads for tfjs's own wasm ops alone (default `threads`), for work that runs on our CPU kernels
   * with tfjs's ops only around them (the upscale tool, the endpoint): 1 starts tfjs's
   * single-threaded module in ~8 ms, where the threaded one took ~280 ms here (Emscripten starts 8
   * workers, each instantiating the module), while the kernels still get `threads`.
   */
  opsThreads?: number;
}

/** Describes the WebGPU adapter, or says why there is none. */
export async function probeWebGPU(): Promise<
  { adapter?: string; software: boolean; f16?: boolean; why?: string }
> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  if (!gpu) return { software: true, why: "no WebGPU in this runtime" };
  await quietMesa();
  const adapter = await gpu.requestAdapter();
  if (!adapter) return { software: true, why: "no WebGPU adapter" };
  const info = adapter.info;
  const description = info.description || `${info.vendor} ${info.device}`.trim();
  const software = info.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(description);
  return { adapter: description, software, f16: adapter.features.has("shader-f16") };
}

/**
 * Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid" on every adapter request when the variable
 * is unset: set it to /tmp where the permissions allow it without a prompt, before asking.
 */
async function quietMesa(): Promise<void> {
  const perm = await Deno.permissions.query({ name: "env", variable: "XDG_RUNTIME_DIR" });
  if (perm.state === "granted" && !Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
}

/** Starts `name`, or picks one when absent. Throws if the requested backend cannot start. */
export async function initBackend(name?: BackendName, options: BackendOptions = {}): Promise<BackendInfo> {
  let reason = "requested";
  let adapter: string | undefined;
  if (!name) {
    const probe = await probeWebGPU();
    adapter = probe.adapter;
    if (probe.adapter && !probe.software) {
      name = "webgpu";
      reason = `GPU adapter: ${probe.adapter}`;
    } else {
      name = "wasm";
      reason = probe.adapter ? `only a software adapter (${probe.adapter})` : probe.why!;
    }
  }
  let threads: number | undefined;
  if (name === "webgpu") {
    useWebGPUWithF16(); // before webgpu first starts: its device must ask for shader-f16
    readTfjsTensorsEarly();
  }
  if (name === "wasm") {
    const dist = new URL("../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url);
    setWasmPaths(dist.href);
    const clamp = (n: number) => Math.max(1, Math.min(8, Math.floor(n)));
    threads = clamp(options.threads ?? navigator.hardwareConcurrency ?? 1);
    const ops = Math.min(threads, clamp(options.opsThreads ?? threads));
    setThreadsCount(ops);
    useWasmThreads(ops, dist);
  }
  if (!(await tf.setBackend(name)) || tf.getBackend() !== name) {
    throw new Error(`the ${name} backend could not start${name === "webgpu" ? " (no WebGPU adapter?)" : ""}`);
  }
  await tf.ready();
  if (name === "webgpu" && !adapter) adapter = (await probeWebGPU()).adapter;
  let opsThreads: number | undefined;
  if (name === "wasm") {
    const ops = (tf.backend() as BackendWasm).wasm.tfjs.getThreadsCount();
    if (ops < threads!) opsThreads = ops;
    else threads = ops;
    kernelThreads = threads;
  }
  const f16 = name === "webgpu" ? hasShaderF16(tf.backend() as unknown as WebGPUBackendLike) : undefined;
  return { name, adapter, reason, threads, ...(opsThreads ? { opsThreads } : {}), f16 };
}

/** One line for the logs: the backend, its adapter or threads, what runs the Upscaler's net, and why. */
export function describeBackend(info: BackendInfo): string {
  const adapter = info.name === "webgpu" && info.adapter
    ? ` on ${info.adapter}, our prepared WGSL passes${info.f16 ? " (shader-f16)" : ""}`
    : "";
  const ops = info.opsThreads ? `; tfjs's own ops on ${info.opsThreads}` : "";
  const threads = info.name === "wasm"
    ? `, ${info.threads} thread${info.threads === 1 ? "" : "s"}, our CPU kernels (wasm SIMD, Winograd)${ops}`
    : "";
  return `${info.name}${adapter}${threads} (${info.reason})`;
}

/** Threads our CPU kernels run on with the wasm backend as {@link initBackend} started it. */
let kernelThreads: number | undefined;

/**
 * Threads for our CPU kernels: on the wasm backend what {@link initBackend} was given (tfjs's own
 * pool where it was started otherwise), else the logical cores.
 */
export function backendThreads(): number {
  if (tf.getBackend() === "wasm") {
    return kernelThreads ?? (tf.backend() as BackendWasm).wasm.tfjs.getThreadsCount();
  }
  return navigator.hardwareConcurrency ?? 1;
}

/** tfjs's own factory for the wasm backend (single-threaded under Deno), kept to switch back to. */
let stockWasmFactory: (() => tf.KernelBackend | Promise<tf.KernelBackend>) | null = null;
let wasmThreads = 1;

/**
 * Makes the `wasm` backend start with `threads` threads. tfjs never uses threads under Deno: its
 * `WASM_HAS_MULTITHREAD_SUPPORT` flag is false whenever `IS_NODE` is (Deno has `process`), and
 * forcing it fails because Emscripten's Node path hands `node:worker_threads` a blob: URL, which
 * Deno refuses. So this registers a factory that instantiates the threaded SIMD module itself:
 * its pthread workers run the worker script with `eval: true`, the glue code travels as a string
 * instead of a file, and the core count is doubled because tfjs halves it (assuming hyper-threading)
 * and caps the pool by it.
 */
function useWasmThreads(threads: number, dist: URL): void {
  if (threads === wasmThreads && tf.findBackendFactory("wasm")) return;
  stockWasmFactory ??= tf.findBackendFactory("wasm");
  tf.removeBackend("wasm");
  wasmThreads = threads;
  const factory = threads === 1 ? stockWasmFactory! : () => startThreadedWasm(threads, dist);
  tf.registerBackend("wasm", factory, 2);
}

async function startThreadedWasm(threads: number, dist: URL): Promise<tf.KernelBackend> {
  const nodeGlobals = ["location", "self", "postMessage", "importScripts", "performance", "Worker"];
  const readFile = 'importScripts:function(f){(0,eval)(fs.readFileSync(f,"utf8")+"//# sourceURL="+f)}';
  if (!wasmWorkerContents.includes(readFile)) throw new Error("unexpected tfjs-backend-wasm worker script");
  // Deno's worker globals have getters where Emscripten assigns; the glue arrives as source text.
  const workerSource =
    `for (const k of ${JSON.stringify(nodeGlobals)}) Object.defineProperty(globalThis, k, ` +
    "{ value: globalThis[k], writable: true, configurable: true, enumerable: true });\n" +
    wasmWorkerContents.replace(/\n/g, "\\n").replace(readFile, "importScripts:function(src){(0,eval)(src)}");
  const glue = "var WasmBackendModuleThreadedSimd = " + threadedSimdFactory.toString();
  const binary = await (await fetch(new URL("tfjs-backend-wasm-threaded-simd.wasm", dist))).arrayBuffer();
  const webWorker = globalThis.Worker;
  const { Worker: NodeWorker } = await import("node:worker_threads");
  class EvalWorker extends NodeWorker {
    constructor(source: string) {
      super(source, { eval: true });
    }
  }
  try {
    const factory = threadedSimdFactory as unknown as (config: object) => Promise<any>;
    const module = await factory({
      mainScriptUrlOrBlob: glue,
      // Emscripten's Node path has just set the global Worker to Node's; make it evaluate source.
      locateFile: (path: string) => {
        if (!path.endsWith(".worker.js")) return new URL(path, dist).href;
        (globalThis as any).Worker = EvalWorker;
        return workerSource;
      },
      instantiateWasm(imports: any, receive: (i: WebAssembly.Instance, m: WebAssembly.Module) => void) {
        imports.env.emscripten_num_logical_cores = () => 2 * threads;
        WebAssembly.instantiate(binary, imports).then((r) => receive(r.instance, r.module));
        return {};
      },
    });
    module.tfjs = {
      init: module.cwrap("init", null, []),
      initWithThreadsCount: module.cwrap("init_with_threads_count", null, ["number"]),
      getThreadsCount: module.cwrap("get_threads_count", "number", []),
      registerTensor: module.cwrap("register_tensor", null, ["number", "number", "number"]),
      disposeData: module.cwrap("dispose_data", null, ["number"]),
      dispose: module.cwrap("dispose", null, []),
    };
    const backend = new BackendWasm(module);
    // Emscripten preallocates 8 workers; the pool has taken threads - 1 of them, free the rest.
    for (const w of module.PThread.unusedWorkers.splice(0)) w.terminate();
    // The pool's threads wait for work forever: they must not keep the process alive.
    for (const w of module.PThread.runningWorkers) w.unref();
    return backend;
  } finally {
    globalThis.Worker = webWorker;
  }
}
