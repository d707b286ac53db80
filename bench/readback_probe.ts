/**
 * Where a read-back's time goes under this Deno, on this GPU: plain WebGPU, no tfjs. For outputs of
 * the bench's forward shapes (1x64x64, 16x32x32, 1x256x256 LR: 0.8, 3.1, 12.6 MB of f32 RGB at 4x),
 * wall and CPU milliseconds of each step of a read: copying into a MAP_READ buffer made for the read
 * (as tfjs's data() does) or kept between reads, mapAsync (the call and its promise), getMappedRange,
 * the copy out (`slice`) and unmap, and the whole read through core/kernels/webgpu_map.ts's mapRead
 * (the range taken when mapAsync returns, on Deno 2.9.6); then whether waiting for the queue
 * (onSubmittedWorkDone) blocks the thread while a long dispatch runs, and whether it spins (its CPU
 * time). On an H200 a planned 1x256x256 forward spent 32 ms of CPU against 7.5 ms at 1x64x64 (the
 * same dispatches): this says which step holds the difference.
 *
 *     deno run -A bench/readback_probe.ts [--json FILE] [--spin N]
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { mapRead, mapStats } from "../core/kernels/webgpu_map.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "string" },
    spin: { type: "string", default: "4000000" },
    runs: { type: "string", default: "7" },
  },
});
const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("readback_probe: no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: { maxBufferSize: adapter.limits.maxBufferSize },
});
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];

/** One step's wall and CPU ms. */
async function step<T>(times: Record<string, { wall: number[]; cpu: number[] }>, name: string, f: () => T) {
  const w0 = performance.now(), c0 = cpuMs();
  const value = await f();
  (times[name] ??= { wall: [], cpu: [] }).wall.push(performance.now() - w0);
  times[name].cpu.push(cpuMs() - c0);
  return value;
}

/**
 * Staging buffers: made per read (as tfjs's data() does), kept between reads, and kept and read by
 * core/kernels/webgpu_map.ts's mapRead (early where this Deno allows: `mapStats` in the JSON says).
 */
const STAGINGS = ["fresh", "kept", "early"] as const;
const rows: { bytes: number; staging: string; steps: Record<string, { wall_ms: number; cpu_ms: number }> }[] =
  [];
const runs = Number(values.runs);
for (const bytes of [64 * 64 * 16 * 12, 16 * 32 * 32 * 16 * 12, 256 * 256 * 16 * 12]) {
  const src = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(src, 0, new Uint8Array(bytes).fill(7));
  const kept = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const keptEarly = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const times: Record<string, Record<string, { wall: number[]; cpu: number[] }>> = {
    fresh: {},
    kept: {},
    early: {},
  };
  for (let r = 0; r < runs + 1; r++) {
    for (const staging of STAGINGS) {
      const t = r === 0 ? {} : times[staging]; // the first round warms up
      const dst = await step(
        t,
        "create",
        () =>
          staging === "kept"
            ? kept
            : staging === "early"
            ? keptEarly
            : device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
      );
      await step(t, "submit", () => {
        const encoder = device.createCommandEncoder();
        encoder.copyBufferToBuffer(src, 0, dst, 0, bytes);
        device.queue.submit([encoder.finish()]);
      });
      if (staging === "early") {
        // the whole read as the plans read: mapped range taken when mapAsync returns, copied, unmapped
        const copy = await step(t, "mapRead", () => mapRead(dst, (range) => range.slice(0)));
        if (copy.byteLength !== bytes || new Uint8Array(copy)[bytes - 1] !== 7) throw new Error("bad read");
        continue;
      }
      let mapped!: Promise<undefined>;
      await step(t, "mapAsync call", () => void (mapped = dst.mapAsync(GPUMapMode.READ)));
      await step(t, "mapAsync await", () => mapped);
      const range = await step(t, "getMappedRange", () => dst.getMappedRange());
      const copy = await step(t, "slice", () => range.slice(0));
      await step(t, "unmap", () => (dst.unmap(), staging === "fresh" && dst.destroy()));
      if (copy.byteLength !== bytes || new Uint8Array(copy)[bytes - 1] !== 7) throw new Error("bad read");
    }
  }
  for (const staging of STAGINGS) {
    const steps = Object.fromEntries(
      Object.entries(times[staging]).map(([k, v]) => [k, { wall_ms: median(v.wall), cpu_ms: median(v.cpu) }]),
    );
    rows.push({ bytes, staging, steps });
  }
  src.destroy();
  kept.destroy();
  keptEarly.destroy();
}

// a dispatch of N dependent multiply-adds per thread, then: does onSubmittedWorkDone() return at once?
const module = device.createShaderModule({
  code: `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  var acc = f32(g.x);
  for (var i = 0u; i < ${Number(values.spin)}u; i++) { acc = acc * 0.9999999 + 1.0; }
  out[g.x] = acc;
}`,
});
const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
const out = device.createBuffer({ size: 4 * 64 * 1024, usage: GPUBufferUsage.STORAGE });
const bindGroup = device.createBindGroup({
  layout: pipeline.getBindGroupLayout(0),
  entries: [{ binding: 0, resource: { buffer: out } }],
});
const waits: { call_ms: number; call_cpu_ms: number; await_ms: number }[] = [];
for (let r = 0; r < 3; r++) {
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(1024);
  pass.end();
  device.queue.submit([encoder.finish()]);
  const t0 = performance.now(), c0 = cpuMs();
  const done = device.queue.onSubmittedWorkDone();
  const t1 = performance.now(), c1 = cpuMs();
  await done;
  waits.push({ call_ms: t1 - t0, call_cpu_ms: c1 - c0, await_ms: performance.now() - t1 });
}

const fmt = (v: number) => v.toFixed(2);
console.log(`${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.description}`.trim());
for (const r of rows) {
  const parts = Object.entries(r.steps).map(([k, v]) => `${k} ${fmt(v.wall_ms)}/${fmt(v.cpu_ms)}`);
  console.log(`${(r.bytes / 1e6).toFixed(1)} MB, ${r.staging} staging (wall/CPU ms): ${parts.join(", ")}`);
}
for (const w of waits) {
  console.log(
    `onSubmittedWorkDone with a dispatch in flight: the call ${fmt(w.call_ms)} ms (CPU ${
      fmt(w.call_cpu_ms)
    }), ` +
      `its promise ${fmt(w.await_ms)} ms more`,
  );
}
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ adapter: adapter.info, rows, waits, mapStats }, null, 1),
  );
}
