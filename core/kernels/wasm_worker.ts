/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * A thread of the CPU kernels (wasm_pool.ts): instantiates rrdb_cpu.c's module on the pool's shared
 * memory and runs its band of rows of every layer of a list, meeting the other threads at a
 * barrier after each layer.
 * @module
 */
import { barrier, CTRL, type RunRequest, type WorkerInit } from "./wasm_barrier.ts";

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
  const { t, threads, ctrl, error } = init!;
  // a synchronous run's caller cannot take messages: it counts the threads done on `ctrl`
  const finish = (reply: { done?: boolean; aborted?: boolean; error?: string }) => {
    if (!msg.sync) return self.postMessage(reply);
    if (reply.error !== undefined && Atomics.compareExchange(ctrl, CTRL.failed, 0, 1) === 0) {
      const { written } = new TextEncoder().encodeInto(reply.error, error.subarray(0, error.length - 1));
      error[written] = 0;
    }
    Atomics.add(ctrl, CTRL.done, 1);
    Atomics.notify(ctrl, CTRL.done);
  };
  try {
    for (let i = 0; i < msg.count; i++) {
      runLayer!(msg.layers + i * msg.stride, t, threads);
      if (barrier(ctrl, threads)) return finish({ aborted: true });
      if (t === 0) Atomics.store(ctrl, CTRL.layers, i + 1);
    }
    finish({ done: true });
  } catch (err) {
    finish({ error: (err as Error).message ?? String(err) });
  }
};
