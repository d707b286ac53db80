/**
 * Half precision on WebGPU (core/kernels/webgpu_f16.ts, the f16 forms of the 3x3 kernel and of the
 * prepared forward): the f32 <-> f16 conversion against JavaScript's Float16Array, each f16
 * convolution against our f32 kernel on the same f16-rounded inputs, tiny nets' f16 plans against
 * tfjs's ops, and the shipped x4plus in f16 against its f32 plan on a real photo. Runs where the
 * adapter has `shader-f16` (Mesa llvmpipe does); skipped, saying why, elsewhere.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import assert from "node:assert/strict";
import {
  castProgram,
  type ConvPrecision,
  hasShaderF16,
  RRDBNetPlanWebGPU,
  setConvTileOverride,
} from "../core/kernels/mod.ts";
import { conv3x3Forward, conv3x3Program, type Conv3x3Spec } from "../core/kernels/webgpu_conv3x3.ts";
import { fuseConvSpec } from "../core/kernels/webgpu_rrdb.ts";
import { type PassBackend, PlannedPass } from "../core/kernels/webgpu_pass.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { decodeImage } from "../core/image_io.ts";
import { DEFAULT_MODEL } from "../core/upscaler.ts";
import { relErr } from "./train_plan_helpers.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";

const setup = await setUpWebGPU("webgpu f16 tests");
const f16 = !setup.opts.ignore && hasShaderF16(tf.backend() as unknown as PassBackend);
if (!setup.opts.ignore && !f16) console.warn("skipping webgpu f16 tests: the adapter has no shader-f16");
const opts = { ...setup.opts, ignore: !f16 };

const backend = () => tf.backend() as unknown as PassBackend;
const bufferOf = (t: tf.Tensor) => {
  backend().uploadToGPU(t.dataId);
  return backend().tensorMap.get(t.dataId)!.resource as GPUBuffer;
};

/** Values as f16 would store them. */
const roundF16 = (a: ArrayLike<number>) => Float32Array.from(new Float16Array(Array.from(a)));

/** Runs the f16 form of `spec` on `inputs` (converted to f16 on the GPU) and reads back `count` values. */
async function convHalf(spec: Conv3x3Spec, inputs: tf.Tensor[], count: number): Promise<Float32Array> {
  const pass = new PlannedPass(backend());
  try {
    const halves = inputs.map((t) => {
      const buffer = pass.buffer(t.size * 2);
      pass.add(castProgram(t.size, "f16"), { buffer }, [{ buffer: bufferOf(t) }]);
      return { buffer };
    });
    const out = { buffer: pass.buffer(count * 2) }, out32 = { buffer: pass.buffer(count * 4) };
    pass.add(conv3x3Program(spec), out, halves);
    pass.add(castProgram(count, "f32"), out32, [out]);
    pass.submitWithTfjs((encoder) => pass.record(encoder));
    const t = tf.tensor({ buffer: out32.buffer }, [count], "float32");
    // tfjs reads back the whole buffer, whose size was rounded up to 16 bytes
    const data = ((await t.data()) as Float32Array).slice(0, count);
    t.dispose();
    return data;
  } finally {
    pass.dispose();
  }
}

Deno.test("f32 <-> f16 conversion rounds as Float16Array does, odd counts included", opts, async () => {
  const values = [0.1, -2.5, 65504, 70000, 1e-8, 6e-5, 1 / 3, 0, -0, 1234.567, 0.2];
  const x = tf.tensor1d(values);
  const pass = new PlannedPass(backend());
  const half = { buffer: pass.buffer(values.length * 2) }, back = { buffer: pass.buffer(values.length * 4) };
  pass.add(castProgram(values.length, "f16"), half, [{ buffer: bufferOf(x) }]);
  pass.add(castProgram(values.length, "f32"), back, [half]);
  pass.submitWithTfjs((encoder) => pass.record(encoder));
  const t = tf.tensor({ buffer: back.buffer }, [values.length], "float32");
  assert.deepEqual(Array.from((await t.data()).slice(0, values.length)), Array.from(roundF16(values)));
  tf.dispose([x, t]);
  pass.dispose();
});

// Specs the plans use: plain (vector loads), 3 input channels and 3 outputs (scalar loads), the
// dense block's conv5 with both residuals over two inputs, the upsampling conv.
const CASES: { name: string; spec: Conv3x3Spec; shapes: number[][] }[] = [
  {
    name: "64 -> 32, LeakyReLU",
    spec: {
      n: 2,
      h: 5,
      w: 7,
      c0: 64,
      x0Stride: 64,
      cout: 32,
      bias: true,
      activation: "leakyrelu",
      alpha: 0.2,
    },
    shapes: [[2, 5, 7, 64], [3, 3, 64, 32], [32]],
  },
  {
    name: "3 -> 16 and scalar loads",
    spec: { n: 1, h: 6, w: 5, c0: 3, x0Stride: 3, cout: 16, bias: true },
    shapes: [[1, 6, 5, 3], [3, 3, 3, 16], [16]],
  },
  {
    name: "32 -> 3",
    spec: { n: 1, h: 6, w: 5, c0: 32, x0Stride: 32, cout: 3, bias: true },
    shapes: [[1, 6, 5, 32], [3, 3, 32, 3], [3]],
  },
  {
    name: "dense conv5: x + growth, 0.2 residual and 0.2 skip",
    spec: fuseConvSpec({ n: 1, h: 5, w: 6 }, 16, 8, { resScale: 0.2, skipScale: 0.2 }),
    shapes: [[1, 5, 6, 16], [1, 5, 6, 32], [3, 3, 48, 16], [16], [1, 5, 6, 16]],
  },
  {
    name: "upsampling conv, LeakyReLU",
    spec: {
      n: 1,
      h: 8,
      w: 6,
      c0: 16,
      x0Stride: 16,
      cout: 16,
      bias: true,
      activation: "leakyrelu",
      upsample: true,
    },
    shapes: [[1, 4, 3, 16], [3, 3, 16, 16], [16]],
  },
];

// Relative to the largest output: f16 sums over up to 9·192 products drift further than f32 sums
// of f16 products, which are off by one rounding of the result.
const CONV_TOL: Record<ConvPrecision, number> = { "f32": 1e-4, "f16": 5e-3, "f16-f32acc": 1e-3 };

Deno.test("f16 3x3 convolutions equal the f32 kernel on f16-rounded inputs, every tiling", opts, async () => {
  let seed = 11;
  try {
    const tiles = [
      null,
      { ks: 1 },
      { bm: 32, bn: 16, bk: 8, ks: 4 },
      { bm: 64, bn: 32, ks: 2, tm: 8, tn: 8 },
      { prefetch: true },
    ];
    for (const tile of tiles) {
      setConvTileOverride(tile);
      for (const { name, spec, shapes } of CASES) {
        const inputs = shapes.map((s) => tf.randomNormal(s, 0, 1, "float32", seed++));
        const rounded = await Promise.all(
          inputs.map(async (t) => tf.tensor(roundF16(await t.data()), t.shape)),
        );
        const count = spec.n * spec.h * spec.w * spec.cout;
        const ref = conv3x3Forward(backend(), spec, { inputs: rounded });
        const want = (await tf.engine().makeTensorFromTensorInfo(ref).data()) as Float32Array;
        for (const precision of ["f16", "f16-f32acc"] as const) {
          const got = await convHalf({ ...spec, precision }, inputs, count);
          const e = relErr(got, want);
          assert.ok(
            e <= CONV_TOL[precision],
            `${name} ${precision} tile ${JSON.stringify(tile)}: error ${e}`,
          );
        }
        tf.dispose([...inputs, ...rounded]);
        backend().disposeData(ref.dataId);
      }
    }
  } finally {
    setConvTileOverride(null);
  }
});

Deno.test(
  "f16 plans of tiny nets (x4, x2), direct and Winograd F(2x2), follow tfjs's f32 ops",
  opts,
  async () => {
    for (
      const config of [
        { numInCh: 3, numOutCh: 3, scale: 4 as const, numFeat: 16, numBlock: 2, numGrowCh: 8 },
        { numInCh: 3, numOutCh: 3, scale: 2 as const, numFeat: 12, numBlock: 1, numGrowCh: 6 },
      ]
    ) {
      const net = new RRDBNet(config, { seed: 5 });
      // make the dense blocks matter next to the trunk (BasicSR's init scales them by 0.1)
      tf.tidy(() => {
        for (const [name, v] of net.params) if (name.startsWith("body.")) v.assign(tf.mul(v, 5));
      });
      const x = tf.randomUniform([1, 8, 6, 3], 0, 1, "float32", 7) as tf.Tensor4D;
      const want = (await tf.tidy(() => net.apply(x)).data()) as Float32Array;
      for (const precision of ["f16", "f16-f32acc"] as const) {
        // and with Winograd F(2x2) and F(4x4): f16 maps, filters, V and U, f32 arithmetic
        for (const winograd of [undefined, 2, 4] as const) {
          const plan = new RRDBNetPlanWebGPU(net, x.shape, { precision, winograd });
          if (winograd) assert.ok(plan.winogradConvs > 5, `${plan.winogradConvs} Winograd convolutions`);
          const before = tf.memory().numTensors;
          const y = plan.run(x);
          assert.equal(tf.memory().numTensors, before + 1, "the f16 plan leaks tensors");
          const e = relErr((await y.data()) as Float32Array, want);
          assert.ok(
            e <= 5e-3,
            `x${config.scale} ${precision}${winograd ? ` winograd ${winograd}` : ""}: error ${e}`,
          );
          y.dispose();
          plan.dispose();
        }
      }
      x.dispose();
      net.dispose();
    }
  },
);

Deno.test(
  "the shipped x4plus in f16 stays within f16 rounding of its f32 plan on a photo",
  opts,
  async () => {
    const model = decodeModelFile(await Deno.readFile(DEFAULT_MODEL));
    const net = new RRDBNet(model.config, { weights: model.stateDict });
    const img = await decodeImage(await Deno.readFile(new URL("../samples/spaniel.png", import.meta.url)));
    const side = 16, px = new Float32Array(side * side * 3);
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        for (let c = 0; c < 3; c++) {
          px[(y * side + x) * 3 + c] = img.data[((y + 20) * img.width + x + 20) * 4 + c] / 255;
        }
      }
    }
    const x = tf.tensor4d(px, [1, side, side, 3]);
    const run = async (precision: ConvPrecision, winograd?: 4, winogradHalfMath?: boolean) => {
      const plan = new RRDBNetPlanWebGPU(net, x.shape, { precision, winograd, winogradHalfMath });
      const y = plan.run(x);
      const data = (await y.data()) as Float32Array;
      y.dispose();
      plan.dispose();
      return data.map((v) => Math.min(1, Math.max(0, v)));
    };
    const ref = await run("f32");
    // f16 measured 63.3-63.5 dB, f16-f32acc 71.4 dB, f16 with Winograd F(4x4) 64.0 dB (f16-f32acc
    // 63.9), and with its GEMMs' products in f16 too (winogradHalfMath) 57.4 dB here: a dropped tap or
    // residual falls far below
    const cases = [
      ["f16", undefined, 55],
      ["f16-f32acc", undefined, 60],
      ["f16", 4, 55],
      ["f16-f32acc", 4, 55],
      ["f16", 4, 52, true],
    ] as const;
    let storageOnly: Float32Array | undefined;
    for (const [precision, winograd, floor, halfMath] of cases) {
      const got = await run(precision, winograd, halfMath);
      if (precision === "f16" && winograd && !halfMath) storageOnly = got;
      // f16 products round differently from f32 ones: the same output would mean they did not run
      if (halfMath) assert.notDeepEqual(got, storageOnly, "winogradHalfMath gave f32 products' output");
      let se = 0;
      for (let i = 0; i < ref.length; i++) se += (got[i] - ref[i]) ** 2;
      const psnr = 10 * Math.log10(ref.length / se);
      const what = `x4plus ${precision}${winograd ? ` winograd ${winograd}` : ""}${
        halfMath ? " f16 products" : ""
      }`;
      console.log(`${what}: ${psnr.toFixed(2)} dB against f32`);
      assert.ok(psnr >= floor, `${what}: ${psnr.toFixed(2)} dB against f32, want >= ${floor}`);
    }
    x.dispose();
    net.dispose();
  },
);

Deno.test("no WebGPU validation errors were raised (f16)", opts, () => {
  assert.deepEqual(setup.gpuErrors, []);
});
