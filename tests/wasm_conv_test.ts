/**
 * core/kernels/wasm_conv.ts: tfjs-wasm's 3x3 stride-1 "same" and 4x4 stride-2 convolutions on our
 * CPU kernels give the cpu backend's results (forward, fused bias and activations, input and filter
 * gradients) on sides and channel counts that are and are not multiples of 4, and leave other
 * convolutions to the kernels they replaced. Batches of narrow maps run side by side in one wide map, wider ones one
 * after another: both are here.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { initBackend } from "../core/backend.ts";
import { useStockWasmConvKernels, useWasmConvKernels, wasmConvCalls } from "../core/kernels/wasm_conv.ts";
import { useFastWasmConvGrads, useStockWasmConvGrads } from "../train/wasm_conv_grads.ts";
import { Rng } from "../train/rng.ts";

await initBackend("cpu");
await initBackend("wasm", { threads: 2 });

type Act = "linear" | "relu" | "leakyrelu";
interface Case {
  x: [number, number, number, number];
  cout: number;
  pad: "same" | "valid" | number;
  /** A 4x4 stride-2 conv (default 3x3 stride 1). */
  down?: boolean;
  /** A fused conv with bias and this activation; absent: tf.conv2d. */
  act?: Act;
}
const CASES: Case[] = [
  { x: [2, 8, 8, 16], cout: 8, pad: "same" },
  { x: [1, 9, 7, 3], cout: 5, pad: "same", act: "relu" },
  { x: [2, 6, 13, 6], cout: 12, pad: 1, act: "leakyrelu" },
  { x: [1, 4, 4, 64], cout: 64, pad: "same", act: "linear" },
  { x: [3, 5, 12, 4], cout: 3, pad: "same", act: "relu" },
  { x: [2, 5, 19, 8], cout: 4, pad: "same" },
  // the discriminator's downsampling convs: 4x4 stride 2 on an explicitly padded input
  { x: [2, 10, 10, 8], cout: 16, pad: "valid", down: true },
  { x: [1, 11, 9, 3], cout: 5, pad: "valid", down: true, act: "leakyrelu" },
  { x: [2, 8, 12, 6], cout: 4, pad: 1, down: true, act: "relu" },
  { x: [1, 7, 6, 4], cout: 8, pad: "same", down: true },
  // an output of 16x16 or more: the filter gradient in the Winograd domain too; 32x32 or more: all
  { x: [2, 34, 35, 4], cout: 4, pad: "valid", down: true, act: "relu" },
  { x: [1, 66, 69, 8], cout: 4, pad: "valid", down: true, act: "leakyrelu" },
];

function random(shape: number[], seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.random() * 2 - 1);
}

/** The conv's output and the gradients of L = Σ conv(x, W) ⊙ r w.r.t. x, W (and the bias). */
function run(c: Case): Record<string, Float32Array> {
  const k = c.down ? 4 : 3, stride = c.down ? 2 : 1;
  const wShape = [k, k, c.x[3], c.cout] as [number, number, number, number];
  return tf.tidy(() => {
    const x = tf.tensor4d(random(c.x, 1), c.x);
    const w = tf.tensor4d(random(wShape, 2), wShape);
    const b = tf.tensor1d(random([c.cout], 4));
    const f = (a: tf.Tensor, filter: tf.Tensor, bias: tf.Tensor) =>
      c.act
        ? tf.fused.conv2d({
          x: a as tf.Tensor4D,
          filter: filter as tf.Tensor4D,
          strides: stride,
          pad: c.pad,
          bias,
          activation: c.act,
          leakyreluAlpha: 0.2,
        })
        : tf.conv2d(a as tf.Tensor4D, filter as tf.Tensor4D, stride, c.pad);
    const y = f(x, w, b);
    const r = tf.tensor(random(y.shape, 3), y.shape);
    const [dx, dw] = tf.grads((a: tf.Tensor, filter: tf.Tensor) => tf.sum(tf.mul(f(a, filter, b), r)))([
      x,
      w,
    ]);
    return { y: y.dataSync(), dx: dx.dataSync(), dw: dw.dataSync() } as Record<string, Float32Array>;
  });
}

function assertClose(got: Float32Array, want: Float32Array, what: string) {
  assert.equal(got.length, want.length, `${what}: length`);
  const scale = Math.max(...want.map(Math.abs));
  const worst = Math.max(...want.map((v, i) => Math.abs(v - got[i])));
  assert.ok(worst <= 1e-4 * scale, `${what}: off by ${worst} (scale ${scale})`);
}

Deno.test("wasm 3x3 convolutions on the CPU kernels equal the cpu backend's, with both gradients", async () => {
  await tf.setBackend("cpu");
  const want = CASES.map(run);
  await tf.setBackend("wasm");
  useFastWasmConvGrads();
  useWasmConvKernels({ threads: 2 });
  try {
    const calls = wasmConvCalls(), before = tf.memory().numTensors;
    CASES.forEach((c, i) => {
      const got = run(c);
      for (const k of ["y", "dx", "dw"]) {
        assertClose(got[k], want[i][k], `x [${c.x}] ${c.down ? "4x4/2" : "3x3"} ${c.act ?? "conv2d"}: ${k}`);
      }
    });
    // each case: the forward twice (alone and under tf.grads), the input gradient, and the filter
    // gradient but for 4x4 stride-2 outputs under 16x16 (XNNPACK's)
    const ran = CASES.reduce((sum, c) => sum + (c.down && c.x[1] < 34 ? 3 : 4), 0);
    assert.equal(wasmConvCalls() - calls, ran, "convolutions our kernels ran");
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
  } finally {
    useStockWasmConvKernels();
    useStockWasmConvGrads();
    await tf.setBackend("cpu");
  }
});

Deno.test("wasm 3x3 convolutions on the CPU kernels pack each filter they see, kept or evicted", async () => {
  const x = tf.tensor4d(random([2, 8, 8, 8], 7), [2, 8, 8, 8]);
  const w = tf.variable(tf.tensor4d(random([3, 3, 8, 8], 8), [3, 3, 8, 8]));
  const updates = [9, 10, 11].map((seed) => tf.tensor4d(random([3, 3, 8, 8], seed), [3, 3, 8, 8]));
  const other = tf.tensor4d(random([3, 3, 8, 8], 12), [3, 3, 8, 8]);
  // each filter: conv, the input gradient's conv, another filter's conv, conv again
  const compute = () => {
    const out: Float32Array[] = [];
    for (const u of [null, ...updates]) {
      if (u) w.assign(u);
      out.push(tf.conv2d(x, w, 1, "same").dataSync() as Float32Array);
      out.push(tf.conv2dTranspose(x, w, x.shape, 1, "same").dataSync() as Float32Array);
      out.push(tf.conv2d(x, other, 1, "same").dataSync() as Float32Array);
      out.push(tf.conv2d(x, w, 1, "same").dataSync() as Float32Array);
    }
    return out;
  };
  await tf.setBackend("cpu");
  const want = compute();
  await tf.setBackend("wasm");
  // room for all, for three packed filters (the rest evicted and their blocks reused), for none
  for (const bytes of [undefined, 3 * 4 * 36 * 8 * 8, 0]) {
    useWasmConvKernels({ threads: 2, filterCacheBytes: bytes });
    try {
      w.assign(tf.tensor4d(random([3, 3, 8, 8], 8), [3, 3, 8, 8]));
      const calls = wasmConvCalls();
      compute().forEach((got, i) =>
        assertClose(got, want[i], `cache of ${bytes ?? "default"} bytes: result ${i}`)
      );
      assert.equal(wasmConvCalls() - calls, want.length, "all ran on our kernels");
    } finally {
      useStockWasmConvKernels();
    }
  }
  await tf.setBackend("cpu");
});

Deno.test("wasm convolutions the CPU kernels do not take go to the kernels they replaced", async () => {
  const other = [
    (x: tf.Tensor4D, w: tf.Tensor4D) => tf.conv2d(x, w, 2, "same"), // 3x3 stride 2
    (x: tf.Tensor4D) => tf.conv2d(x, tf.tensor4d(random([4, 4, 4, 4], 7), [4, 4, 4, 4]), 1, "same"),
    (x: tf.Tensor4D) => tf.conv2d(x, tf.tensor4d(random([4, 4, 4, 4], 7), [4, 4, 4, 4]), 3, "valid"),
    (x: tf.Tensor4D, w: tf.Tensor4D) => tf.conv2d(x, w, 1, "valid"),
    (x: tf.Tensor4D, w: tf.Tensor4D) => tf.conv2d(x, w, 1, "same", "NHWC", 2),
    (x: tf.Tensor4D, w: tf.Tensor4D) =>
      tf.fused.conv2d({
        x,
        filter: w,
        pad: "same",
        strides: 1,
        activation: "leakyrelu",
        leakyreluAlpha: 0.1,
      }),
  ];
  const compute = () =>
    other.map((f) =>
      tf.tidy(() => {
        const x = tf.tensor4d(random([1, 8, 8, 4], 5), [1, 8, 8, 4]);
        const w = tf.tensor4d(random([3, 3, 4, 4], 6), [3, 3, 4, 4]);
        return f(x, w).dataSync() as Float32Array;
      })
    );
  await tf.setBackend("cpu");
  const want = compute();
  await tf.setBackend("wasm");
  useWasmConvKernels({ threads: 2 });
  try {
    const calls = wasmConvCalls();
    compute().forEach((got, i) => assertClose(got, want[i], `case ${i}`));
    assert.equal(wasmConvCalls(), calls, "none of them ran on our kernels");
  } finally {
    useStockWasmConvKernels();
    await tf.setBackend("cpu");
  }
});
