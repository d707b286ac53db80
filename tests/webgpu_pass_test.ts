/**
 * Prepared passes (core/kernels/webgpu_pass.ts): recording a range of dispatches, and timing them on
 * the GPU's clock (timestamp queries at the ends of the compute pass), which the bench's profiles
 * and bench/kernel_sweep.ts rely on.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import assert from "node:assert/strict";
import { conv3x3Program } from "../core/kernels/webgpu_conv3x3.ts";
import { type PassBackend, PlannedPass } from "../core/kernels/webgpu_pass.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";

const { opts, gpuErrors } = await setUpWebGPU("webgpu pass tests");
const backend = () => tf.backend() as unknown as PassBackend;

/** A pass of `reps` copies of one 3x3 convolution (16 -> 16 channels on 1x16x16) labelled "conv", then one "other". */
function convPass(reps: number): PlannedPass {
  const pass = new PlannedPass(backend());
  const spec = { n: 1, h: 16, w: 16, c0: 16, x0Stride: 16, cout: 16 };
  const x = { buffer: pass.buffer(16 * 16 * 16 * 4) }, w = { buffer: pass.buffer(9 * 16 * 16 * 4) };
  const out = { buffer: pass.buffer(16 * 16 * 16 * 4) };
  for (let r = 0; r < reps; r++) pass.add(conv3x3Program(spec), out, [x, w], "conv");
  pass.add(conv3x3Program({ ...spec, cout: 8 }), out, [x, w], "other");
  return pass;
}

Deno.test(
  "pass timing: the GPU clock grows with the dispatches timed; the profile names its clock",
  opts,
  async () => {
    const gpu = backend().device.features.has("timestamp-query");
    if (!gpu) console.warn("pass timing: this device has no timestamp-query; timing submit to completion");
    const pass = convPass(8);
    try {
      const median = async (to: number) => {
        const t: number[] = [];
        for (let r = 0; r < 5; r++) t.push(await pass.time({ to }, gpu));
        return t.sort((a, b) => a - b)[2];
      };
      await median(1); // pipelines warm up
      const one = await median(1), eight = await median(8);
      assert.ok(one > 0, `one dispatch: ${one} ms`);
      // eight times the work in one pass: well over twice the time of one (launch costs aside)
      assert.ok(eight > 2 * one, `8 dispatches ${eight} ms vs 1: ${one} ms`);
      const profile = await pass.profile(3);
      assert.equal(profile.clock, gpu ? "gpu" : "wall");
      assert.deepEqual(profile.kernels.map((k) => [k.name, k.count]).sort(), [["conv", 8], ["other", 1]]);
      // the whole pass (9 dispatches) against one: timings on a loaded machine vary, the order does not
      assert.ok(profile.all_ms > 2 * one, `all ${profile.all_ms} ms vs one dispatch ${one} ms`);
    } finally {
      pass.dispose();
    }
    assert.deepEqual(gpuErrors, []);
  },
);
