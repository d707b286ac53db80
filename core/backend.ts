/**
 * Chooses and starts a tfjs backend: `webgpu` only on a real GPU adapter (a software adapter such
 * as Mesa llvmpipe is far slower than XNNPACK), otherwise `wasm`; `cpu` on request.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-webgpu";
import { setThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";

/** The backends this project runs on. */
export type BackendName = "webgpu" | "wasm" | "cpu";

/** Which backend runs, and why it was chosen. */
export interface BackendInfo {
  name: BackendName;
  /** The GPU adapter's description, for webgpu. */
  adapter?: string;
  /** Why this backend: "requested" or the reason automatic choice gave. */
  reason: string;
  /** Threads of the wasm backend. */
  threads?: number;
}

/** Describes the WebGPU adapter, or says why there is none. */
export async function probeWebGPU(): Promise<{ adapter?: string; software: boolean; why?: string }> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  if (!gpu) return { software: true, why: "no WebGPU in this runtime" };
  const adapter = await gpu.requestAdapter();
  if (!adapter) return { software: true, why: "no WebGPU adapter" };
  const info = adapter.info;
  const description = info.description || `${info.vendor} ${info.device}`.trim();
  const software = info.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(description);
  return { adapter: description, software };
}

/** Starts `name`, or picks one when absent. Throws if the requested backend cannot start. */
export async function initBackend(name?: BackendName): Promise<BackendInfo> {
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
  if (name === "wasm") {
    setWasmPaths(new URL("../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url).href);
    threads = navigator.hardwareConcurrency ?? 1;
    setThreadsCount(threads);
  }
  if (!(await tf.setBackend(name)) || tf.getBackend() !== name) {
    throw new Error(`the ${name} backend could not start${name === "webgpu" ? " (no WebGPU adapter?)" : ""}`);
  }
  await tf.ready();
  if (name === "webgpu" && !adapter) adapter = (await probeWebGPU()).adapter;
  if (name === "wasm") {
    const multi = await tf.env().getAsync("WASM_HAS_MULTITHREAD_SUPPORT");
    if (!multi) threads = 1;
  }
  return { name, adapter, reason, threads };
}
