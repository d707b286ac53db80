/**
 * Stock vs custom WebGPU kernels in one process: RRDBNet forward (stock; stock ops on our
 * registered kernels; fully fused; fused as a prepared plan), a training step (L1 + Adam: stock;
 * our conv kernels; our conv kernels + fused Adam), single 3x3 convolutions and their gradients,
 * optionally a kernel profile (`--profile`: tf.profile, GPU time from timestamp queries) and a
 * tile sweep of the fused forward. Prints JSON (and writes $OUT/kernel_bench.json when OUT is set).
 *
 *   deno run -A core/kernels/kernel_bench.ts --blocks 2 --forward 1x16 --train-size 8 --train-batch 2 --reps 3
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { RRDBNet } from "../rrdbnet_arch.ts";
import { customKernelStats, disableCustomWebGPUKernels, enableCustomWebGPUKernels } from "./register.ts";
import { setConvTileOverride } from "./webgpu_conv3x3.ts";
import { rrdbnetForwardWebGPU } from "./webgpu_rrdb.ts";
import { RRDBNetPlanWebGPU } from "./webgpu_plan.ts";
import { FusedAdamWebGPU } from "./webgpu_adam.ts";

const { values: a } = parseArgs({
  options: {
    blocks: { type: "string", default: "23" },
    feat: { type: "string", default: "64" },
    grow: { type: "string", default: "32" },
    /** Forward shapes, "NxS" (batch x side), comma-separated. */
    forward: { type: "string", default: "1x64" },
    /** Tile settings to time the fused forward with (first shape), e.g. "32,16,4;64,16,1" (bm,bk,ks). */
    sweep: { type: "string", default: "" },
    "train-size": { type: "string", default: "32" },
    "train-batch": { type: "string", default: "16" },
    reps: { type: "string", default: "5" },
    "no-train": { type: "boolean", default: false },
    /** tf.profile of one forward per path (timestamp queries; took minutes, or hung, on the H200). */
    profile: { type: "boolean", default: false },
  },
});
const num = (k: keyof typeof a) => Number(a[k]);

async function median(f: () => Promise<void>, reps: number): Promise<number> {
  await f(); // warm-up: shader compilation, buffer pool
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await f();
    t.push(performance.now() - t0);
  }
  t.sort((x, y) => x - y);
  return Math.round(t[Math.floor(t.length / 2)] * 100) / 100;
}

if (!(await tf.setBackend("webgpu")) || tf.getBackend() !== "webgpu") throw new Error("no webgpu backend");
await tf.ready();
const adapter = await (navigator as { gpu: GPU }).gpu.requestAdapter();
const config = {
  numInCh: 3,
  numOutCh: 3,
  scale: 4 as const,
  numFeat: num("feat"),
  numBlock: num("blocks"),
  numGrowCh: num("grow"),
};
const reps = num("reps");
const out: Record<string, unknown> = { adapter: adapter?.info.description || adapter?.info.vendor, config };

// --- forward ---
const net = new RRDBNet(config, { seed: 1 });
const fwd = (f: () => tf.Tensor) => async () => {
  const y = f();
  await y.data();
  y.dispose();
};
const shapes = a.forward!.split(",").map((s) => s.split("x").map(Number));
const forwardRows: Record<string, unknown>[] = [];
let x0: tf.Tensor4D | null = null;
for (const [n, side] of shapes) {
  const x = tf.randomUniform([n, side, side, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  const row: Record<string, unknown> = { shape: x.shape };
  disableCustomWebGPUKernels();
  row.stock = await median(fwd(() => net.apply(x)), reps);
  enableCustomWebGPUKernels();
  row.registered = await median(fwd(() => net.apply(x)), reps);
  disableCustomWebGPUKernels();
  row.fused = await median(fwd(() => rrdbnetForwardWebGPU(net, x)), reps);
  const plan = new RRDBNetPlanWebGPU(net, x.shape);
  row.plan = await median(fwd(() => plan.run(x)), reps);
  plan.dispose();
  forwardRows.push(row);
  console.error("forward", JSON.stringify(row)); // progress, in case a later part runs out of time
  if (x0) x.dispose();
  else x0 = x;
}
out.forwardMs = forwardRows;
const x = x0!;
if (a.sweep) {
  const sweep: Record<string, number> = {};
  for (const t of a.sweep.split(";")) {
    const [bm, bk, ks] = t.split(",").map(Number);
    setConvTileOverride({ bm, bk, ks });
    sweep[t] = await median(fwd(() => rrdbnetForwardWebGPU(net, x)), reps);
  }
  setConvTileOverride(null);
  out.fusedSweepMs = { shape: x.shape, bmBkKs: sweep };
  console.error("sweep", JSON.stringify(sweep));
}

// --- kernel profile of one forward (first shape): which kernels, how many dispatches, GPU time ---
async function profile(f: () => tf.Tensor) {
  const info = await tf.profile(async () => {
    const y = f();
    await y.data();
    y.dispose();
  });
  const byKernel: Record<string, { calls: number; gpuMs: number }> = {};
  for (const k of info.kernels) {
    const e = byKernel[k.name] ??= { calls: 0, gpuMs: 0 };
    e.calls++;
    e.gpuMs += typeof k.kernelTimeMs === "number" ? k.kernelTimeMs : 0;
  }
  for (const e of Object.values(byKernel)) e.gpuMs = Math.round(e.gpuMs * 100) / 100;
  const total = Object.values(byKernel).reduce((s, e) => s + e.gpuMs, 0);
  return {
    kernels: info.kernels.length,
    gpuMsTotal: Math.round(total * 100) / 100,
    peakBytes: info.peakBytes,
    byKernel,
  };
}
if (a.profile) {
  out.profileStock = await profile(() => net.apply(x));
  enableCustomWebGPUKernels();
  out.profileRegistered = await profile(() => net.apply(x));
  disableCustomWebGPUKernels();
  out.profileFused = await profile(() => rrdbnetForwardWebGPU(net, x));
}
x.dispose();
net.dispose();

// --- single convolutions (the RRDB shapes) and their gradients ---
const convs: Record<string, unknown>[] = [];
const [cb, cs] = [num("train-batch"), num("train-size")];
for (const [ci, co] of [[64, 32], [192, 64]]) {
  const xi = tf.randomNormal([cb, cs, cs, ci]) as tf.Tensor4D,
    f = tf.randomNormal([3, 3, ci, co]) as tf.Tensor4D;
  const b = tf.randomNormal([co]) as tf.Tensor1D, dy = tf.randomNormal([cb, cs, cs, co]) as tf.Tensor4D;
  const row: Record<string, unknown> = { x: xi.shape, cout: co };
  for (const mode of ["stock", "custom"]) {
    if (mode === "custom") enableCustomWebGPUKernels();
    else disableCustomWebGPUKernels();
    row[`${mode}FwdMs`] = await median(
      fwd(() =>
        tf.fused.conv2d({
          x: xi,
          filter: f,
          bias: b,
          strides: 1,
          pad: "same",
          activation: "leakyrelu",
          leakyreluAlpha: 0.2,
        })
      ),
      reps,
    );
    row[`${mode}DxMs`] = await median(fwd(() => tf.conv2dTranspose(dy, f, xi.shape, 1, "same")), reps);
    row[`${mode}DwMs`] = await median(
      fwd(() =>
        tf.engine().runKernel("Conv2DBackpropFilter", { x: xi, dy }, {
          strides: 1,
          pad: "same",
          dataFormat: "NHWC",
          filterShape: f.shape,
        }) as tf.Tensor
      ),
      reps,
    );
  }
  disableCustomWebGPUKernels();
  convs.push(row);
  console.error("conv", JSON.stringify(row));
  tf.dispose([xi, f, b, dy]);
}
out.convMs = convs;

// --- training step: L1 loss, Adam ---
if (!a["no-train"]) {
  const train: Record<string, unknown> = { batch: cb, size: cs };
  for (const mode of ["stock", "customConvs", "custom"]) {
    if (mode === "stock") disableCustomWebGPUKernels();
    else enableCustomWebGPUKernels();
    const tnet = new RRDBNet(config, { seed: 1, trainable: true });
    const vars = [...tnet.params.values()];
    const lx = tf.randomUniform([cb, cs, cs, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    const hy = tf.randomUniform([cb, cs * 4, cs * 4, 3], 0, 1, "float32", 4) as tf.Tensor4D;
    const stockAdam = tf.train.adam(1e-4);
    const fusedAdam = new FusedAdamWebGPU({ lr: 1e-4 });
    customKernelStats({ reset: true });
    train[`${mode}Ms`] = await median(async () => {
      const { value, grads } = tf.variableGrads(
        () => tf.mean(tf.abs(tf.sub(tnet.apply(lx), hy))) as tf.Scalar,
        vars,
      );
      if (mode === "custom") fusedAdam.applyGradients(grads, vars);
      else stockAdam.applyGradients(grads as tf.NamedTensorMap as Record<string, tf.Variable>);
      await value.data();
      tf.dispose([value, ...Object.values(grads)]);
    }, Math.max(1, Math.min(reps, 3)));
    train[`${mode}Kernels`] = customKernelStats();
    console.error("train", mode, train[`${mode}Ms`]);
    stockAdam.dispose();
    fusedAdam.dispose();
    tf.dispose([lx, hy]);
    tnet.dispose();
  }
  disableCustomWebGPUKernels();
  out.trainStepMs = train;
}
const outDir = Deno.env.get("OUT");
if (outDir) await Deno.writeTextFile(`${outDir}/kernel_bench.json`, JSON.stringify(out, null, 1));
console.log(JSON.stringify(out));
