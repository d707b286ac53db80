/**
 * Reading buffers back early (core/kernels/webgpu_map.ts): on the Deno versions where mapAsync's
 * mapping is ready when the call returns, mapRead takes it then; the values must be the GPU's latest,
 * never a buffer's older contents, and a buffer never mapped before must take the awaited path.
 */
import assert from "node:assert/strict";
import { EARLY_MAP_DENO, mapRead, mapStats, queueDone, setEarlyMap } from "../core/kernels/webgpu_map.ts";

const adapter = await (navigator as { gpu?: GPU }).gpu?.requestAdapter().catch(() => null);
const device = await adapter?.requestDevice();
if (!device) console.warn("skipping webgpu map tests: no WebGPU adapter");
const opts = { ignore: !device, sanitizeResources: false, sanitizeOps: false };
const earlyHere = EARLY_MAP_DENO.includes(Deno.version.deno);
if (device && !earlyHere) {
  console.warn(`webgpu map tests: Deno ${Deno.version.deno} is not in EARLY_MAP_DENO: every read awaits`);
}

const N = 1 << 14;

/** A dispatch that writes `value + i` into element i after `iterations` dependent steps (slow on purpose). */
function writer(gpu: GPUDevice, target: GPUBuffer) {
  const module = gpu.createShaderModule({
    code: `
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: vec2<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  var x = 0.0;
  for (var i = 0u; i < u32(p.y); i++) { x = x * 0.5 + 1.0; }
  out[g.x] = p.x + f32(g.x) + min(x, 0.0); // x ≥ 0: the loop stays, the value does not change
}`,
  });
  const pipeline = gpu.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const params = gpu.createBuffer({ size: 8, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const group = gpu.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: target } }, { binding: 1, resource: { buffer: params } }],
  });
  return (value: number, iterations: number, staging: GPUBuffer) => {
    gpu.queue.writeBuffer(params, 0, new Float32Array([value, iterations]));
    const encoder = gpu.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(N / 64);
    pass.end();
    encoder.copyBufferToBuffer(target, 0, staging, 0, N * 4);
    gpu.queue.submit([encoder.finish()]);
  };
}

/** A target the writer fills and a staging buffer it is copied into; `dispose` frees both. */
function setUp(gpu: GPUDevice) {
  const target = gpu.createBuffer({ size: N * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const staging = gpu.createBuffer({ size: N * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const fill = writer(gpu, target);
  return {
    staging,
    write: (value: number, iterations: number) => fill(value, iterations, staging),
    dispose: () => (target.destroy(), staging.destroy()),
  };
}

const copyOut = (range: ArrayBuffer) => new Float32Array(range.slice(0));
const expected = (value: number) => Float32Array.from({ length: N }, (_, i) => value + i);

Deno.test("mapRead: each read has the GPU's latest values; a kept buffer is read early", opts, async () => {
  const { staging, write, dispose } = setUp(device!);
  try {
    for (let k = 0; k < 4; k++) {
      const before = { ...mapStats };
      // a long dispatch the first time after the warm-up: a read taken before it ends would be stale
      write(100 * k, k === 1 ? 20000 : 1);
      const values = await mapRead(staging, copyOut);
      assert.deepEqual(values, expected(100 * k), `read ${k}`);
      const tookEarly = mapStats.early - before.early === 1;
      // the first map of a buffer always waits (Deno 2.9.6 would abort on an early one)
      assert.equal(tookEarly, earlyHere && k > 0, `read ${k}: early ${tookEarly}`);
    }
    // part of the buffer, from an offset
    write(7, 1);
    const part = await mapRead(staging, copyOut, { offset: 256, size: 512 });
    assert.deepEqual(part, expected(7).slice(64, 192));
  } finally {
    dispose();
  }
});

Deno.test("mapRead: setEarlyMap(false) awaits every read, with the same values", opts, async () => {
  const { staging, write, dispose } = setUp(device!);
  const previous = setEarlyMap(false);
  try {
    for (let k = 0; k < 3; k++) {
      const before = mapStats.awaited;
      write(k, 1);
      assert.deepEqual(await mapRead(staging, copyOut), expected(k));
      assert.equal(mapStats.awaited, before + 1);
    }
  } finally {
    setEarlyMap(previous);
    dispose();
  }
});

Deno.test("queueDone: resolves after the submitted work, early from the second call", opts, async () => {
  const { staging, write, dispose } = setUp(device!);
  try {
    await queueDone(device!);
    const before = { ...mapStats };
    write(5, 20000);
    await queueDone(device!);
    assert.equal(mapStats.early - before.early, earlyHere ? 1 : 0);
    // the work is done, and its result is in the staging buffer
    assert.deepEqual(await mapRead(staging, copyOut), expected(5));
    // two waits at once: the second takes a buffer of its own
    await Promise.all([queueDone(device!), queueDone(device!)]);
  } finally {
    dispose();
  }
});
