/**
 * What the CPU kernels' main thread and its workers share: the messages, and the barrier the
 * workers meet at between layers (Atomics on a shared Int32Array), which also carries an abort.
 * @module
 */

/** A worker's setup: the module, the memory it runs on, its index among `threads`. */
export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  ctrl: Int32Array;
  /** Where a thread of a synchronous run writes its error (UTF-8, zero-terminated). */
  error: Uint8Array;
  t: number;
  threads: number;
}

/** Run `count` layer records from byte offset `layers`, `stride` bytes apart. */
export interface RunRequest {
  layers: number;
  count: number;
  stride: number;
  /**
   * The caller waits on the control array (its `done` count, `failed` flag) instead of messages:
   * a synchronous run, whose caller's event loop is blocked meanwhile.
   */
  sync?: boolean;
}

/** Slots of the control array (`layers`: how many layers of the current run are done, for progress). */
export const CTRL = { count: 0, generation: 1, abort: 2, stop: 3, done: 4, failed: 5, layers: 6 } as const;
/** Length of the control array. */
export const CTRL_SLOTS = 7;

/**
 * Waits until all `threads` have arrived. The last to arrive latches the abort flag into `stop`
 * before it releases the others, so that every thread reads the same decision (one that stopped
 * while another went on would leave it waiting at the next barrier forever). Returns true to stop.
 */
export function barrier(ctrl: Int32Array, threads: number): boolean {
  const generation = Atomics.load(ctrl, CTRL.generation);
  if (Atomics.add(ctrl, CTRL.count, 1) === threads - 1) {
    Atomics.store(ctrl, CTRL.count, 0);
    Atomics.store(ctrl, CTRL.stop, Atomics.load(ctrl, CTRL.abort));
    Atomics.add(ctrl, CTRL.generation, 1);
    Atomics.notify(ctrl, CTRL.generation);
  } else {
    while (Atomics.load(ctrl, CTRL.generation) === generation) {
      Atomics.wait(ctrl, CTRL.generation, generation);
    }
  }
  return Atomics.load(ctrl, CTRL.stop) === 1;
}
