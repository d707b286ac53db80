/**
 * Reading GPU buffers back without Deno 2.9.6's 10 ms wait. Its `mapAsync` (ext/webgpu/buffer.rs)
 * polls the device once when called, waiting for the queue to empty (the call returns only when the
 * GPU is done; wgpu maps the buffer and runs the map's callback in that poll), then sleeps 10 ms
 * before it looks at the callback's result and resolves. `onSubmittedWorkDone` does the same. So
 * every read-back took 10 ms more than the GPU's work: a sixth of a 1x256x256 forward on an H200.
 *
 * On a Deno known to work so ({@link EARLY_MAP_DENO}), {@link mapRead} takes the mapped range as
 * soon as `mapAsync` returns, without waiting for its promise. That is safe because wgpu gives the
 * range only once the buffer is mapped, that is, once the GPU has written it; where it is not yet
 * mapped, getMappedRange throws and mapRead awaits the promise as WebGPU prescribes. Elsewhere (an
 * unknown Deno, or {@link setEarlyMap}(false)) it always awaits.
 *
 * A buffer is read early only if it was mapped before: Deno 2.9.6's getMappedRange panics (an
 * abort, not an exception) on a buffer whose map mode it has not recorded yet, which it does when
 * the buffer's first mapAsync resolves. Keep staging buffers between reads to profit.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";

/** The Deno versions on which reading a mapped buffer before mapAsync's promise resolves was tested. */
export const EARLY_MAP_DENO: readonly string[] = ["2.9.6"];

const runtimeAllows = typeof Deno !== "undefined" && EARLY_MAP_DENO.includes(Deno.version.deno);
let early = runtimeAllows;

/** Buffers whose mapAsync has resolved once: Deno has their map mode, so reading them early is safe. */
const mappedBefore = new WeakSet<GPUBuffer>();

/** Reads taken early / awaited since the start, for tests and benchmarks. */
export const mapStats = { early: 0, awaited: 0 };

/**
 * Turns reading early on (the default on the Deno versions of {@link EARLY_MAP_DENO}; elsewhere it
 * stays off) or off, to compare with waiting for every promise. Returns the previous setting.
 */
export function setEarlyMap(on: boolean): boolean {
  const previous = early;
  early = on && runtimeAllows;
  return previous;
}

/**
 * Maps `buffer` (MAP_READ) once the GPU work submitted so far is done, gives `read` the mapped range
 * of `size` bytes from `offset` (the whole buffer by default), unmaps and returns what `read`
 * returned. `read` must copy what it keeps: the range is detached on unmap.
 */
export async function mapRead<T>(
  buffer: GPUBuffer,
  read: (range: ArrayBuffer) => T,
  options: { offset?: number; size?: number } = {},
): Promise<T> {
  const { offset = 0, size } = options;
  const mapped = buffer.mapAsync(GPUMapMode.READ, offset, size);
  let range: ArrayBuffer | undefined;
  if (early && mappedBefore.has(buffer)) {
    try {
      range = buffer.getMappedRange(offset, size);
    } catch {
      // not mapped yet: wait as WebGPU prescribes
    }
  }
  if (range) {
    mapStats.early++;
    // the promise still resolves (~10 ms on), after the unmap below: only its failure would matter
    mapped.catch(() => {});
  } else {
    await mapped;
    mappedBefore.add(buffer);
    mapStats.awaited++;
    range = buffer.getMappedRange(offset, size);
  }
  try {
    return read(range);
  } finally {
    buffer.unmap();
  }
}

const fences = new WeakMap<GPUDevice, GPUBuffer>();
const busyFences = new WeakSet<GPUBuffer>();

/**
 * Resolves once the GPU has done the work submitted to `device`'s queue so far, as
 * `onSubmittedWorkDone` does, but through {@link mapRead} of a small buffer kept per device that
 * the queue clears last, so without Deno 2.9.6's 10 ms wait (from the second call on). A call while
 * another waits uses a buffer of its own (and waits the 10 ms).
 */
export async function queueDone(device: GPUDevice): Promise<void> {
  let fence = fences.get(device);
  if (!fence) {
    fence = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    fences.set(device, fence);
  }
  const own = busyFences.has(fence)
    ? device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    : undefined;
  const buffer = own ?? fence;
  busyFences.add(buffer);
  try {
    const encoder = device.createCommandEncoder();
    encoder.clearBuffer(buffer);
    device.queue.submit([encoder.finish()]);
    await mapRead(buffer, () => {});
  } catch (e) {
    if (buffer === fence) fences.delete(device); // it may be left mapped: not used again
    throw e;
  } finally {
    busyFences.delete(buffer);
    own?.destroy();
  }
}

/** tfjs-backend-webgpu 4.22's parts that its read of a tensor's buffer uses (not public API). */
interface TfjsReads {
  getBufferData(buffer: GPUBuffer): Promise<ArrayBuffer | null>;
  bufferManager: {
    acquireBuffer(size: number, usage: number): GPUBuffer;
    releaseBuffer(buffer: GPUBuffer): void;
  };
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  commandEncoder: GPUCommandEncoder;
  submitQueue(): void;
}

let tfjsGetBufferData: TfjsReads["getBufferData"] | undefined;

/**
 * Makes tfjs's webgpu backend read tensors back through {@link mapRead} (its `data()`: the gan
 * stage's losses, validation images, the Upscaler's tiles where it blends on the host). tfjs takes
 * its staging buffers from a pool by size, so every read but the first of a size is early. The same
 * steps as tfjs 4.22's `getBufferData` otherwise; its profiling and compile-only modes keep tfjs's
 * own. Idempotent.
 */
export function readTfjsTensorsEarly(): void {
  if (tfjsGetBufferData) return;
  const proto = WebGPUBackend.prototype as unknown as TfjsReads;
  const original = tfjsGetBufferData = proto.getBufferData;
  proto.getBufferData = async function (this: TfjsReads, buffer: GPUBuffer) {
    const env = tf.env();
    if (env.getBool("WEBGPU_ENGINE_COMPILE_ONLY") || env.getBool("WEBGPU_USE_PROFILE_TOOL")) {
      return original.call(this, buffer);
    }
    const staging = this.bufferManager.acquireBuffer(
      buffer.size,
      GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    );
    this.ensureCommandEncoderReady();
    this.endComputePassEncoder();
    this.commandEncoder.copyBufferToBuffer(buffer, 0, staging, 0, buffer.size);
    this.submitQueue();
    const values = await mapRead(staging, (range) => range.slice(0));
    // as tfjs: back to the pool only after a good read (a failed one may leave it mapped)
    this.bufferManager.releaseBuffer(staging);
    return values;
  };
}
