import * as tf from "@tensorflow/tfjs-core";
// tfjs-core alone registers no gradients (the @tensorflow/tfjs bundle does)
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../core/backend.ts";
import { useWasmConvKernels } from "../core/kernels/wasm_conv.ts";
import { useFastWasmConvGrads } from "../train/wasm_conv_grads.ts";
import {
  CAFFE_INPUT_SCALE,
  DEFAULT_VGG19_PATHS,
  PerceptualLoss,
  VGG19_WEIGHTS_ENV,
} from "../core/losses/perceptual_loss.ts";
import { existsSync } from "node:fs";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import {
  deepestVggConv,
  loadVgg19Weights,
  randomVgg19Weights,
  torchvisionIndex,
  VGG19_LAYERS,
  VGG19Features,
  VGG_INPUT_NORM,
} from "../core/vgg19_arch.ts";
import {
  decodeFloat,
  encodeFloat,
  parseSafetensors,
  serializeSafetensors,
} from "../core/weights/safetensors.ts";
import { needsShared, SHARED } from "./shared.ts";

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");
const HAS_WEBGPU = !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter());
if (!HAS_WEBGPU) console.warn("skipping the webgpu perceptual tests: no WebGPU adapter");
// wasm as the trainer runs it: VGG's convs on our CPU kernels (core/kernels/wasm_conv.ts)
const BACKENDS = [
  { name: "cpu" as const, ignore: false },
  { name: "wasm" as const, ignore: false },
  { name: "webgpu" as const, ignore: !HAS_WEBGPU },
];

async function startBackend(name: (typeof BACKENDS)[number]["name"]): Promise<void> {
  await initBackend(name);
  if (name === "wasm") useFastWasmConvGrads(), useWasmConvKernels();
}

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const PARTIAL = SHARED ? `${SHARED}/models/vgg19-partial/vgg19_conv1_1-conv3_4.safetensors` : "";
// tests/fixtures/make_vgg_fixture.py: a 6x5 image and conv1_1 references (torch and numpy)
const REF = (() => {
  const st = parseSafetensors(Deno.readFileSync(fixture("vgg_conv1_1_ref.safetensors")), "vgg_conv1_1_ref");
  return new Map([...st.tensors].map(([k, t]) => [k, { shape: t.shape, data: decodeFloat(t) }]));
})();
const image = () =>
  tf.tensor4d(REF.get("image")!.data, REF.get("image")!.shape as [number, number, number, number]);

/** |a − e| ≤ tol·(1 + |e|) + abs: `abs` covers float32 sums of large terms that cancel. */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
  abs = 0,
) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const bound = tol * (1 + Math.abs(expected[i])) + abs;
    assert.ok(Math.abs(actual[i] - expected[i]) <= bound, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

/** Runs `fn` with console.warn captured. */
async function captureWarnings<T>(fn: () => Promise<T>): Promise<{ result: T; warned: string[] }> {
  const warned: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => void warned.push(args.join(" "));
  try {
    return { result: await fn(), warned };
  } finally {
    console.warn = original;
  }
}

for (const backend of BACKENDS) {
  Deno.test({
    name: `vgg19: torchvision .pth and safetensors give PyTorch's conv1_1 (${backend.name})`,
    ignore: backend.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await startBackend(backend.name);
      const w = await loadVgg19Weights(fixture("vgg19_conv1_1.pth"));
      assert.equal(w.convention, "torchvision");
      assert.deepEqual([...w.convs.keys()], ["conv1_1"]);
      const vgg = new VGG19Features(w, ["conv1_1"]);
      const x = image();
      const f = vgg.apply(x).get("conv1_1")!;
      assert.deepEqual(f.shape, [1, 6, 5, 64]);
      assertClose(await f.data(), REF.get("torch_conv1_1")!.data, 1e-5, "torch conv1_1");

      // the same tensors as safetensors (OIHW, torchvision keys)
      const tensors = new Map();
      const { readPth } = await import("../core/import/pth.ts");
      for (const [k, t] of await readPth(Deno.readFileSync(fixture("vgg19_conv1_1.pth")))) {
        tensors.set(k, { dtype: "F32", shape: t.shape, bytes: encodeFloat(t.data, "F32") });
      }
      const tmp = await Deno.makeTempFile({ suffix: ".safetensors" });
      try {
        await Deno.writeFile(tmp, serializeSafetensors({ tensors, metadata: {} }));
        const w2 = await loadVgg19Weights(tmp);
        const vgg2 = new VGG19Features(w2, ["conv1_1"]);
        const f2 = vgg2.apply(x).get("conv1_1")!;
        assertClose(await f2.data(), REF.get("torch_conv1_1")!.data, 1e-5, "safetensors conv1_1");
        vgg2.dispose();
        f2.dispose();
      } finally {
        await Deno.remove(tmp);
      }
      assert.equal(torchvisionIndex("conv5_4"), 34);
      assert.equal(torchvisionIndex("conv3_4"), 16);
      tf.dispose([x, f]);
      vgg.dispose();
    },
  });

  Deno.test({
    name:
      `vgg19: partial Keras weights give numpy's conv1_1 and conv3_4, BGR planes as verification.txt (${backend.name})`,
    ignore: backend.ignore || needsShared("vgg19 partial weights"),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await startBackend(backend.name);
      const w = await loadVgg19Weights(PARTIAL);
      assert.equal(w.convention, "caffe");
      assert.equal(deepestVggConv(w), "conv3_4");
      assert.equal(w.convs.size, 8);
      // verification.txt prints conv1_1 filters 0 and 1 as B, G, R planes of 3x3; after the load-time
      // BGR→RGB fold, input channel 2 is B.
      const text = Deno.readTextFileSync(`${SHARED}/models/vgg19-partial/verification.txt`);
      const k = w.convs.get("conv1_1")!.kernel;
      for (const filter of [0, 1]) {
        const line = text.split("\n").find((l) => l.startsWith(`${filter} [[[`))!;
        const planes = JSON.parse(line.slice(2)) as number[][][];
        for (let c = 0; c < 3; c++) {
          for (let h = 0; h < 3; h++) {
            for (let x = 0; x < 3; x++) {
              const rgb = 2 - c;
              const got = k[((h * 3 + x) * 3 + rgb) * 64 + filter];
              // verification.txt rounds to 3 decimals
              assert.ok(Math.abs(got - planes[c][h][x]) <= 5e-4 + 1e-7, `plane ${c} (${h},${x}): ${got}`);
            }
          }
        }
      }
      const vgg = new VGG19Features(w, ["conv1_1", "relu1_1"]);
      const x = image();
      const feats = vgg.apply(x);
      const ref = REF.get("caffe_conv1_1")!.data;
      // caffe inputs are 0..255: 27 products of up to ~60 each, so float32 sums carry ~1e-4 of noise
      assertClose(await feats.get("conv1_1")!.data(), ref, 1e-5, "caffe conv1_1", 1e-3);
      const relu = ref.map((v) => Math.max(v, 0));
      assertClose(await feats.get("relu1_1")!.data(), relu, 1e-5, "caffe relu1_1", 1e-3);
      // deeper: conv1_1..conv3_4 with ReLUs and two poolings on an 8x8 image, against numpy
      const deep = new VGG19Features(w, ["conv3_4"]);
      const i8 = REF.get("image8")!;
      const x8 = tf.tensor4d(i8.data, i8.shape as [number, number, number, number]);
      const f34 = deep.apply(x8).get("conv3_4")!;
      assert.deepEqual(f34.shape, [1, 2, 2, 256]);
      const ref34 = REF.get("caffe_conv3_4")!.data;
      const scale = ref34.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assertClose(await f34.data(), ref34, 1e-5, "caffe conv3_4", 2e-5 * scale);
      tf.dispose([x, x8, f34, ...feats.values()]);
      vgg.dispose();
      deep.dispose();
    },
  });
}

Deno.test({
  name: "vgg19: relu and pool layers, fused or not, agree with conv outputs",
  ignore: needsShared("vgg19 layer names"),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await initBackend("cpu");
    const w = await loadVgg19Weights(PARTIAL);
    const i8 = REF.get("image8")!;
    const x = tf.tensor4d(i8.data, i8.shape as [number, number, number, number]);
    const all = new VGG19Features(w, ["pool1", "conv1_2", "relu1_2"]);
    assert.deepEqual(all.layers, ["conv1_2", "relu1_2", "pool1"]);
    const f = all.apply(x);
    const relu = tf.relu(f.get("conv1_2")!);
    assert.deepEqual(await f.get("relu1_2")!.data(), await relu.data());
    const pool = tf.maxPool(relu as tf.Tensor4D, 2, 2, "valid");
    assert.deepEqual(await f.get("pool1")!.data(), await pool.data());
    // only pool1 asked: conv1_2's ReLU is fused into the conv
    const fused = new VGG19Features(w, ["pool1"]);
    const fp = fused.apply(x).get("pool1")!;
    assertClose(await fp.data(), await pool.data(), 1e-6, "fused pool1");
    assert.throws(() => new VGG19Features(w, ["conv4_1"]), /conv4_1 needs convs that these weights lack/);
    tf.dispose([x, relu, pool, fp, ...f.values()]);
    all.dispose();
    fused.dispose();
  },
});

Deno.test({
  name: "perceptual loss: partial weights fall back to conv3_4 with a loud warning",
  ignore: needsShared("perceptual loss fallback"),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await initBackend("cpu");
    const varsBefore = Object.keys(tf.engine().registeredVariables).length;
    const { result: loss, warned } = await captureWarnings(() => PerceptualLoss.load({ weights: PARTIAL }));
    assert.equal(loss.layer, "conv3_4");
    assert.deepEqual(loss.layerWeights, { conv3_4: 1 });
    assert.match(loss.warning ?? "", /FALLBACK.*only up to conv3_4.*conv5_4 is replaced by conv3_4/s);
    assert.ok(warned.some((w) => w.includes(loss.warning!)), "the warning is printed");
    assert.equal(Object.keys(tf.engine().registeredVariables).length, varsBefore, "VGG holds no variables");

    const a = tf.randomUniform([1, 16, 16, 3], 0, 1, "float32", 1) as tf.Tensor4D;
    const b = tf.randomUniform([1, 16, 16, 3], 0, 1, "float32", 2) as tf.Tensor4D;
    assert.equal((await loss.apply(a, a).data())[0], 0);
    const l = (await loss.apply(a, b).data())[0];
    assert.ok(l > 0 && Number.isFinite(l), `loss ${l}`);
    assert.throws(() => loss.apply(a, tf.zeros([1, 8, 8, 3]) as tf.Tensor4D), /differ in shape/);
    loss.dispose();

    // several layers: kept where present, the deep one replaced; weights add up per layer
    const { result: multi } = await captureWarnings(() =>
      PerceptualLoss.load({
        weights: PARTIAL,
        layerWeights: { conv2_2: 0.5, conv5_4: 1 },
        perceptualWeight: 2,
      })
    );
    assert.deepEqual(multi.layerWeights, { conv2_2: 0.5, conv3_4: 1 });
    assert.equal(multi.layer, "conv3_4");
    // the loss is perceptual_weight · Σ w_l · mean|φ_l(a) − φ_l(b)|, as BasicSR's, here divided by the
    // caffe input's scale relative to torchvision's (these are Keras weights)
    const vgg = new VGG19Features(await loadVgg19Weights(PARTIAL), ["conv2_2", "conv3_4"]);
    const fa = vgg.apply(a), fb = vgg.apply(b);
    const l1 = async (k: string) => (await tf.mean(tf.abs(tf.sub(fa.get(k)!, fb.get(k)!))).data())[0];
    const expected = (2 * (0.5 * (await l1("conv2_2")) + (await l1("conv3_4")))) / CAFFE_INPUT_SCALE;
    const got = (await multi.apply(a, b).data())[0];
    assert.ok(Math.abs(got - expected) <= 1e-5 * expected, `${got} vs ${expected}`);
    multi.dispose();
    vgg.dispose();

    // asking for what the weights hold: no warning
    const { result: exact, warned: quiet } = await captureWarnings(() =>
      PerceptualLoss.load({ weights: PARTIAL, layerWeights: { conv3_4: 1 } })
    );
    assert.equal(exact.warning, undefined);
    assert.equal(quiet.length, 0);
    exact.dispose();
    tf.dispose([a, b, ...fa.values(), ...fb.values()]);
  },
});

Deno.test("perceptual loss: no weights → throws; allowRandom → warns; bad file → clear error", async () => {
  await initBackend("cpu");
  if (Deno.env.get(VGG19_WEIGHTS_ENV)) {
    console.warn(`skipping the no-weights case: $${VGG19_WEIGHTS_ENV} is set`);
  } else {
    await assert.rejects(() => PerceptualLoss.load({ searchPaths: [] }), /no VGG19 weights.*vgg:fetch/s);
    const { result: random, warned } = await captureWarnings(() =>
      PerceptualLoss.load({ searchPaths: [], allowRandom: true, layerWeights: { conv2_1: 1 } })
    );
    assert.match(random.warning ?? "", /RANDOM VGG19 WEIGHTS/);
    assert.ok(warned.some((w) => w.includes("RANDOM")));
    assert.equal(random.layer, "conv2_1");
    random.dispose();
  }
  // the default lookup takes the first file present: weights/ first, then ../shared's partial file
  const first = Deno.env.get(VGG19_WEIGHTS_ENV) ?? DEFAULT_VGG19_PATHS.find((p) => existsSync(p));
  if (first) {
    const { result: found } = await captureWarnings(() =>
      PerceptualLoss.load({ layerWeights: { conv1_1: 1 } })
    );
    assert.equal(found.source, first);
    found.dispose();
  }
  await assert.rejects(
    () => loadVgg19Weights(fixture("discriminator_ref.safetensors")),
    /discriminator_ref.safetensors: not VGG19 weights/,
  );
  await assert.rejects(
    () => loadVgg19Weights("/nonexistent/vgg19.pth"),
    /\/nonexistent\/vgg19.pth: cannot read/,
  );
  await assert.rejects(
    () => PerceptualLoss.load({ layerWeights: { conv9_9: 1 }, searchPaths: [], allowRandom: true }),
    /unknown VGG19 layer conv9_9/,
  );
});

for (const backend of BACKENDS) {
  Deno.test({
    name: `perceptual loss: gradients reach every parameter of a tiny RRDBNet, finite (${backend.name})`,
    ignore: backend.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await startBackend(backend.name);
      const { result: loss } = await captureWarnings(() =>
        SHARED
          ? PerceptualLoss.load({ weights: PARTIAL })
          : PerceptualLoss.load({ searchPaths: [], allowRandom: true, layerWeights: { conv3_4: 1 } })
      );
      assert.equal(loss.layer, "conv3_4");
      const g = new RRDBNet(
        { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 4, numBlock: 1, numGrowCh: 2 },
        { seed: 5, trainable: true },
      );
      // 16x16 SR: conv3_4 still sees 4x4 after two poolings, and the CPU backward stays short
      const lq = tf.randomUniform([1, 4, 4, 3], 0, 1, "float32", 1) as tf.Tensor4D;
      const gt = tf.randomUniform([1, 16, 16, 3], 0, 1, "float32", 2) as tf.Tensor4D;
      const { grads, value } = tf.variableGrads(() => loss.apply(g.apply(lq), gt), [...g.params.values()]);
      const v = (await value.data())[0];
      assert.ok(Number.isFinite(v) && v > 0, `loss ${v}`);
      for (const [name, p] of g.params) {
        const gr = await grads[p.name].data();
        assert.ok(gr.every(Number.isFinite), `${name}: non-finite gradient`);
        assert.ok(gr.some((e) => e !== 0), `${name}: zero gradient`);
      }
      tf.dispose([lq, gt, value, ...Object.values(grads)]);
      g.dispose();
      loss.dispose();
    },
  });
}

Deno.test("perceptual loss: HR features taken once, off the tape, give apply()'s loss and gradient", async () => {
  await initBackend("cpu");
  const loss = PerceptualLoss.fromWeights(randomVgg19Weights("conv2_2", 4), {
    layerWeights: { conv2_2: 1, conv1_2: 0.5 },
  });
  const sr = tf.randomUniform([2, 12, 12, 3], 0, 1, "float32", 3) as tf.Tensor4D;
  const hr = tf.randomUniform([2, 12, 12, 3], 0, 1, "float32", 4) as tf.Tensor4D;
  const before = tf.memory().numTensors;
  const features = loss.features(hr);
  assert.deepEqual([...features.keys()].sort(), ["conv1_2", "conv2_2"]);
  assert.equal(tf.memory().numTensors, before + 2, "only the used layers' features are kept");
  const f = (x: tf.Tensor) => loss.apply(x as tf.Tensor4D, hr);
  const g = (x: tf.Tensor) => loss.applyToFeatures(x as tf.Tensor4D, features);
  const [a, b] = [tf.valueAndGrad(f)(sr), tf.valueAndGrad(g)(sr)];
  assert.equal((await a.value.data())[0], (await b.value.data())[0]);
  assert.deepEqual(await a.grad.data(), await b.grad.data());
  assert.throws(() => loss.applyToFeatures(sr, new Map()), /no HR features of/);
  tf.dispose([sr, hr, a.value, a.grad, b.value, b.grad, ...features.values()]);
  loss.dispose();
});

Deno.test("vgg19: the input's gradient through the frozen convs equals tfjs's ops' own", async () => {
  await initBackend("cpu");
  const weights = randomVgg19Weights("conv2_2", 9);
  for (const c of weights.convs.values()) c.bias.forEach((_, i) => c.bias[i] = 0.1 * Math.sin(i)); // biases matter
  const layers = ["relu1_2", "conv2_2"]; // a fused ReLU and a raw conv
  const vgg = new VGG19Features(weights, layers);
  // the same net from plain ops: conv2d + bias, relu, max pool (tfjs's autodiff for each)
  const reference = (x: tf.Tensor4D) => {
    const norm = VGG_INPUT_NORM.torchvision;
    let h = tf.div(tf.sub(x, norm.mean), norm.std) as tf.Tensor4D;
    const out: tf.Tensor4D[] = [];
    for (const name of VGG19_LAYERS.slice(0, VGG19_LAYERS.indexOf("conv2_2") + 1)) {
      const c = weights.convs.get(name);
      if (c) h = tf.add(tf.conv2d(h, tf.tensor4d(c.kernel, c.shape), 1, "same"), tf.tensor1d(c.bias));
      else if (name.startsWith("relu")) h = tf.relu(h);
      else h = tf.maxPool(h, 2, 2, "valid");
      if (layers.includes(name)) out.push(h);
    }
    return out;
  };
  const x = tf.randomUniform([2, 10, 8, 3], 0, 1, "float32", 5) as tf.Tensor4D;
  const weighting = (fs: tf.Tensor4D[]) =>
    tf.addN(fs.map((f, i) => tf.sum(tf.mul(f, tf.sin(tf.mul(tf.range(0, f.size).reshape(f.shape), i + 1))))));
  const ours = tf.grad((v: tf.Tensor) => weighting([...vgg.apply(v as tf.Tensor4D).values()]))(x);
  const want = tf.grad((v: tf.Tensor) => weighting(reference(v as tf.Tensor4D)))(x);
  const [a, b] = [await ours.data(), await want.data()];
  const scale = Math.max(...b.map(Math.abs));
  const worst = Math.max(...a.map((v, i) => Math.abs(v - b[i])));
  assert.ok(worst <= 1e-5 * scale, `input gradient off by ${worst} (scale ${scale})`);
  tf.dispose([x, ours, want]);
  vgg.dispose();
});
