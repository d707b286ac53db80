/**
 * For test files that exercise our WebGPU kernels: switches tfjs to webgpu when an adapter exists
 * (Mesa llvmpipe on CPU-only machines) and collects WebGPU's uncaptured errors, which invalid shaders
 * or bindings raise instead of throwing.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { useWebGPUWithF16 } from "../core/kernels/webgpu_f16.ts";
import { readTfjsTensorsEarly } from "../core/kernels/webgpu_tfjs_reads.ts";

/** Sets up webgpu; `what` names the skipped tests when there is no adapter. */
export async function setUpWebGPU(what: string): Promise<{
  opts: { ignore: boolean; sanitizeResources: boolean; sanitizeOps: boolean };
  gpuErrors: string[];
}> {
  useWebGPUWithF16(); // the device initBackend makes: with shader-f16 where the adapter has it
  readTfjsTensorsEarly(); // and tfjs's reads as initBackend makes them
  const hasWebGPU = await (async () => {
    try {
      return !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter()) && await tf.setBackend("webgpu");
    } catch {
      return false;
    }
  })();
  if (!hasWebGPU) console.warn(`skipping ${what}: no WebGPU adapter`);
  const gpuErrors: string[] = [];
  if (hasWebGPU) {
    await tf.ready();
    (tf.backend() as unknown as { device: GPUDevice }).device.addEventListener(
      "uncapturederror",
      (e) => gpuErrors.push((e as GPUUncapturedErrorEvent).error.message),
    );
  }
  return { opts: { ignore: !hasWebGPU, sanitizeResources: false, sanitizeOps: false }, gpuErrors };
}

/**
 * Makes the next bind group `faulty` picks by its number of entries invalid (by default four or
 * more: a convolution's; tfjs's slice and clip bind three), once per `arm()`; `restore()` puts the
 * device's own createBindGroup back.
 */
export function bindGroupFault(device: GPUDevice, faulty: (entries: number) => boolean = (n) => n >= 4): {
  arm: () => void;
  restore: () => void;
} {
  const createBindGroup = device.createBindGroup;
  let armed = false;
  device.createBindGroup = function (this: GPUDevice, d: GPUBindGroupDescriptor) {
    if (!armed || !faulty([...d.entries].length)) return createBindGroup.call(this, d);
    armed = false;
    return createBindGroup.call(this, { ...d, entries: [...d.entries].slice(1) });
  };
  return { arm: () => armed = true, restore: () => device.createBindGroup = createBindGroup };
}
