/**
 * The CPU kernels (core/kernels/wasm_plan.ts on wasm/rrdb_cpu.c): the same forward as tfjs's ops
 * for every scale, odd sizes and channel counts that are no multiple of the kernels' 8-channel
 * blocks; the same bits on one thread and on several; batches; abort; a clear error when a patch
 * cannot fit; and the embedded module built from the C source in the tree.
 * (tests/pth_test.ts compares the kernels with PyTorch's outputs.)
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { ESRGAN_X4, RRDBNet, type RRDBNetConfig, upsamplings } from "../core/rrdbnet_arch.ts";
import { RRDBNetPlanWasm } from "../core/kernels/wasm_plan.ts";
import { IDLE_MS, KERNELS_SOURCE_SHA256 } from "../core/kernels/wasm_pool.ts";
import { sourceDigest } from "../core/kernels/wasm/digest.ts";

await initBackend("wasm", { threads: 1 });

const SMALL: RRDBNetConfig = { ...ESRGAN_X4, numFeat: 12, numGrowCh: 4, numBlock: 2 };

/**
 * A net whose dense blocks matter: BasicSR's initialisation scales them by 0.1, which would leave
 * a wrong residual scaling within the tolerance; here they get kaiming-normal's full size.
 */
async function testNet(config: RRDBNetConfig, seed: number): Promise<RRDBNet> {
  const init = new RRDBNet(config, { seed });
  const sd = await init.stateDict();
  init.dispose();
  for (const [name, t] of sd) {
    if (name.startsWith("body.")) {
      sd.set(name, {
        ...t,
        data: t.data.map((v) => v * 10),
      });
    }
  }
  return new RRDBNet(config, { weights: sd });
}

function input(shape: number[], seed: number): Float32Array {
  return tf.tidy(() => tf.randomUniform(shape, 0, 1, "float32", seed).dataSync() as Float32Array);
}

/** tfjs's forward (XNNPACK on wasm) of `net`. */
function reference(net: RRDBNet, x: Float32Array, shape: number[]): Float32Array {
  return tf.tidy(() =>
    net.apply(tf.tensor4d(x, shape as [number, number, number, number])).dataSync() as Float32Array
  );
}

function assertClose(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = 0, scale = 0;
  for (let i = 0; i < got.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  assert.ok(worst <= 1e-4 * scale + 1e-6, `${what}: max |Δ| ${worst} for max |ref| ${scale}`);
}

Deno.test("cpu kernels: the embedded module was built from core/kernels/wasm/rrdb_cpu.c", async () => {
  const source = await Deno.readFile(new URL("../core/kernels/wasm/rrdb_cpu.c", import.meta.url));
  assert.equal(KERNELS_SOURCE_SHA256, await sourceDigest(source), "stale build: run `deno task build:wasm`");
});

const clang = await new Deno.Command("clang-19", { args: ["--version"], stdout: "null" }).output().then(
  (r) => r.success,
  () => false,
);
if (!clang) console.warn("wasm_plan_test: no clang-19 here; the rebuild of the embedded module is skipped");

Deno.test({
  name: "cpu kernels: `deno task build:wasm` rebuilds the embedded module byte for byte (clang-19)",
  ignore: !clang,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const build = new URL("../core/kernels/wasm/build.ts", import.meta.url).pathname;
      const { success, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", build, "--out", `${dir}/rebuilt.ts`],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.ok(success, new TextDecoder().decode(stderr));
      const shipped = await Deno.readTextFile(
        new URL("../core/kernels/wasm/rrdb_cpu_wasm.ts", import.meta.url),
      );
      assert.ok(
        shipped === await Deno.readTextFile(`${dir}/rebuilt.ts`),
        "the committed module differs from a rebuild",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

for (const scale of [4, 2, 1] as const) {
  Deno.test(`cpu kernels: x${scale} net on odd sizes and channel counts matches tfjs's ops`, async () => {
    const config = { ...SMALL, scale };
    const net = await testNet(config, scale);
    const plan = new RRDBNetPlanWasm(net, { threads: 2 });
    try {
      const u = scale === 4 ? 1 : scale === 2 ? 2 : 4;
      for (const [h, w] of [[7 * u, 5 * u], [1 * u, 13 * u], [9 * u, 9 * u]]) {
        const shape = [1, h, w, 3];
        const x = input(shape, h * 31 + w);
        assertClose(await plan.run(x, shape), reference(net, x, shape), `x${scale} ${h}x${w}`);
      }
    } finally {
      plan.dispose();
      net.dispose();
    }
  });
}

Deno.test("cpu kernels: packing each conv's filters on every run gives the kept filters' bits", async () => {
  // conv_first with 3 channels is direct (its filters kept either way); every other conv Winograd
  const net = await testNet({ ...SMALL, numFeat: 16, numGrowCh: 8 }, 9);
  const kept = new RRDBNetPlanWasm(net, { threads: 2 });
  const each = new RRDBNetPlanWasm(net, { threads: 2, packEachRun: true, tailBandBytes: 1 });
  const banded = new RRDBNetPlanWasm(net, { threads: 2, tailBandBytes: 1 });
  try {
    for (const [h, w] of [[9, 7], [40, 12]]) {
      const shape = [1, h, w, 3], x = input(shape, h + w);
      const want = await kept.run(x, shape);
      assert.deepEqual(await each.run(x, shape), await banded.run(x, shape), `${h}x${w}: banded tail`);
      assertClose(await each.run(x, shape), want, `${h}x${w}`);
    }
    assertClose(
      await each.run(input([1, 9, 7, 3], 1), [1, 9, 7, 3]),
      reference(net, input([1, 9, 7, 3], 1), [1, 9, 7, 3]),
      "vs tfjs",
    );
  } finally {
    kept.dispose();
    each.dispose();
    banded.dispose();
    net.dispose();
  }
});

Deno.test("cpu kernels: the upsampled tail in bands of rows gives the whole patch's output", async () => {
  // tailBandBytes 1: the smallest bands (18 LR rows, 16 kept), so that a patch of 45 or more LR rows
  // has first, middle and last bands (the last moved up) and a band edge inside every upsampled level
  // (a halo of none, or level 1 without its neighbours' rows, fails it)
  const cases: [Partial<RRDBNetConfig>, number, number][] = [
    [{ scale: 4 }, 47, 5],
    [{ scale: 2 }, 2 * 45, 2 * 3],
    [{ scale: 1 }, 4 * 46, 4 * 1],
    [{ scale: 8, numUpsample: 3 }, 45, 3],
    [{ scale: 2, numUpsample: 1 }, 53, 5],
    [{ scale: 1, numUpsample: 0 }, 10, 3],
  ];
  for (const [more, h, w] of cases) {
    const config = { ...SMALL, ...more };
    const net = await testNet(config, h);
    const banded = new RRDBNetPlanWasm(net, { threads: 2, tailBandBytes: 1 });
    const whole = new RRDBNetPlanWasm(net, { threads: 2 });
    try {
      const shape = [1, h, w, 3];
      const x = input(shape, h * 7 + w);
      const what = `x${config.scale} (${upsamplings(config)} upsamplings) ${h}x${w}`;
      const b = await banded.run(x, shape);
      assertClose(b, await whole.run(x, shape), `${what}: bands against whole`);
      assertClose(b, reference(net, x, shape), `${what}: bands against tfjs`);
    } finally {
      banded.dispose();
      whole.dispose();
      net.dispose();
    }
  }
});

Deno.test("cpu kernels: a plan made from a state dict gives the tfjs net's plan's bits; bad weights are refused", async () => {
  const config = { ...SMALL, numFeat: 16, numGrowCh: 8 };
  const net = await testNet(config, 5);
  const weights = await net.stateDict();
  const fromNet = new RRDBNetPlanWasm(net, { threads: 2 });
  const fromWeights = new RRDBNetPlanWasm({ config, weights }, { threads: 2 });
  const each = new RRDBNetPlanWasm({ config, weights }, { threads: 2, packEachRun: true });
  try {
    const shape = [1, 11, 9, 3], x = input(shape, 4);
    const want = await fromNet.run(x, shape);
    assert.deepEqual(await fromWeights.run(x, shape), want);
    assert.deepEqual(await each.run(x, shape), want);
    const missing = new Map(weights);
    missing.delete("body.1.rdb2.conv3.bias");
    assert.throws(
      () => new RRDBNetPlanWasm({ config, weights: missing }),
      /weights lack body\.1\.rdb2\.conv3\.bias/,
    );
    const wrong = new Map(weights).set("conv_body.weight", weights.get("conv_first.weight")!);
    assert.throws(
      () => new RRDBNetPlanWasm({ config, weights: wrong }),
      /conv_body\.weight: weights have shape \[16,3,3,3\]/,
    );
  } finally {
    fromNet.dispose();
    fromWeights.dispose();
    each.dispose();
    net.dispose();
  }
});

Deno.test("cpu kernels: one thread and three give the same bits; a batch is its images", async () => {
  const net = await testNet({ ...SMALL, numFeat: 16, numGrowCh: 8 }, 9);
  const one = new RRDBNetPlanWasm(net, { inline: true });
  const three = new RRDBNetPlanWasm(net, { threads: 3 });
  try {
    assert.equal(one.threads, 1);
    assert.equal(three.threads, 3);
    const shape = [2, 11, 8, 3];
    const x = input(shape, 5);
    const a = await one.run(x, shape), b = await three.run(x, shape);
    assert.deepEqual(b, a);
    const second = await three.run(x.subarray(11 * 8 * 3), [1, 11, 8, 3]);
    assert.deepEqual(second, a.subarray(a.length / 2));
    assertClose(a, reference(net, x, shape), "batch of 2");
  } finally {
    one.dispose();
    three.dispose();
    net.dispose();
  }
});

Deno.test("cpu kernels: an abort stops the run and the plan runs again afterwards", async () => {
  const net = await testNet({ ...SMALL, numBlock: 6 }, 2);
  const plan = new RRDBNetPlanWasm(net, { threads: 2 });
  try {
    const shape = [1, 24, 24, 3];
    const x = input(shape, 1);
    const before = new AbortController();
    before.abort();
    await assert.rejects(plan.run(x, shape, { signal: before.signal }), { name: "AbortError" });
    const during = new AbortController();
    const run = plan.run(x, shape, { signal: during.signal });
    during.abort();
    await assert.rejects(run, { name: "AbortError" });
    assertClose(await plan.run(x, shape), reference(net, x, shape), "after aborts");
  } finally {
    plan.dispose();
    net.dispose();
  }
});

Deno.test("cpu kernels: a run reports the share of its work done while its threads run", async () => {
  const net = await testNet({ ...SMALL, numFeat: 32, numGrowCh: 16, numBlock: 4 }, 5);
  const plan = new RRDBNetPlanWasm(net, { threads: 2 });
  try {
    // a batch of two: the second image's shares come after one half
    const shape = [2, 48, 48, 3];
    const x = input(shape, 5);
    const shares: number[] = [];
    const out = await plan.run(x, shape, { onProgress: (share) => shares.push(share), progressMs: 1 });
    assert.ok(shares.length >= 4, `${shares.length} reports`);
    shares.forEach((v, i) => assert.ok(v >= 0 && v <= 1 && (i === 0 || v >= shares[i - 1]), `${shares}`));
    assert.ok(shares.some((v) => v > 0 && v < 0.5) && shares.some((v) => v > 0.5 && v < 1), `${shares}`);
    const count = shares.length;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(shares.length, count, "no reports after the run");
    assert.deepEqual(await plan.run(x, shape), out, "reporting changes nothing");
  } finally {
    plan.dispose();
    net.dispose();
  }
});

Deno.test("cpu kernels: idle workers stop and start again; a program that forgets dispose() ends", async () => {
  const net = await testNet(SMALL, 4);
  const plan = new RRDBNetPlanWasm(net, { threads: 2 });
  try {
    const shape = [1, 6, 5, 3];
    const x = input(shape, 3);
    const first = await plan.run(x, shape);
    await new Promise((r) => setTimeout(r, IDLE_MS + 300));
    assert.deepEqual(await plan.run(x, shape), first);
  } finally {
    plan.dispose();
    net.dispose();
  }
  // a program that ends without dispose(): its workers stop after IDLE_MS and let it end
  const dir = await Deno.makeTempDir();
  try {
    const pool = new URL("../core/kernels/wasm_pool.ts", import.meta.url).href;
    await Deno.writeTextFile(
      `${dir}/forgetful.ts`,
      `import { KernelPool } from "${pool}";\n` +
        `await new KernelPool({ threads: 2 }).run({ layers: 0, count: 0, stride: 0 });\nconsole.log("ran");\n`,
    );
    const t0 = performance.now();
    const { code, stdout } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${dir}/forgetful.ts`],
      stdout: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const secs = (performance.now() - t0) / 1000;
    assert.equal(code, 0);
    assert.equal(new TextDecoder().decode(stdout).trim(), "ran");
    assert.ok(secs < 30, `ended after ${secs.toFixed(1)} s`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cpu kernels: bad shapes and patches beyond wasm's 4 GiB get clear errors", async () => {
  const net = new RRDBNet({ ...SMALL, scale: 2 }, { seed: 1 });
  const plan = new RRDBNetPlanWasm(net, { threads: 1 });
  try {
    await assert.rejects(plan.run(new Float32Array(5 * 4 * 3), [1, 5, 4, 3]), /divisible by 2/);
    await assert.rejects(plan.run(new Float32Array(4 * 4), [1, 4, 4, 1]), /1 channels, the net wants 3/);
    await assert.rejects(plan.run(new Float32Array(7), [1, 4, 4, 3]), /7 values for \[1,4,4,3\]/);
    const big = [1, 6000, 6000, 3];
    await assert.rejects(
      plan.run(new Float32Array(6000 * 6000 * 3), big),
      /more than wasm's 4 GiB: use smaller tiles/,
    );
    // disposed while its Winograd filters are still being made (on the threads, in the background):
    // a run fails, it does not wait forever
    const early = new RRDBNetPlanWasm(net, { threads: 2 });
    early.dispose();
    await assert.rejects(early.run(new Float32Array(4 * 4 * 3), [1, 4, 4, 3]), /disposed/);
  } finally {
    plan.dispose();
    net.dispose();
  }
});
