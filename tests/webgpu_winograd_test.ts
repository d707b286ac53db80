/**
 * Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions on WebGPU (core/kernels/webgpu_winograd.ts,
 * recorded by webgpu_conv_recorder.ts) against tfjs's stock conv2d: single convolutions with every
 * feature the plans use (two inputs, channel slices, upsampling, residuals, sides no multiple of
 * the tile; input gradients with flipped filters, scaling, residual paths, masks, accumulation),
 * every GEMM tiling, and a whole tiny RRDBNet plan; fp32 within 1e-4 relative.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { disableCustomWebGPUKernels, RRDBNetPlanWebGPU } from "../core/kernels/mod.ts";
import type { Conv3x3Spec } from "../core/kernels/webgpu_conv3x3.ts";
import { type PassBackend, PlannedPass } from "../core/kernels/webgpu_pass.ts";
import { winogradCanRun, type WinogradSize } from "../core/kernels/webgpu_winograd.ts";
import { ConvRecorder } from "../core/kernels/webgpu_conv_recorder.ts";
import type { FilterGradSpec } from "../core/kernels/webgpu_filter_grad.ts";
import { WinogradPlanner } from "../core/kernels/webgpu_winograd_planner.ts";
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

/** A convolution's tensors; `init`: what its output buffer holds before (accumulate, x0IsOutput). */
interface Tensors {
  x0?: tf.Tensor4D;
  x1?: tf.Tensor4D;
  filter: tf.Tensor4D;
  bias?: tf.Tensor1D;
  res2?: tf.Tensor4D;
  resA?: tf.Tensor4D;
  resB?: tf.Tensor4D;
  mask?: tf.Tensor4D;
  init?: tf.Tensor4D;
}

/** Random tensors for `spec` (x0 `x0C` channels wide, x1 `x1C`). */
function tensorsFor(spec: Conv3x3Spec, x0C?: number, x1C?: number): Tensors {
  const { n, h, w, cout } = spec;
  const inH = spec.upsample ? h / 2 : h, inW = spec.upsample ? w / 2 : w;
  const cin = spec.c0 + (spec.c1 ?? 0);
  const map = (c: number) => rand([n, h, w, c]) as tf.Tensor4D;
  return {
    x0: spec.x0IsOutput ? undefined : rand([n, inH, inW, x0C ?? spec.x0Stride]) as tf.Tensor4D,
    x1: spec.c1 ? rand([n, inH, inW, x1C ?? spec.c1]) as tf.Tensor4D : undefined,
    filter: tf.mul(rand(spec.flipTransposed ? [3, 3, cout, cin] : [3, 3, cin, cout]), 0.2) as tf.Tensor4D,
    bias: spec.bias ? rand([cout]) as tf.Tensor1D : undefined,
    res2: spec.res2Scale !== undefined ? map(spec.res2Stride ?? cout) : undefined,
    resA: spec.resA && map(spec.resA.stride),
    resB: spec.resB && map(spec.resB.stride),
    mask: spec.mask && map(spec.mask.stride),
    init: spec.accumulate || spec.x0IsOutput ? map(spec.outStride ?? cout) : undefined,
  };
}

/**
 * One convolution of `spec` recorded by ConvRecorder as Winograd F(m), its output buffer holding
 * `init` (or zeros) first. With `tiles`, once per GEMM tiling.
 */
async function winogradConv(
  spec: Conv3x3Spec,
  m: WinogradSize,
  t: Tensors,
  tiles = false,
): Promise<Float32Array[]> {
  const be = tf.backend() as unknown as PassBackend;
  const pass = new PlannedPass(be), setup = new PlannedPass(be);
  const bytes = spec.n * spec.h * spec.w * (spec.outStride ?? spec.cout) * 4;
  const opt = (x?: tf.Tensor) => x && bufferOf(x);
  try {
    const recorder = new ConvRecorder(pass, {
      precision: "f32",
      param: (name) => ({ buffer: bufferOf(name.endsWith(".weight") ? t.filter : t.bias!) }),
      candidates: tiles ? [{}] : [], // any: Winograd's GEMMs then get theirs
      winograd: { m, setup },
    });
    const out = pass.buffer(bytes);
    recorder.conv(spec, out, {
      x0: opt(t.x0),
      x1: opt(t.x1),
      weight: "conv",
      res2: opt(t.res2),
      resA: opt(t.resA),
      resB: opt(t.resB),
      mask: opt(t.mask),
    });
    assert.equal(recorder.winogradConvs, 1);
    setup.submitWithTfjs((e) => setup.record(e));
    const names = Object.values(pass.choiceGroups)[0] ?? ["built-in"];
    const results: Float32Array[] = [];
    for (const name of names) {
      if (tiles) pass.choose(Object.fromEntries(Object.keys(pass.choiceGroups).map((g) => [g, name])));
      pass.submitWithTfjs((e) => {
        if (t.init) e.copyBufferToBuffer(bufferOf(t.init), 0, out, 0, bytes);
        else e.clearBuffer(out);
        pass.record(e);
      });
      const copy = tf.tensor(
        { buffer: out },
        [spec.n, spec.h, spec.w, spec.outStride ?? spec.cout],
        "float32",
      );
      results.push((await copy.data()) as Float32Array);
      copy.dispose();
    }
    return results;
  } finally {
    pass.dispose();
    setup.dispose();
  }
}

/**
 * The same from tfjs's stock conv2d (the filter flipped and transposed for an input gradient) and
 * the epilogue spelled out in plain loops, in webgpu_conv3x3.ts's order.
 */
async function reference(spec: Conv3x3Spec, t: Tensors): Promise<Float32Array> {
  const src = spec.x0IsOutput ? t.init! : t.x0!;
  const off = spec.x0Offset ?? 0;
  const conv = tf.tidy(() => {
    let x = tf.slice(src, [0, 0, 0, off], [-1, -1, -1, spec.c0]);
    if (spec.c1) x = tf.concat([x, tf.slice(t.x1!, [0, 0, 0, 0], [-1, -1, -1, spec.c1])], 3);
    if (spec.upsample) x = tf.image.resizeNearestNeighbor(x, [spec.h, spec.w]);
    const filter = spec.flipTransposed ? tf.transpose(tf.reverse(t.filter, [0, 1]), [0, 1, 3, 2]) : t.filter;
    return tf.conv2d(x, filter as tf.Tensor4D, 1, "same");
  });
  const data = async (x?: tf.Tensor) => (x ? (await x.data()) as Float32Array : undefined);
  const y = (await data(conv))!;
  conv.dispose();
  const [bias, x0, res2, resA, resB, mask, init] = await Promise.all(
    [t.bias, src, t.res2, t.resA, t.resB, t.mask, t.init].map(data),
  );
  const { cout, activation = "linear", alpha = 0.2 } = spec;
  const stride = spec.outStride ?? cout, outOffset = spec.outOffset ?? 0;
  const out = init ? Float32Array.from(init) : new Float32Array(spec.n * spec.h * spec.w * stride);
  for (let p = 0; p < spec.n * spec.h * spec.w; p++) {
    for (let co = 0; co < cout; co++) {
      let v = y[p * cout + co] * (spec.accScale ?? 1);
      if (bias) v += bias[co];
      if (activation === "leakyrelu" && v < 0) v *= alpha;
      if (activation === "relu") v = Math.max(v, 0);
      if (spec.res1Scale !== undefined) v = v * spec.res1Scale + x0![p * spec.x0Stride + off + co];
      if (spec.res2Scale !== undefined) v = v * spec.res2Scale + res2![p * (spec.res2Stride ?? cout) + co];
      if (co < (spec.resLimit ?? cout)) {
        if (spec.resA) v += spec.resA.scale * resA![p * spec.resA.stride + co];
        if (spec.resB) v += spec.resB.scale * resB![p * spec.resB.stride + co];
      }
      if (spec.accumulate) v += init![p * stride + outOffset + co];
      const mk = spec.mask;
      if (mk && co >= mk.lo && co < mk.hi && mask![p * mk.stride + co - mk.lo + mk.offset] <= 0) v *= alpha;
      out[p * stride + outOffset + co] = v;
    }
  }
  return out;
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
  {
    what: "conv5's input gradient (flipped filter, scaled, both residual paths, mask)",
    spec: {
      n: 1,
      h: 5,
      w: 6,
      c0: 16,
      x0Stride: 16,
      cout: 48,
      flipTransposed: true,
      accScale: 0.04,
      resA: { scale: 0.2, stride: 16 },
      resB: { scale: 1, stride: 16 },
      resLimit: 16,
      mask: { lo: 40, hi: 48, stride: 32, offset: 24 },
      alpha: 0.2,
    },
  },
  {
    what: "a growth conv's input gradient (dy read from the output, accumulated, mask)",
    spec: {
      n: 2,
      h: 7,
      w: 5,
      c0: 8,
      x0Stride: 48,
      x0Offset: 40,
      x0IsOutput: true,
      cout: 40,
      outStride: 48,
      flipTransposed: true,
      accumulate: true,
      mask: { lo: 32, hi: 40, stride: 32, offset: 16 },
      alpha: 0.2,
    },
  },
];

for (const m of [2, 4] as const) {
  Deno.test(`winograd F(${m}x${m}): single convolutions match the stock ops`, opts, async () => {
    for (const { what, spec, x0C, x1C } of CASES) {
      assert.ok(winogradCanRun(spec), what);
      const t = tensorsFor(spec, x0C, x1C);
      // a growth conv reads the slices before its own: x1 is its output buffer in the plan, a copy here
      disableCustomWebGPUKernels();
      const want = await reference(spec, t);
      const tiles = what.startsWith("many") || what.startsWith("plain");
      const got = await winogradConv(spec, m, t, tiles);
      if (tiles) assert.ok(got.length > 2, `${what}: only ${got.length} GEMM tilings ran`);
      got.forEach((g, i) => {
        const e = relErr(g, want);
        assert.ok(e <= TOL, `${what}, F(${m}), tiling ${i}: relative error ${e}`);
      });
      tf.dispose(Object.values(t).filter((x): x is tf.Tensor => x !== undefined));
    }
    assert.deepEqual(gpuErrors, []);
  });
}

Deno.test("winograd: what cannot run as Winograd is said", opts, () => {
  const base = { n: 1, h: 4, w: 4, c0: 16, x0Stride: 16, cout: 16 };
  assert.ok(winogradCanRun(base));
  assert.ok(!winogradCanRun({ ...base, c0: 3, x0Stride: 3 }), "3 input channels");
  assert.ok(!winogradCanRun({ ...base, cout: 3 }), "3 output channels");
  assert.ok(winogradCanRun({ ...base, precision: "f16" }), "f16 (f16 storage, f32 arithmetic)");
  assert.ok(!winogradCanRun({ ...base, resA: { scale: 1, stride: 6 } }), "a residual of 6 channels");
  assert.ok(winogradCanRun({ ...base, flipTransposed: true, accumulate: true }), "input gradient");
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
      tf.dispose([x, want]);
      net.dispose();
    }
    assert.deepEqual(gpuErrors, []);
  },
);

Deno.test(
  "winograd filter gradients (F2, F4) match tfjs's autodiff of conv2d, and the bias's the sum of dy",
  opts,
  async () => {
    const be = tf.backend() as unknown as PassBackend;
    const cases: { what: string; spec: FilterGradSpec; dyC: number; x1C?: number }[] = [
      {
        what: "plain, scaled",
        spec: { n: 2, h: 7, w: 5, c0: 16, x0Stride: 16, cout: 8, scale: 0.2 },
        dyC: 8,
      },
      {
        what: "two inputs, dy a slice of a wider buffer",
        spec: {
          n: 1,
          h: 6,
          w: 9,
          c0: 16,
          x0Stride: 16,
          c1: 8,
          x1Stride: 32,
          cout: 8,
          dyStride: 48,
          dyOffset: 24,
        },
        dyC: 48,
        x1C: 32,
      },
      {
        what: "a dense block's widths: 128 channels in (several row tiles), 32 out",
        spec: {
          n: 2,
          h: 4,
          w: 4,
          c0: 64,
          x0Stride: 64,
          c1: 64,
          x1Stride: 128,
          cout: 32,
          dyStride: 192,
          dyOffset: 128,
        },
        dyC: 192,
        x1C: 128,
      },
      {
        what: "upsampling, 200 tiles (split over workgroups)",
        spec: { n: 2, h: 40, w: 38, c0: 12, x0Stride: 12, cout: 20, upsample: true },
        dyC: 20,
      },
    ];
    for (const m of [2, 4] as const) {
      for (const { what, spec, dyC, x1C } of cases) {
        const { n, h, w, cout } = spec;
        const inH = spec.upsample ? h / 2 : h, inW = spec.upsample ? w / 2 : w;
        const c = spec.c0 + (spec.c1 ?? 0);
        const x0 = rand([n, inH, inW, spec.x0Stride]) as tf.Tensor4D;
        const x1 = spec.c1 ? rand([n, inH, inW, x1C!]) as tf.Tensor4D : undefined;
        const dy = rand([n, h, w, dyC]) as tf.Tensor4D;
        const biasAt = 9 * c * cout;
        const want = tf.tidy(() => {
          let x = tf.slice(x0, [0, 0, 0, 0], [-1, -1, -1, spec.c0]);
          if (x1) x = tf.concat([x, tf.slice(x1, [0, 0, 0, 0], [-1, -1, -1, spec.c1!])], 3);
          if (spec.upsample) x = tf.image.resizeNearestNeighbor(x, [h, w]);
          const g = tf.slice(dy, [0, 0, 0, spec.dyOffset ?? 0], [-1, -1, -1, cout]);
          const dW = tf.grad((f) => tf.sum(tf.mul(tf.conv2d(x, f as tf.Tensor4D, 1, "same"), g)))(
            tf.zeros([3, 3, c, cout]),
          );
          return tf.mul(tf.concat([tf.reshape(dW, [-1]), tf.sum(g, [0, 1, 2])]), spec.scale ?? 1);
        });
        const pass = new PlannedPass(be), setup = new PlannedPass(be);
        try {
          const planner = new WinogradPlanner(pass, setup, { m });
          assert.ok(planner.canRunFilterGrad({ ...spec, biasAt }), what);
          const grad = pass.buffer((biasAt + cout) * 4);
          const v = planner.transformInput(spec, { x0: bufferOf(x0), x1: x1 && bufferOf(x1) });
          planner.filterGrad({ ...spec, biasAt }, { buffer: grad }, { v, dy: bufferOf(dy) });
          pass.submitWithTfjs((e) => pass.record(e));
          const got = tf.tensor({ buffer: grad }, [biasAt + cout], "float32");
          const e = relErr(await got.data(), await want.data());
          assert.ok(e <= TOL, `${what}, F(${m}): relative error ${e}`);
          got.dispose();
        } finally {
          pass.dispose();
          setup.dispose();
          tf.dispose([x0, dy, want, ...(x1 ? [x1] : [])]);
        }
      }
    }
    assert.deepEqual(gpuErrors, []);
  },
);
