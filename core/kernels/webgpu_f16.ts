/**
 * Half precision on tfjs's WebGPU backend. tfjs 4.22 computes in f32 only and asks its device for
 * `timestamp-query` and `bgra8unorm-storage`, never `shader-f16`, so WGSL with `enable f16` does not
 * compile on its device. {@link useWebGPUWithF16} registers a factory that makes the same device
 * with `shader-f16` added where the adapter has it; our f16 kernels then convert at the edges of a
 * plan (f32 tensors in and out, {@link castProgram}).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import type { CustomProgram, Uniform, WebGPUBackendLike } from "./webgpu_program.ts";
import { dispatch1d, flatIndex } from "./webgpu_pass.ts";

let registered = false;

/**
 * Registers tfjs's 'webgpu' backend factory again, asking the device for `shader-f16` when the
 * adapter offers it (tfjs's own features and limits otherwise unchanged). Call before the backend
 * first starts; idempotent.
 */
export function useWebGPUWithF16(): void {
  if (registered || !(navigator as { gpu?: GPU }).gpu) return;
  registered = true;
  if (tf.findBackend("webgpu")) return; // already started: its device stays as it was made
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", async () => {
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: tf.env().get("WEBGPU_USE_LOW_POWER_GPU") ? "low-power" : "high-performance",
    });
    if (!adapter) throw new Error("no WebGPU adapter");
    const wanted = ["timestamp-query", "bgra8unorm-storage", "shader-f16"] as GPUFeatureName[];
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: wanted.filter((f) => adapter.features.has(f)),
      requiredLimits: {
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      },
    });
    return new WebGPUBackend(device, adapter.info);
  }, 3);
}

/** Whether the backend's device compiles `enable f16` shaders. */
export function hasShaderF16(backend: WebGPUBackendLike): boolean {
  return backend.device.features.has("shader-f16");
}

/**
 * Converts `count` numbers between f32 and f16 buffers, two per thread (an f16 is half a 32-bit
 * word: one thread writes both halves). A buffer of f16s holds `ceil(count / 2)` words; the pad
 * half of an odd count is written as 0.
 */
export function castProgram(
  count: number,
  to: "f16" | "f32",
): CustomProgram & { uniforms: string; params: Uniform[] } {
  const pairs = Math.ceil(count / 2);
  const body = to === "f16"
    ? `let a = src[2 * i];
  var b = 0.0;
  if (2 * i + 1 < u.count) { b = src[2 * i + 1]; }
  result[i] = vec2<f16>(f16(a), f16(b));`
    : `let v = vec2<f32>(src[i]);
  result[2 * i] = v.x;
  if (2 * i + 1 < u.count) { result[2 * i + 1] = v.y; }`;
  return {
    name: `Cast${to === "f16" ? "F32ToF16" : "F16ToF32"}Program`,
    key: `cast:${to}`,
    source: (prelude) =>
      `enable f16;
${prelude}
@group(0) @binding(0) var<storage, read_write> result: array<${to === "f16" ? "vec2<f16>" : "f32"}>;
@group(0) @binding(1) var<storage, read> src: array<${to === "f16" ? "f32" : "vec2<f16>"}>;
@group(0) @binding(2) var<uniform> u: Uniforms;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = ${flatIndex()};
  if (i >= u.pairs) { return; }
  ${body}
}`,
    dispatch: dispatch1d(pairs),
    uniforms: "count : i32, pairs : i32,",
    params: [count, pairs].map((v) => ({ type: "int32", data: [v] })),
  };
}
