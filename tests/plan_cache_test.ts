/**
 * The Upscaler's cache of prepared WebGPU forwards (core/plan_cache.ts): one plan per patch shape,
 * the latest MAX_PLANS kept, new plans once the weights change, "auto"'s timed choice kept per
 * number format, and plan errors handed over once. Mesa llvmpipe serves on CPU-only machines;
 * skipped, saying why, without an adapter.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { MAX_PLANS, PlanCache, type PlanSettings } from "../core/plan_cache.ts";

const probe = await probeWebGPU();
const ignore = !probe.adapter;
if (ignore) console.warn(`skipping the plan cache tests: ${probe.why}`);
else await initBackend("webgpu");

const tinyNet = () =>
  new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 }, { seed: 5 });

Deno.test({
  name: "PlanCache: one plan per shape, reused; the latest MAX_PLANS kept; new plans for new weights",
  ignore,
  fn: async () => {
    const settings: PlanSettings = { net: tinyNet(), precision: "f32", winograd: 0 };
    const cache = new PlanCache(settings);
    try {
      const a = cache.get([1, 8, 8, 3]);
      assert.equal(cache.get([1, 8, 8, 3]), a, "the same shape: the same plan");
      await cache.takeCheck();
      assert.equal(cache.takeCheck(), undefined, "a plan's check is handed over once");
      const b = cache.get([1, 8, 12, 3]);
      assert.notEqual(b, a);
      cache.get([1, 8, 8, 3]);
      assert.deepEqual(cache.kept, [b, a], "least recently used first");
      for (let k = 1; k <= MAX_PLANS; k++) cache.get([1, 4, 4 * k, 3]);
      assert.equal(cache.kept.length, MAX_PLANS);
      assert.ok(!cache.kept.includes(a) && !cache.kept.includes(b), "the oldest went");
      await cache.takeCheck();

      // a plan read the weights once: weights that change make it again, and its output follows them
      const x = tf.randomUniform([1, 8, 8, 3], 0, 1, "float32", 1) as tf.Tensor4D;
      const before = cache.get(x.shape);
      tf.tidy(() => {
        for (const v of settings.net.params.values()) v.assign(tf.mul(v, 1.5));
      });
      const after = cache.get(x.shape);
      assert.notEqual(after, before);
      await cache.takeCheck();
      const [got, want] = [after.run(x), settings.net.apply(x)];
      const d = tf.tidy(() => tf.max(tf.abs(tf.sub(got, want))));
      const diff = (await d.data())[0];
      d.dispose();
      assert.ok(diff < 1e-5, `new weights: max |Δ| ${diff}`);
      tf.dispose([x, got, want]);

      settings.winograd = 4;
      assert.notEqual(cache.get(x.shape), after, "another algorithm: another plan");
      await cache.takeCheck();
    } finally {
      cache.dispose();
      settings.net.dispose();
    }
    assert.equal(cache.kept.length, 0);
  },
});

Deno.test({
  name: "PlanCache: 'auto' times direct and Winograd once per number format and keeps the timed plan",
  ignore,
  fn: async () => {
    const settings: PlanSettings = { net: tinyNet(), precision: "f32", winograd: "auto" };
    const cache = new PlanCache(settings);
    try {
      assert.equal(cache.choice, undefined);
      assert.equal(cache.timedMs([[1, 8, 8, 3]]), undefined, "nothing timed yet");
      const shape = [1, 8, 8, 3];
      await cache.choose(shape);
      const choice = cache.choice!;
      assert.deepEqual(choice.timings.map((t) => t.winograd), [0, 4]);
      assert.deepEqual(choice.shape, shape);
      assert.equal(cache.kept.length, 1, "the chosen plan is kept");
      assert.equal(cache.get(shape), cache.kept[0], "and used for its shape");
      const ms = choice.timings.find((t) => t.winograd === choice.winograd)!.ms!;
      assert.ok(
        Math.abs(cache.timedMs([shape, [1, 16, 8, 3]])! - 2 * ms) < 1e-9,
        "scaled by the largest area",
      );
      await cache.choose(shape);
      assert.equal(cache.choice, choice, "timed once");
      settings.winograd = 0;
      assert.equal(cache.timedMs([shape]), undefined, "not chosen by timing");
    } finally {
      cache.dispose();
      settings.net.dispose();
    }
  },
});
