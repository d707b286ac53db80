/**
 * tfjs's own read-backs ({@link readTfjsTensorsEarly}) through webgpu_map.ts's mapRead. A module of
 * its own so that webgpu_map.ts stays plain WebGPU (bench/readback_probe.ts runs it on the GPU
 * machine, where npm packages are not installed).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import { mapRead } from "./webgpu_map.ts";

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
