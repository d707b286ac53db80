/**
 * WebGPU reports an error outside every error scope only as an `uncapturederror` event on its device.
 * tfjs's own ops push no scopes: an op WebGPU rejects (a binding past the device's limit, say) leaves
 * its output garbage and throws nothing. Work whose result must not be garbage watches the device
 * and checks, once its results are read back, that no such error came meanwhile.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { WebGPUBackendLike } from "./webgpu_program.ts";
import { setImmediate } from "node:timers";

/** A device's uncaptured errors: how many so far, and the latest messages with their numbers. */
interface Seen {
  count: number;
  latest: { n: number; message: string }[];
}

/** Messages kept per device (an error often brings a few "... is invalid" after it). */
const KEPT = 16;

const seen = new WeakMap<GPUDevice, Seen>();

/** An uncaptured WebGPU error that came while some work ran: its results cannot be trusted. */
export class UncapturedGPUError extends Error {
  /** `messages`: the latest of the `count` errors' messages, oldest first. */
  constructor(what: string, readonly count: number, readonly messages: string[]) {
    super(
      `WebGPU reported ${count === 1 ? "an error" : `${count} errors`} during ${what}, ` +
        `whose results would be wrong: ${messages[0] ?? "(its message was not kept)"}`,
    );
    this.name = "UncapturedGPUError";
  }
}

/**
 * Resolves once the `uncapturederror` events of the calls WebGPU rejected before it began have been
 * dispatched. Deno dispatches them from a task of its runtime, on a later turn of the event loop
 * than the call (even a read-back queued after the call resolves first); two immediates span a whole
 * turn. Measured under Deno 2.9.6 with tfjs loaded (tests/webgpu_errors_test.ts checks it):
 * - two immediates saw an error made before them every time (100 in 100, the call made in each
 *   phase of the loop), in 0.01 ms; one missed every call made in a timer's turn;
 * - MessageChannel's messages do not let the task run once tfjs is loaded (Deno then gives the
 *   global Node's MessageChannel).
 */
export async function earlierErrorsArrived(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
}

/**
 * {@link earlierErrorsArrived}, and also those of calls made by timer callbacks of the turn its
 * timer ends: a call made by a timer callback that runs after this one's in the same turn is
 * covered by the turn after it. Calls made later still are not covered: a caller that must see
 * them waits after them (runTraining checks each step where it takes the step's losses). Measured
 * under Deno 2.9.6 with tfjs loaded: a timer alone saw an error made before it 20 times in 20, and
 * one made in a later timer callback 0 times in 20; a timer and two immediates saw both 20 times
 * in 20, in 2.2 ms, the timer's cost alone.
 */
export async function uncapturedErrorsArrived(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 0));
  await earlierErrorsArrived();
}

/** Options of {@link watchUncapturedErrors}. */
export interface WatchOptions {
  /**
   * The check also sees the errors of calls that timer callbacks make in the turn its wait ends
   * ({@link uncapturedErrorsArrived}; default true): for work whose calls other code interleaves
   * with, such as a training run's steps, at 2.2 ms a check under Deno 2.9.6. False: only those of
   * calls made before the check ({@link earlierErrorsArrived}, 0.01 ms), for work that has made all
   * of its calls by then, such as an upscale.
   */
  timerCallbacks?: boolean;
}

/**
 * Starts counting `device`'s uncaptured errors (once per device; other listeners still see them)
 * and returns a check that rejects with {@link UncapturedGPUError} if any arrived since this call.
 * Call the check after a read-back: the GPU has then run the work, and WebGPU has reported on it.
 * Errors are counted as they arrive ({@link uncapturedErrorsArrived}): a watch begun between a
 * rejected call and its event counts an error of earlier work too.
 */
export function watchUncapturedErrors(
  device: GPUDevice,
  options: WatchOptions = {},
): (what: string) => Promise<void> {
  let s = seen.get(device);
  if (!s) {
    const state: Seen = { count: 0, latest: [] };
    device.addEventListener("uncapturederror", (e) => {
      state.latest.push({ n: state.count++, message: (e as GPUUncapturedErrorEvent).error.message });
      if (state.latest.length > KEPT) state.latest.shift();
    });
    seen.set(device, s = state);
  }
  const state = s, start = s.count;
  const arrived = options.timerCallbacks === false ? earlierErrorsArrived : uncapturedErrorsArrived;
  return async (what) => {
    await arrived();
    if (state.count === start) return;
    const messages = state.latest.filter((m) => m.n >= start).map((m) => m.message);
    throw new UncapturedGPUError(what, state.count - start, messages);
  };
}

/** {@link watchUncapturedErrors} on the device of tfjs's webgpu backend; on other backends a check that passes. */
export function watchBackendErrors(options: WatchOptions = {}): (what: string) => Promise<void> {
  if (tf.getBackend() !== "webgpu") return () => Promise.resolve();
  return watchUncapturedErrors((tf.backend() as unknown as WebGPUBackendLike).device, options);
}
