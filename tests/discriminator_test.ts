import * as tf from "@tensorflow/tfjs-core";
// tfjs-core alone registers no gradients (the @tensorflow/tfjs bundle does)
import "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../core/backend.ts";
import { DISCRIMINATOR_128, discriminatorShapes, VGGStyleDiscriminator } from "../core/discriminator_arch.ts";
import { raganDiscriminatorLoss } from "../core/losses/gan_loss.ts";
import { useWasmConvKernels } from "../core/kernels/wasm_conv.ts";
import { useFastWasmConvGrads } from "../train/wasm_conv_grads.ts";
import type { StateDict } from "../core/state_dict.ts";
import { decodeFloat, parseSafetensors } from "../core/weights/safetensors.ts";

// The reference: tests/fixtures/make_discriminator_fixture.py (PyTorch, input 32, numFeat 4, batch 2).
const FIXTURE = new URL("./fixtures/discriminator_ref.safetensors", import.meta.url);
const ref = (() => {
  const st = parseSafetensors(Deno.readFileSync(FIXTURE), "discriminator_ref.safetensors");
  const all = new Map([...st.tensors].map(([k, t]) => [k, { shape: t.shape, data: decodeFloat(t) }]));
  const pick = (prefix: string): StateDict =>
    new Map([...all].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
  return { all, weights: pick("w."), after: pick("after."), grads: pick("grad.") };
})();
const CONFIG = { numInCh: 3, numFeat: 4, inputSize: 32 };

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");
const HAS_WEBGPU = !!(await (navigator as { gpu?: GPU }).gpu?.requestAdapter());
if (!HAS_WEBGPU) console.warn("skipping the webgpu discriminator tests: no WebGPU adapter");
// wasm as the trainer runs it: its convs on our CPU kernels (core/kernels/wasm_conv.ts)
const BACKENDS = [
  { name: "cpu" as const, ignore: false },
  { name: "wasm" as const, ignore: false },
  { name: "webgpu" as const, ignore: !HAS_WEBGPU },
];

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const bound = tol + 10 * tol * Math.abs(expected[i]);
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= bound,
      `${what}: element ${i} is ${actual[i]}, PyTorch ${expected[i]} (tolerance ${tol} + 10·${tol}·|ref|)`,
    );
  }
}

Deno.test("discriminator: BasicSR's names and shapes at 128 and 256", () => {
  const s128 = discriminatorShapes(DISCRIMINATOR_128);
  // BasicSR: conv0_0 3→64 with bias, 4x4 convs without, 512·4·4 into linear1, 5 batch-norm stages
  assert.deepEqual(s128.get("conv0_0.weight"), [64, 3, 3, 3]);
  assert.deepEqual(s128.get("conv0_0.bias"), [64]);
  assert.equal(s128.has("conv0_1.bias"), false);
  assert.deepEqual(s128.get("conv0_1.weight"), [64, 64, 4, 4]);
  assert.deepEqual(s128.get("conv1_0.weight"), [128, 64, 3, 3]);
  assert.deepEqual(s128.get("conv3_0.weight"), [512, 256, 3, 3]);
  assert.deepEqual(s128.get("conv4_1.weight"), [512, 512, 4, 4]);
  assert.deepEqual(s128.get("bn4_1.running_var"), [512]);
  assert.deepEqual(s128.get("bn4_1.num_batches_tracked"), []);
  assert.deepEqual(s128.get("linear1.weight"), [100, 8192]);
  assert.deepEqual(s128.get("linear2.weight"), [1, 100]);
  assert.equal(s128.has("conv5_0.weight"), false);
  assert.equal([...s128.keys()].filter((k) => k.endsWith("running_mean")).length, 9);
  const s256 = discriminatorShapes({ ...DISCRIMINATOR_128, inputSize: 256 });
  assert.deepEqual(s256.get("conv5_1.weight"), [512, 512, 4, 4]);
  assert.deepEqual(s256.get("linear1.weight"), [100, 8192]);
  assert.throws(() => discriminatorShapes({ ...DISCRIMINATOR_128, inputSize: 96 }), /4·2\^k/);
});

for (const backend of BACKENDS) {
  Deno.test({
    name: `discriminator: forward, running stats and gradients match PyTorch (${backend.name})`,
    ignore: backend.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await initBackend(backend.name);
      // tfjs-wasm cannot take filter gradients without them (the trainer installs the same)
      if (backend.name === "wasm") useFastWasmConvGrads(), useWasmConvKernels();
      const d = new VGGStyleDiscriminator(CONFIG, { weights: ref.weights });
      // the state dict round-trips in PyTorch layout and order
      const sd = await d.stateDict();
      assert.deepEqual([...sd.keys()], [...ref.weights.keys()]);
      for (const [k, t] of ref.weights) assertClose(sd.get(k)!.data, t.data, 0, `stateDict ${k}`);

      const inp = ref.all.get("input")!;
      const x = tf.tensor4d(inp.data, inp.shape as [number, number, number, number]);
      const evalOut = d.apply(x, { training: false });
      assert.deepEqual(evalOut.shape, [2, 1]);
      assertClose(await evalOut.data(), ref.all.get("out_eval")!.data, 1e-5, "eval logits");
      const stillSame = await d.stateDict();
      assert.equal(stillSame.get("bn0_1.num_batches_tracked")!.data[0], 7, "eval must not move stats");

      // train mode: batch statistics; the forward happens inside variableGrads, as in the loop
      const names = [...d.params.keys()];
      const weightsOfLoss = tf.tensor2d([1, -2], [2, 1]);
      let trainOut: tf.Tensor | undefined;
      const { grads, value } = tf.variableGrads(() => {
        const y = d.apply(x, { training: true });
        trainOut = tf.keep(y.clone());
        return tf.sum(tf.mul(y, weightsOfLoss));
      }, [...d.params.values()]);
      assertClose(await trainOut!.data(), ref.all.get("out_train")!.data, 1e-5, "train logits");
      const expectLoss = ref.all.get("out_train")!.data[0] - 2 * ref.all.get("out_train")!.data[1];
      assertClose([(await value.data())[0]], [expectLoss], 1e-5, "loss");
      const after = await d.stateDict();
      for (const [k, t] of ref.after) {
        assertClose(after.get(k)!.data, t.data, 1e-5, `after train forward: ${k}`);
      }

      const byName = new Map(names.map((n) => [n, grads[d.params.get(n)!.name]]));
      for (const [k, t] of ref.grads) {
        if (k === "input") continue;
        const g = byName.get(k)!;
        const torchLayout = g.rank === 4 ? tf.transpose(g, [3, 2, 0, 1]) : g.rank === 2 ? tf.transpose(g) : g;
        assertClose(await torchLayout.data(), t.data, 2e-4, `grad ${k}`);
      }
      const gx = tf.grad((xx: tf.Tensor) =>
        tf.sum(tf.mul(d.apply(xx as tf.Tensor4D, { training: true, updateStats: false }), weightsOfLoss))
      )(x);
      assertClose(await gx.data(), ref.grads.get("input")!.data, 2e-4, "grad input");
      assert.equal((await d.stateDict()).get("bn0_1.num_batches_tracked")!.data[0], 8, "updateStats: false");

      assert.throws(() => d.apply(tf.zeros([1, 16, 16, 3]), { training: false }), /wants \[N, 32, 32, 3\]/);
      tf.dispose([x, evalOut, trainOut!, weightsOfLoss, value, gx, ...Object.values(grads)]);
      d.dispose();
    },
  });

  Deno.test({
    name: `discriminator: every RaGAN gradient of D is finite and non-zero (${backend.name})`,
    ignore: backend.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await initBackend(backend.name);
      if (backend.name === "wasm") useFastWasmConvGrads(), useWasmConvKernels();
      const d = new VGGStyleDiscriminator({ numFeat: 4, inputSize: 32 }, { seed: 3 });
      const real = tf.randomUniform([3, 32, 32, 3], 0, 1, "float32", 1) as tf.Tensor4D;
      const fake = tf.randomUniform([3, 32, 32, 3], 0, 1, "float32", 2) as tf.Tensor4D;
      const { grads, value } = tf.variableGrads(
        () => raganDiscriminatorLoss(d.apply(real, { training: true }), d.apply(fake, { training: true })),
        [...d.params.values()],
      );
      assert.ok(Number.isFinite((await value.data())[0]));
      assert.equal(Object.keys(grads).length, d.params.size);
      for (const [name, v] of d.params) {
        const g = await grads[v.name].data();
        assert.ok(g.every(Number.isFinite), `${name}: non-finite gradient`);
        assert.ok(g.some((e) => e !== 0), `${name}: zero gradient`);
      }
      tf.dispose([real, fake, value, ...Object.values(grads)]);
      d.dispose();
    },
  });
}
