/** The fast cpu Conv2DBackpropFilter agrees with tfjs's stock kernel on the shapes training uses. */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { initBackend } from "../core/backend.ts";
import { useFastCpuConvBackprop, useStockCpuConvBackprop } from "../train/cpu_kernels.ts";

await initBackend("cpu");

Deno.test("fast Conv2DBackpropFilter matches the stock kernel (same/valid pads, strides 1 and 2)", () => {
  const cases: {
    x: [number, number, number, number];
    f: [number, number, number, number];
    s: number;
    pad: "same" | "valid";
  }[] = [
    { x: [2, 9, 7, 5], f: [3, 3, 5, 6], s: 1, pad: "same" },
    { x: [3, 10, 10, 4], f: [4, 4, 4, 3], s: 2, pad: "valid" },
    { x: [1, 8, 8, 3], f: [3, 3, 3, 8], s: 2, pad: "same" },
  ];
  for (const c of cases) {
    const x = tf.randomNormal(c.x, 0, 1, "float32", 1) as tf.Tensor4D;
    const y = tf.conv2d(x, tf.zeros(c.f) as tf.Tensor4D, c.s, c.pad);
    const dy = tf.randomNormal(y.shape, 0, 1, "float32", 2) as tf.Tensor4D;
    // d/dfilter of sum(conv(x, filter) · dy) is Conv2DBackpropFilter(x, dy)
    const grad = () =>
      tf.tidy(() =>
        tf.grad((f: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(x, f as tf.Tensor4D, c.s, c.pad), dy)))(
          tf.zeros(c.f),
        )
      )
        .arraySync() as number[][][][];
    useStockCpuConvBackprop();
    const want = grad().flat(3);
    useFastCpuConvBackprop();
    const got = grad().flat(3);
    useStockCpuConvBackprop();
    const worst = Math.max(...want.map((w, i) => Math.abs(w - got[i]) / (1 + Math.abs(w))));
    assert.ok(worst < 1e-5, `${JSON.stringify(c)}: off by ${worst}`);
    tf.dispose([x, y, dy]);
  }
});
