/**
 * Our WebGPU kernels (core/kernels/) against tfjs's stock webgpu kernels on random inputs:
 * forward 3x3 convolutions, both gradients, the fused dense block / RRDBNet forward, Adam, the
 * enable/disable switch, and tensor leaks. Runs on any WebGPU adapter (Mesa llvmpipe here), so the
 * shapes are small; fp32 must agree within 1e-4 relative (max abs error / max abs reference).
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
// The gradient functions of tfjs's ops are registered by the union package, not by tfjs-core.
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import {
  adamUpdateWebGPU,
  applyCustomKernelsEnv,
  customKernelStats,
  customWebGPUKernelsEnabled,
  DEFAULT_FILTER_GRAD_VARIANT,
  disableCustomWebGPUKernels,
  enableCustomWebGPUKernels,
  FusedAdamWebGPU,
  fusedConv3x3,
  residualDenseBlock,
  rrdbnetForwardWebGPU,
  RRDBNetPlanWebGPU,
  setConvTileOverride,
  setFilterGradVariant,
} from "../core/kernels/mod.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import type { PlanWebGPUOptions } from "../core/kernels/webgpu_plan.ts";
import { PassArena } from "../core/kernels/webgpu_pass.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";
import { relErr as relErrOf } from "./train_plan_helpers.ts";

const { opts, gpuErrors } = await setUpWebGPU("webgpu kernel tests");
const TOL = 1e-4;

/** max |a - b| / max |b|. */
async function relErr(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  assert.deepEqual(a.shape, b.shape);
  return relErrOf(await a.data(), await b.data());
}

/** Runs `f` with the stock kernels, then with ours; checks leaks; returns both results' tensors. */
async function compare(what: string, f: () => tf.Tensor | tf.Tensor[], tol = TOL): Promise<void> {
  // Ours first: an output buffer our kernel failed to write, recycled from the stock run's
  // temporaries, could otherwise hold the right answer.
  enableCustomWebGPUKernels();
  const before = tf.memory().numTensors;
  const got = [f()].flat();
  assert.equal(tf.memory().numTensors, before + got.length, `${what}: our kernels leak tensors`);
  disableCustomWebGPUKernels();
  const ref = [f()].flat();
  for (let i = 0; i < ref.length; i++) {
    const e = await relErr(got[i], ref[i]);
    assert.ok(e <= tol, `${what} [output ${i}]: relative error ${e} > ${tol}`);
  }
  tf.dispose([...ref, ...got]);
}

let seed = 1;
const rand = (shape: number[]) => tf.randomNormal(shape, 0, 1, "float32", seed++);

// [n, h, w, cin, cout]: odd sizes, the real RRDBNet channel counts, a non-multiple of 4.
const SHAPES = [
  [1, 7, 7, 3, 64],
  [2, 7, 5, 64, 32],
  [1, 6, 9, 96, 32],
  [1, 5, 5, 160, 64],
  [1, 4, 6, 192, 64],
  [1, 7, 7, 32, 3],
  [1, 3, 5, 6, 5],
  [1, 1, 1, 8, 8],
];

Deno.test("forward: Conv2D and FusedConv2D (linear, relu, leakyrelu) match stock", opts, async () => {
  customKernelStats({ reset: true });
  for (const [n, h, w, ci, co] of SHAPES) {
    const x = rand([n, h, w, ci]) as tf.Tensor4D, f = rand([3, 3, ci, co]) as tf.Tensor4D, b = rand([co]);
    const shape = `${[n, h, w, ci]}->${co}`;
    await compare(`conv2d ${shape}`, () => tf.conv2d(x, f, 1, "same"));
    // Every activation on two shapes, leakyrelu (RRDBNet's) on all: shader compiles cost time on llvmpipe.
    const acts = co === 3 || ci === 96 ? ["linear", "relu", "leakyrelu"] as const : ["leakyrelu"] as const;
    for (const activation of acts) {
      await compare(
        `fused ${activation} ${shape}`,
        () =>
          tf.fused.conv2d({
            x,
            filter: f,
            bias: b,
            strides: 1,
            pad: "same",
            activation,
            leakyreluAlpha: 0.2,
          }),
      );
    }
    tf.dispose([x, f, b]);
  }
  const stats = customKernelStats();
  assert.equal(stats.custom.Conv2D, SHAPES.length);
  assert.equal(stats.custom.FusedConv2D, SHAPES.length + 4);
});

Deno.test("forward: every tiling (rows, reduction slices) gives the same result", opts, async () => {
  const tiles = [
    { ks: 1 },
    { bm: 64, bk: 32, ks: 2 },
    { bm: 32, bn: 64, bk: 8, ks: 4 },
    // register tiles of 8 rows and/or 8 channels per thread
    { bm: 64, bn: 64, bk: 16, ks: 1, tm: 8, tn: 8 },
    { bm: 32, bn: 32, bk: 16, ks: 2, tm: 8, tn: 4 },
    { bm: 32, bn: 32, bk: 8, ks: 4, tm: 4, tn: 8 },
    // the next chunk's loads in registers while the current one is multiplied
    { prefetch: true },
    { bm: 64, bn: 64, bk: 16, ks: 2, tm: 8, tn: 8, prefetch: true },
  ];
  try {
    for (const tile of tiles) {
      setConvTileOverride(tile);
      for (const [n, h, w, ci, co] of [SHAPES[2], SHAPES[4], SHAPES[5]]) {
        const x = rand([n, h, w, ci]) as tf.Tensor4D, f = rand([3, 3, ci, co]) as tf.Tensor4D, b = rand([co]);
        await compare(
          `tile ${JSON.stringify(tile)} ${[n, h, w, ci]}->${co}`,
          () => tf.fused.conv2d({ x, filter: f, bias: b, strides: 1, pad: "same", activation: "relu" }),
        );
        tf.dispose([x, f, b]);
      }
    }
  } finally {
    setConvTileOverride(null);
  }
});

Deno.test("forward: shapes we do not handle go to the stock kernel", opts, async () => {
  customKernelStats({ reset: true });
  const x = rand([1, 8, 8, 8]) as tf.Tensor4D;
  const f5 = rand([5, 5, 8, 4]) as tf.Tensor4D, f3 = rand([3, 3, 8, 4]) as tf.Tensor4D, b = rand([4]);
  await compare("5x5", () => tf.conv2d(x, f5, 1, "same"));
  await compare("stride 2", () => tf.conv2d(x, f3, 2, "same"));
  await compare("valid", () => tf.conv2d(x, f3, 1, "valid"));
  await compare(
    "elu",
    () => tf.fused.conv2d({ x, filter: f3, bias: b, pad: "same", strides: 1, activation: "elu" }),
  );
  const stats = customKernelStats();
  assert.equal(stats.custom.Conv2D ?? 0, 0);
  assert.equal(stats.stock.Conv2D, 3);
  assert.equal(stats.stock.FusedConv2D, 1);
  tf.dispose([x, f5, f3, b]);
});

Deno.test("gradients: Conv2DBackpropInput and Conv2DBackpropFilter match stock", opts, async () => {
  customKernelStats({ reset: true });
  // The last shape is big enough for the filter gradient to split its pixel reduction.
  for (const [n, h, w, ci, co] of [...SHAPES.slice(0, 7), [2, 16, 16, 32, 32]]) {
    const x = rand([n, h, w, ci]) as tf.Tensor4D, f = rand([3, 3, ci, co]) as tf.Tensor4D;
    const r = rand([n, h, w, co]);
    const g = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, "same"), r))
    );
    await compare(`grads ${[n, h, w, ci]}->${co}`, () => g([x, f]));
    tf.dispose([x, f, r]);
  }
  const stats = customKernelStats();
  assert.equal(stats.custom.Conv2DBackpropInput, 8);
  assert.equal(stats.custom.Conv2DBackpropFilter, 8);
});

Deno.test(
  "gradients: the input gradient (flipped filter) with prefetching tilings matches stock",
  opts,
  async () => {
    try {
      for (
        const tile of [{ prefetch: true }, { bm: 32, bn: 32, bk: 16, ks: 2, tm: 8, tn: 4, prefetch: true }]
      ) {
        setConvTileOverride(tile);
        for (const [n, h, w, ci, co] of [SHAPES[1], SHAPES[4], SHAPES[6]]) {
          const dy = rand([n, h, w, co]) as tf.Tensor4D, f = rand([3, 3, ci, co]) as tf.Tensor4D;
          await compare(
            `dx ${JSON.stringify(tile)} ${[n, h, w, ci]}->${co}`,
            () => tf.conv2dTranspose(dy, f, [n, h, w, ci], 1, "same"),
          );
          tf.dispose([dy, f]);
        }
      }
    } finally {
      setConvTileOverride(null);
    }
  },
);

const FILTER_GRAD_SHAPES = [[1, 7, 5, 64, 64], [2, 6, 9, 96, 32], [1, 5, 5, 6, 5], [2, 24, 24, 32, 64]];

Deno.test(
  "gradients: v2-v4 filter-gradient kernels (slices, tap-uniform tiles, more splits, 8x8 per thread) match stock",
  opts,
  async () => {
    try {
      const tilings = [
        ["v2", null],
        ["v3", null],
        ["v4", null],
        ["v4", { bk: 32, bn: 32, br: 16, ks: 4, tk: 8, tn: 4 }],
        ["v4", { bk: 32, bn: 32, br: 8, ks: 1, tk: 4, tn: 8 }],
      ] as const;
      for (const [variant, tile] of tilings) {
        setFilterGradVariant(variant, tile);
        // 64 input channels: tap-uniform tiles; 96 -> 32: four slices; the last splits its pixels too
        for (const [n, h, w, ci, co] of FILTER_GRAD_SHAPES) {
          const x = rand([n, h, w, ci]) as tf.Tensor4D, r = rand([n, h, w, co]);
          const f = rand([3, 3, ci, co]) as tf.Tensor4D;
          const g = tf.grad((b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(x, b as tf.Tensor4D, 1, "same"), r)));
          await compare(`${variant} ${JSON.stringify(tile)} filter grad ${[n, h, w, ci]}->${co}`, () => g(f));
          tf.dispose([x, f, r]);
        }
      }
    } finally {
      setFilterGradVariant(DEFAULT_FILTER_GRAD_VARIANT);
    }
  },
);

Deno.test("dense block and fused conv (upsample, residual) match the stock composition", opts, async () => {
  const [n, h, w, nf, gc] = [2, 5, 7, 16, 8];
  const x = rand([n, h, w, nf]) as tf.Tensor4D, skip = rand([n, h, w, nf]) as tf.Tensor4D;
  const filters = [0, 1, 2, 3, 4].map((c) =>
    tf.mul(rand([3, 3, nf + c * gc, c === 4 ? nf : gc]), 0.1) as tf.Tensor4D
  );
  const biases = [0, 1, 2, 3, 4].map((c) => rand([c === 4 ? nf : gc]) as tf.Tensor1D);
  const conv = (t: tf.Tensor4D, i: number, act: "linear" | "leakyrelu") =>
    tf.fused.conv2d({
      x: t,
      filter: filters[i],
      bias: biases[i],
      strides: 1,
      pad: "same",
      activation: act,
      leakyreluAlpha: 0.2,
    });
  disableCustomWebGPUKernels();
  const ref = tf.tidy(() => {
    const feats = [x];
    for (let c = 0; c < 4; c++) feats.push(conv(tf.concat(feats, 3), c, "leakyrelu"));
    const rdb = tf.add(tf.mul(conv(tf.concat(feats, 3), 4, "linear"), 0.2), x);
    return tf.add(tf.mul(rdb, 0.2), skip);
  });
  const before = tf.memory().numTensors;
  const got = residualDenseBlock(x, { filters, biases }, { skip });
  assert.equal(tf.memory().numTensors, before + 1);
  const e = await relErr(got, ref);
  assert.ok(e <= TOL, `dense block: relative error ${e}`);

  const f = rand([3, 3, nf, 12]) as tf.Tensor4D, b = rand([12]) as tf.Tensor1D;
  const res = rand([n, 2 * h, 2 * w, 12]) as tf.Tensor4D;
  const refUp = tf.tidy(() => {
    const up = tf.image.resizeNearestNeighbor(x, [2 * h, 2 * w]);
    const y = tf.fused.conv2d({
      x: up,
      filter: f,
      bias: b,
      strides: 1,
      pad: "same",
      activation: "leakyrelu",
      leakyreluAlpha: 0.2,
    });
    return tf.add(tf.mul(y, 0.5), res);
  });
  const gotUp = fusedConv3x3(x, f, {
    bias: b,
    activation: "leakyrelu",
    upsample: true,
    residual: res,
    residualScale: 0.5,
  });
  const eUp = await relErr(gotUp, refUp);
  assert.ok(eUp <= TOL, `upsample + residual conv: relative error ${eUp}`);
  tf.dispose([x, skip, ...filters, ...biases, ref, got, f, b, res, refUp, gotUp]);
});

const TINY: RRDBNetConfig[] = [
  { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 16, numBlock: 2, numGrowCh: 8 },
  { numInCh: 3, numOutCh: 3, scale: 2, numFeat: 12, numBlock: 1, numGrowCh: 6 },
];

Deno.test("RRDBNet (tiny): forward with our kernels and fused forward match stock", opts, async () => {
  for (const config of TINY) {
    const net = new RRDBNet(config, { seed: 3 });
    // BasicSR's init scales the body by 0.1 and zeroes biases, which would hide errors in the
    // dense blocks behind the trunk: make both matter.
    tf.tidy(() => {
      for (const [name, v] of net.params) {
        if (name.endsWith(".bias")) v.assign(tf.mul(rand(v.shape), 0.1));
        else if (name.startsWith("body.")) v.assign(tf.mul(v, 5));
      }
    });
    const x = tf.randomUniform([1, 8, 6, 3], 0, 1, "float32", 7) as tf.Tensor4D;
    await compare(`RRDBNet x${config.scale} (registered kernels)`, () => net.apply(x));
    disableCustomWebGPUKernels();
    const ref = net.apply(x);
    const before = tf.memory().numTensors;
    const got = rrdbnetForwardWebGPU(net, x);
    assert.equal(tf.memory().numTensors, before + 1, "rrdbnetForwardWebGPU leaks tensors");
    const e = await relErr(got, ref);
    assert.ok(e <= TOL, `rrdbnetForwardWebGPU x${config.scale}: relative error ${e}`);
    // The prepared plan, twice (bind groups reused) with different inputs.
    const plan = new RRDBNetPlanWebGPU(net, x.shape);
    for (const input of [x, tf.randomUniform(x.shape, 0, 1, "float32", 8) as tf.Tensor4D]) {
      const want = net.apply(input);
      const n0 = tf.memory().numTensors;
      const have = plan.run(input);
      assert.equal(tf.memory().numTensors, n0 + 1, "RRDBNetPlanWebGPU.run leaks tensors");
      const ep = await relErr(have, want);
      assert.ok(ep <= TOL, `RRDBNetPlanWebGPU x${config.scale}: relative error ${ep}`);
      // straight into host memory: the same values, no tensor
      assert.deepEqual(await plan.read(input), await have.data());
      assert.equal(tf.memory().numTensors, n0 + 1, "RRDBNetPlanWebGPU.read leaves tensors");
      tf.dispose([want, have]);
      if (input !== x) input.dispose();
    }
    plan.dispose();
    tf.dispose([x, ref, got]);
    net.dispose();
  }
});

Deno.test(
  "plans sharing an arena (a smaller one first, runs interleaved) give what plans of their own give",
  opts,
  async () => {
    const net = new RRDBNet({ ...TINY[0], numBlock: 2 }, { seed: 5 });
    tf.tidy(() => {
      for (const [name, v] of net.params) if (name.startsWith("body.")) v.assign(tf.mul(v, 5));
    });
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    const variants: PlanWebGPUOptions[] = [{}, { winograd: 4 }];
    if (device.features.has("shader-f16")) variants.push({ precision: "f16", winograd: 2 });
    for (const options of variants) {
      const shapes: [number, number, number, number][] = [[1, 6, 5, 3], [1, 10, 9, 3], [2, 7, 10, 3]];
      const inputs = shapes.map((s, i) => tf.randomUniform(s, 0, 1, "float32", 20 + i) as tf.Tensor4D);
      const own = shapes.map((s) => new RRDBNetPlanWebGPU(net, s, options));
      const want = await Promise.all(inputs.map((x, i) => own[i].run(x).array()));
      own.forEach((p) => p.dispose());
      const arena = new PassArena(device);
      const shared = shapes.map((s) => new RRDBNetPlanWebGPU(net, s, { ...options, arena }));
      // each plan's output read before the next runs; then in another order
      for (const order of [[0, 1, 2], [2, 0, 1, 0]]) {
        for (const i of order) {
          const y = shared[i].run(inputs[i]);
          assert.deepEqual(await y.array(), want[i], `${JSON.stringify(options)}: plan ${i}`);
          y.dispose();
        }
      }
      const kept = arena.bytes;
      shared.forEach((p) => p.dispose());
      arena.dispose();
      tf.dispose(inputs);
      assert.ok(kept > 0);
    }
    net.dispose();
    assert.deepEqual(gpuErrors, []);
  },
);

Deno.test(
  "a tuned plan times its tilings per shape, keeps one for each, and still matches stock",
  opts,
  async () => {
    const net = new RRDBNet(TINY[0], { seed: 4 });
    const x = tf.randomUniform([1, 8, 8, 3], 0, 1, "float32", 11) as tf.Tensor4D;
    disableCustomWebGPUKernels();
    const want = net.apply(x);
    const candidates = [{ prefetch: true }, { bm: 64, ks: 1, tm: 8, tn: 8 }];
    const plan = new RRDBNetPlanWebGPU(net, x.shape, { tune: candidates });
    try {
      const before = plan.run(x); // the built-in tilings until tune()
      const eb = await relErr(before, want);
      assert.ok(eb <= TOL, `untuned: relative error ${eb}`);
      const chosen = await plan.tune(1);
      // conv_first, 4 growth convs, conv5 with and without the RRDB's skip, conv_body, 2 upsampling, hr, last
      assert.equal(Object.keys(chosen).length, 12, JSON.stringify(chosen, null, 1));
      const names = new Set(["built-in", ...candidates.map((c) => JSON.stringify(c))]);
      for (const name of Object.values(chosen)) assert.ok(names.has(name), name);
      const after = plan.run(x);
      const ea = await relErr(after, want);
      assert.ok(ea <= TOL, `tuned (${[...new Set(Object.values(chosen))]}): relative error ${ea}`);
      tf.dispose([before, after]);
      // every candidate, applied to every shape that can take it, computes the same
      for (const name of names) {
        const pick = Object.fromEntries(
          Object.entries(plan.tilings).filter(([, n]) => n.includes(name)).map(([g]) => [g, name]),
        );
        plan.useTilings(pick);
        const got = plan.run(x);
        const e = await relErr(got, want);
        assert.ok(e <= TOL, `${name} on ${Object.keys(pick).length} shapes: relative error ${e}`);
        got.dispose();
      }
      assert.throws(() => plan.useTilings({ nope: "built-in" }), /no group nope/);
    } finally {
      plan.dispose();
      tf.dispose([x, want]);
      net.dispose();
    }
  },
);

Deno.test("RRDBNet (tiny, trainable): loss gradients with our kernels match stock", opts, async () => {
  const net = new RRDBNet(TINY[0], { seed: 5, trainable: true });
  const x = tf.randomUniform([2, 6, 6, 3], 0, 1, "float32", 9) as tf.Tensor4D;
  const y = tf.randomUniform([2, 24, 24, 3], 0, 1, "float32", 10) as tf.Tensor4D;
  const vars = [...net.params.values()];
  const step = () => {
    const { value, grads } = tf.variableGrads(
      () => tf.mean(tf.abs(tf.sub(net.apply(x), y))) as tf.Scalar,
      vars,
    );
    return [value, ...vars.map((v) => grads[v.name])];
  };
  // Near-zero gradients of some biases make a relative bound per tensor loose; use 1e-3 here.
  await compare("RRDBNet grads", step, 1e-3);
  tf.dispose([x, y]);
  net.dispose();
});

Deno.test("Adam: one fused dispatch per parameter matches tf.train.adam", opts, async () => {
  const shapes = [[5], [3, 3, 4, 8], [7, 3]];
  const init = shapes.map((s) => rand(s));
  const grads = [0, 1, 2].map(() => shapes.map((s) => rand(s)));
  const ref = init.map((t, i) => tf.variable(t.clone(), true, `ref${i}`));
  const ours = init.map((t, i) => tf.variable(t.clone(), true, `ours${i}`));
  const options = { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-7 };
  const adam = tf.train.adam(options.lr, options.beta1, options.beta2, options.eps);
  const fused = new FusedAdamWebGPU(options);
  const before = tf.memory().numTensors;
  for (const g of grads) {
    adam.applyGradients(ref.map((v, i) => ({ name: v.name, tensor: g[i] })));
    fused.applyGradients(Object.fromEntries(ours.map((v, i) => [v.name, g[i]])), ours);
  }
  // Two moment variables per parameter, nothing else.
  assert.equal(tf.memory().numTensors, before + 2 * shapes.length + 2 * shapes.length);
  for (let i = 0; i < shapes.length; i++) {
    const e = await relErr(ours[i], ref[i]);
    assert.ok(e <= TOL, `adam param ${i}: relative error ${e}`);
  }
  assert.throws(
    () => adamUpdateWebGPU(ours[0], grads[0][1], { m: ours[1], v: ours[1], options: { lr: 1, step: 1 } }),
    /differs/,
  );
  fused.dispose();
  adam.dispose();
  tf.dispose([...init, ...grads.flat(), ...ref, ...ours]);
});

Deno.test("switch: enable/disable and ESRGAN_CUSTOM_KERNELS", opts, () => {
  enableCustomWebGPUKernels();
  assert.ok(customWebGPUKernelsEnabled());
  disableCustomWebGPUKernels();
  assert.ok(!customWebGPUKernelsEnabled());
  customKernelStats({ reset: true });
  const x = rand([1, 4, 4, 4]) as tf.Tensor4D, f = rand([3, 3, 4, 4]) as tf.Tensor4D;
  tf.dispose(tf.conv2d(x, f, 1, "same"));
  assert.deepEqual(customKernelStats().custom, {}, "disabled, yet ours ran");
  const old = Deno.env.get("ESRGAN_CUSTOM_KERNELS");
  Deno.env.set("ESRGAN_CUSTOM_KERNELS", "1");
  assert.ok(applyCustomKernelsEnv());
  tf.dispose(tf.conv2d(x, f, 1, "same"));
  assert.equal(customKernelStats().custom.Conv2D, 1);
  Deno.env.set("ESRGAN_CUSTOM_KERNELS", "0");
  assert.ok(!applyCustomKernelsEnv());
  if (old === undefined) Deno.env.delete("ESRGAN_CUSTOM_KERNELS");
  else Deno.env.set("ESRGAN_CUSTOM_KERNELS", old);
  tf.dispose([x, f]);
});

Deno.test("no WebGPU validation errors were raised", opts, () => {
  assert.deepEqual(gpuErrors, []);
});
