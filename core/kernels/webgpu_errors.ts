/**
 * WebGPU reports an error outside every error scope only as an `uncapturederror` event on its device.
 * tfjs's own ops push no scopes: an op WebGPU rejects (a binding past the device's limit, say) leaves
 * its output garbage and throws nothing. Work whose result must not be garbage watches the device
 * and checks, once its results are read back, that no such error came meanwhile.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { WebGPUBackendLike } from "./webgpu_program.ts";

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
 * Starts counting `device`'s uncaptured errors (once per device; other listeners still see them)
 * and returns a check that rejects with {@link UncapturedGPUError} if any arrived since this call.
 * Call the check after a read-back: the GPU has then run the work, and WebGPU has reported on it.
 * Errors are counted as they arrive, a turn of the event loop after the call WebGPU rejected: a
 * watch begun in between counts an error of earlier work too.
 */
export function watchUncapturedErrors(device: GPUDevice): (what: string) => Promise<void> {
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
  return async (what) => {
    // Deno dispatches the event on a later turn of its event loop than the call WebGPU rejected
    // (even a read-back queued after it resolves first): one timer turn lets it arrive
    await new Promise((r) => setTimeout(r, 0));
    if (state.count === start) return;
    const messages = state.latest.filter((m) => m.n >= start).map((m) => m.message);
    throw new UncapturedGPUError(what, state.count - start, messages);
  };
}

/** {@link watchUncapturedErrors} on the device of tfjs's webgpu backend; on other backends a check that passes. */
export function watchBackendErrors(): (what: string) => Promise<void> {
  if (tf.getBackend() !== "webgpu") return () => Promise.resolve();
  return watchUncapturedErrors((tf.backend() as unknown as WebGPUBackendLike).device);
}
