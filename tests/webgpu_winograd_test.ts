/**
 * Winograd F(2x2, 3x3) and F(4x4, 3x3) forward convolutions on WebGPU
 * (core/kernels/webgpu_winograd.ts) against tfjs's stock ops: single convolutions with every
 * feature the plan uses (two inputs, channel slices, upsampling, residuals, sides no multiple of
 * the tile), every GEMM tiling, and a whole tiny RRDBNet plan; fp32 within 1e-4 relative.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import assert from "node:assert/strict";
import { disableCustomWebGPUKernels, RRDBNetPlanWebGPU } from "../core/kernels/mod.ts";
import type { Conv3x3Spec } from "../core/kernels/webgpu_conv3x3.ts";
import { type PassBackend, PlannedPass } from "../core/kernels/webgpu_pass.ts";
import {
  WINOGRAD_GEMM_CANDIDATES,
  winogradCanRun,
  WinogradPlanner,
  type WinogradSize,
} from "../core/kernels/webgpu_winograd.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";
import { relErr } from "./train_plan_helpers.ts";

const { opts, gpuErrors } = await setUpWebGPU("webgpu winograd tests");
const TOL = 1e-4;
let seed = 1;
const rand = (shape: number[]) => tf.randomNormal(shape, 0, 1, "float32", seed++);

/** The GPU buffer of a tensor (uploaded). */
function bufferOf(t: tf.Tensor): GPUBuffer {
  const be = tf.backend() as unknown as PassBackend;
  be.uploadToGPU(t.dataId);
  return be.tensorMap.get(t.dataId)!.resource as GPUBuffer;
}

/**
 * One convolution of `spec` run as Winograd F(m): x0 (and x1) read whole through their strides,
 * the output written into a zeroed buffer of outStride channels. With `tiles`, once per GEMM tiling.
 */
async function winogradConv(
  spec: Conv3x3Spec,
  m: WinogradSize,
  t: { x0: tf.Tensor; x1?: tf.Tensor; filter: tf.Tensor; bias: tf.Tensor; res2?: tf.Tensor; tiles?: boolean },
): Promise<Float32Array[]> {
  const be = tf.backend() as unknown as PassBackend;
  const pass = new PlannedPass(be), setup = new PlannedPass(be);
  const stride = spec.outStride ?? spec.cout;
  const outBytes = spec.n * spec.h * spec.w * stride * 4;
  try {
    const planner = new WinogradPlanner(pass, setup, {
      m,
      gemmCandidates: t.tiles ? WINOGRAD_GEMM_CANDIDATES : [],
    });
    const out = pass.buffer(outBytes);
    const x0 = bufferOf(t.x0);
    const v = planner.transformInput(spec, { x0, x1: t.x1 && bufferOf(t.x1) });
    planner.conv(spec, out, {
      v,
      x0,
      res2: t.res2 && bufferOf(t.res2),
      weight: { buffer: bufferOf(t.filter) },
      bias: { buffer: bufferOf(t.bias) },
    });
    setup.submitWithTfjs((e) => setup.record(e));
    const names = Object.values(pass.choiceGroups)[0] ?? ["built-in"];
    const results: Float32Array[] = [];
    for (const name of names) {
      if (t.tiles) pass.choose(Object.fromEntries(Object.keys(pass.choiceGroups).map((g) => [g, name])));
      pass.submitWithTfjs((e) => {
        e.clearBuffer(out);
        pass.record(e);
      });
      const copy = tf.tensor({ buffer: out }, [spec.n, spec.h, spec.w, stride], "float32");
      results.push((await copy.data()) as Float32Array);
      copy.dispose();
    }
    return results;
  } finally {
    pass.dispose();
    setup.dispose();
  }
}

/** The same convolution from tfjs's stock ops, as [n, h, w, outStride] with zeros outside the slice. */
function reference(
  spec: Conv3x3Spec,
  t: { x0: tf.Tensor4D; x1?: tf.Tensor4D; filter: tf.Tensor4D; bias: tf.Tensor1D; res2?: tf.Tensor4D },
): tf.Tensor4D {
  return tf.tidy(() => {
    const off = spec.x0Offset ?? 0;
    let x = tf.slice(t.x0, [0, 0, 0, off], [-1, -1, -1, spec.c0]);
    if (spec.c1) x = tf.concat([x, tf.slice(t.x1!, [0, 0, 0, 0], [-1, -1, -1, spec.c1])], 3);
    if (spec.upsample) x = tf.image.resizeNearestNeighbor(x, [spec.h, spec.w]);
    let y = tf.fused.conv2d({
      x,
      filter: t.filter,
      bias: t.bias,
      strides: 1,
      pad: "same",
      activation: spec.activation ?? "linear",
      leakyreluAlpha: spec.alpha ?? 0.2,
    }) as tf.Tensor4D;
    if (spec.res1Scale !== undefined) {
      y = tf.add(tf.mul(y, spec.res1Scale), tf.slice(t.x0, [0, 0, 0, off], [-1, -1, -1, spec.cout]));
    }
    if (spec.res2Scale !== undefined) {
      y = tf.add(tf.mul(y, spec.res2Scale), tf.slice(t.res2!, [0, 0, 0, 0], [-1, -1, -1, spec.cout]));
    }
    const outOffset = spec.outOffset ?? 0, stride = spec.outStride ?? spec.cout;
    return tf.pad(y, [[0, 0], [0, 0], [0, 0], [outOffset, stride - outOffset - spec.cout]]);
  });
}

// Sides that are no multiple of 2 or 4 (partial tiles), one-pixel images, the dense block's shapes.
const CASES: { what: string; spec: Conv3x3Spec; x0C?: number; x1C?: number }[] = [
  { what: "plain", spec: { n: 2, h: 7, w: 5, c0: 16, x0Stride: 16, cout: 8, bias: true } },
  { what: "1x1 image", spec: { n: 1, h: 1, w: 1, c0: 8, x0Stride: 8, cout: 4, bias: true } },
  {
    what: "growth conv (x1 slice, output slice, leakyrelu)",
    spec: {
      n: 1,
      h: 6,
      w: 9,
      c0: 16,
      x0Stride: 16,
      c1: 8,
      x1Stride: 32,
      cout: 8,
      outStride: 32,
      outOffset: 8,
      bias: true,
      activation: "leakyrelu",
      alpha: 0.2,
    },
    x1C: 32,
  },
  {
    what: "conv5 (two inputs, both residuals)",
    spec: {
      n: 1,
      h: 5,
      w: 6,
      c0: 16,
      x0Stride: 16,
      c1: 32,
      x1Stride: 32,
      cout: 16,
      bias: true,
      res1Scale: 0.2,
      res2Scale: 0.2,
    },
    x1C: 32,
  },
  {
    what: "upsampling conv, input channel slice",
    spec: {
      n: 1,
      h: 6,
      w: 10,
      c0: 12,
      x0Stride: 20,
      x0Offset: 4,
      cout: 12,
      bias: true,
      upsample: true,
      activation: "leakyrelu",
      alpha: 0.2,
    },
    x0C: 20,
  },
  {
    what: "many channels, 64 out (two column tiles of 32)",
    spec: { n: 1, h: 9, w: 9, c0: 96, x0Stride: 96, cout: 64, bias: true, res2Scale: 1 },
  },
];

for (const m of [2, 4] as const) {
  Deno.test(`winograd F(${m}x${m}): single convolutions match the stock ops`, opts, async () => {
    for (const { what, spec, x0C, x1C } of CASES) {
      assert.ok(winogradCanRun(spec), what);
      const inH = spec.upsample ? spec.h / 2 : spec.h, inW = spec.upsample ? spec.w / 2 : spec.w;
      const t = {
        x0: rand([spec.n, inH, inW, x0C ?? spec.x0Stride]) as tf.Tensor4D,
        x1: spec.c1 ? rand([spec.n, inH, inW, x1C ?? spec.c1]) as tf.Tensor4D : undefined,
        filter: tf.mul(rand([3, 3, spec.c0 + (spec.c1 ?? 0), spec.cout]), 0.2) as tf.Tensor4D,
        bias: rand([spec.cout]) as tf.Tensor1D,
        res2: spec.res2Scale !== undefined
          ? rand([spec.n, spec.h, spec.w, spec.cout]) as tf.Tensor4D
          : undefined,
      };
      // a growth conv reads the slices before its own: x1 is its output buffer in the plan, a copy here
      disableCustomWebGPUKernels();
      const want = reference(spec, t);
      const wantData = await want.data();
      const tiles = what.startsWith("many") || what.startsWith("plain");
      const got = await winogradConv(spec, m, { ...t, tiles });
      if (tiles) assert.ok(got.length > 2, `${what}: only ${got.length} GEMM tilings ran`);
      got.forEach((g, i) => {
        const e = relErr(g, wantData);
        assert.ok(e <= TOL, `${what}, F(${m}), tiling ${i}: relative error ${e}`);
      });
      tf.dispose([want, ...[t.x0, t.x1, t.filter, t.bias, t.res2].filter((v) => v !== undefined)]);
    }
    assert.deepEqual(gpuErrors, []);
  });
}

Deno.test("winograd: what cannot run as Winograd is said", opts, () => {
  const base = { n: 1, h: 4, w: 4, c0: 16, x0Stride: 16, cout: 16 };
  assert.ok(winogradCanRun(base));
  assert.ok(!winogradCanRun({ ...base, c0: 3, x0Stride: 3 }), "3 input channels");
  assert.ok(!winogradCanRun({ ...base, cout: 3 }), "3 output channels");
  assert.ok(!winogradCanRun({ ...base, precision: "f16" }), "f16");
  assert.ok(!winogradCanRun({ ...base, flipTransposed: true }), "input gradient");
});

Deno.test(
  "RRDBNet plan with Winograd (F2, F4) matches stock; dense blocks, body and upsampling run as Winograd",
  opts,
  async () => {
    const configs: RRDBNetConfig[] = [
      { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 16, numBlock: 2, numGrowCh: 8 },
      // growth 6: the dense blocks stay direct; the x2 net's unshuffled input (12 channels) is Winograd
      { numInCh: 3, numOutCh: 3, scale: 2, numFeat: 12, numBlock: 1, numGrowCh: 6 },
    ];
    for (const config of configs) {
      const net = new RRDBNet(config, { seed: 3 });
      // as in webgpu_kernels_test.ts: make the dense blocks and biases matter
      tf.tidy(() => {
        for (const [name, v] of net.params) {
          if (name.endsWith(".bias")) v.assign(tf.mul(rand(v.shape), 0.1));
          else if (name.startsWith("body.")) v.assign(tf.mul(v, 5));
        }
      });
      const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 7) as tf.Tensor4D;
      disableCustomWebGPUKernels();
      const want = net.apply(x);
      for (const m of [2, 4] as const) {
        const plan = new RRDBNetPlanWebGPU(net, x.shape, { winograd: m });
        try {
          // all but conv_last (3 channels), conv_first of the x4 net (3 channels), growth convs of 6
          const all = 1 + config.numBlock * 15 + 5;
          const direct = (config.scale === 4 ? 2 : 1) + (config.numGrowCh % 4 ? config.numBlock * 12 : 0);
          assert.equal(plan.winogradConvs, all - direct, `x${config.scale} F(${m})`);
          const n0 = tf.memory().numTensors;
          const got = plan.run(x);
          assert.equal(tf.memory().numTensors, n0 + 1, "leaks tensors");
          const e = relErr(await got.data(), await want.data());
          assert.ok(e <= TOL, `x${config.scale} F(${m}): relative error ${e}`);
          got.dispose();
        } finally {
          plan.dispose();
        }
      }
      assert.throws(
        () => new RRDBNetPlanWebGPU(net, x.shape, { winograd: 4, precision: "f16" }),
        /winograd runs in f32 only/,
      );
      tf.dispose([x, want]);
      net.dispose();
    }
    assert.deepEqual(gpuErrors, []);
  },
);
