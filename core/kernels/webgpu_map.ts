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
