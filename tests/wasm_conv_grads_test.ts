/**
 * train/wasm_conv_grads.ts: the wasm backend's convolution gradients built from its forward
 * convolution give the cpu backend's stock gradients, for every conv shape the discriminator and
 * VGG have (3x3 stride 1 "same", 4x4 stride 2 on an explicitly padded input, 3-channel inputs) and
 * for other strides and paddings, uneven sides included.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { initBackend } from "../core/backend.ts";
import { useFastWasmConvGrads, useStockWasmConvGrads } from "../train/wasm_conv_grads.ts";
import { Rng } from "../train/rng.ts";

await initBackend("cpu");
await initBackend("wasm", { threads: 2 });

interface Case {
  x: number[];
  k: [number, number];
  cout: number;
  stride: number | [number, number];
  pad: "same" | "valid" | number;
}
const CASES: Case[] = [
  { x: [2, 8, 8, 5], k: [3, 3], cout: 6, stride: 1, pad: "same" },
  { x: [2, 10, 10, 4], k: [4, 4], cout: 3, stride: 2, pad: "valid" },
  { x: [1, 9, 7, 3], k: [3, 3], cout: 4, stride: 1, pad: "same" },
  { x: [2, 11, 9, 2], k: [4, 4], cout: 3, stride: 2, pad: 1 },
  { x: [1, 9, 9, 2], k: [3, 3], cout: 2, stride: 2, pad: "same" },
  { x: [1, 12, 12, 3], k: [6, 6], cout: 2, stride: 3, pad: "valid" },
  { x: [1, 7, 6, 2], k: [2, 4], cout: 3, stride: 2, pad: "same" },
  { x: [1, 9, 8, 2], k: [3, 3], cout: 2, stride: [2, 1], pad: "valid" },
];

function random(shape: number[], seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.random() * 2 - 1);
}

/** dL/dx and dL/dW of L = Σ conv(x, W) ⊙ r on the current backend. */
function grads(c: Case): { dx: Float32Array; dw: Float32Array } {
  const wShape = [...c.k, c.x[3], c.cout];
  return tf.tidy(() => {
    const x = tf.tensor4d(random(c.x, 1), c.x as [number, number, number, number]);
    const w = tf.tensor4d(random(wShape, 2), wShape as [number, number, number, number]);
    const out = tf.conv2d(x, w, c.stride, c.pad);
    const r = tf.tensor(random(out.shape, 3), out.shape);
    const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad), r))
    )([x, w]);
    return { dx: dx.dataSync() as Float32Array, dw: dw.dataSync() as Float32Array };
  });
}

function assertClose(got: Float32Array, want: Float32Array, what: string) {
  assert.equal(got.length, want.length, `${what}: length`);
  const scale = Math.max(...want.map(Math.abs));
  const worst = Math.max(...want.map((v, i) => Math.abs(v - got[i])));
  assert.ok(worst <= 1e-5 * scale, `${what}: off by ${worst} (scale ${scale})`);
}

Deno.test("wasm conv gradients from forward convolutions equal the cpu backend's", async () => {
  await tf.setBackend("cpu");
  const want = CASES.map(grads);
  await tf.setBackend("wasm");
  useFastWasmConvGrads();
  try {
    const before = tf.memory().numTensors;
    CASES.forEach((c, i) => {
      const got = grads(c);
      const what = `x [${c.x}] k ${c.k} stride ${c.stride} pad ${c.pad}`;
      assertClose(got.dx, want[i].dx, `${what}: dx`);
      assertClose(got.dw, want[i].dw, `${what}: dW`);
    });
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
    const b = tf.backend() as unknown as { numDataIds(): number };
    const ids = b.numDataIds();
    grads(CASES[3]);
    assert.equal(b.numDataIds(), ids, "intermediate buffers leaked");
  } finally {
    useStockWasmConvGrads();
    await tf.setBackend("cpu");
  }
});

Deno.test("without them the wasm backend cannot take filter gradients (why they exist)", async () => {
  await tf.setBackend("wasm");
  try {
    assert.throws(() => grads(CASES[0]), /Conv2DBackpropFilter/);
  } finally {
    await tf.setBackend("cpu");
  }
});
