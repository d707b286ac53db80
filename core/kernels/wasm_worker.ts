/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * A thread of the CPU kernels (wasm_pool.ts): instantiates rrdb_cpu.c's module on the pool's shared
 * memory and runs its band of rows of every layer of a list, meeting the other threads at a
 * barrier after each layer.
 * @module
 */
import { barrier, type RunRequest, type WorkerInit } from "./wasm_barrier.ts";

let runLayer: ((layer: number, t: number, threads: number) => void) | undefined;
let init: WorkerInit | undefined;

self.onmessage = (e: MessageEvent<WorkerInit | RunRequest>) => {
  const msg = e.data;
  if ("module" in msg) {
    init = msg;
    const instance = new WebAssembly.Instance(msg.module, { env: { memory: msg.memory } });
    runLayer = instance.exports.run_layer as typeof runLayer;
    return;
  }
  const { t, threads, ctrl } = init!;
  try {
    for (let i = 0; i < msg.count; i++) {
      runLayer!(msg.layers + i * msg.stride, t, threads);
      if (barrier(ctrl, threads)) {
        self.postMessage({ aborted: true });
        return;
      }
    }
    self.postMessage({ done: true });
  } catch (err) {
    self.postMessage({ error: (err as Error).message ?? String(err) });
  }
};
