/**
 * Uncaptured WebGPU errors (core/kernels/webgpu_errors.ts): tfjs's ops run outside any error scope,
 * so an op WebGPU rejects leaves garbage and throws nothing; the Upscaler, the trainer's steps and
 * validation check for such errors after their read-backs and fail, naming the work. Runs on Mesa
 * llvmpipe on CPU-only machines; skipped, saying why, without an adapter.
 */
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import * as tf from "@tensorflow/tfjs-core";
import { UncapturedGPUError, watchUncapturedErrors } from "../core/kernels/webgpu_errors.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { Upscaler } from "../core/upscaler.ts";
import { Trainer } from "../train/trainer.ts";
import { makeBatch, makeValPairs } from "../train/data.ts";
import { checkpointPath, runTraining, validate } from "../train/train.ts";
import { readCheckpoint } from "../train/checkpoint.ts";
import { imageIoCodec } from "../train/codecs.ts";
import { encodeImage } from "../core/image_io.ts";
import { testImage, TINY } from "./train_helpers.ts";
import { bindGroupFault, setUpWebGPU } from "./webgpu_setup.ts";

const { opts } = await setUpWebGPU("the uncaptured WebGPU error tests");
const device = () => (tf.backend() as unknown as { device: GPUDevice }).device;
/** A call WebGPU rejects outside any scope: a buffer both mapped for reading and for writing. */
const invalidCall = () =>
  device().createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.MAP_WRITE });

Deno.test({
  ...opts,
  name: "watchUncapturedErrors: an error after the watch began fails its check with WebGPU's message",
  fn: async () => {
    // twenty times: the event arrives a turn of the event loop after the call, every time
    for (let i = 0; i < 20; i++) {
      const before = watchUncapturedErrors(device());
      invalidCall();
      const err = await before(`try ${i}`).then(() => undefined, (e) => e);
      const after = watchUncapturedErrors(device());
      assert.ok(err instanceof UncapturedGPUError, `try ${i}: no error seen`);
      assert.equal(err.count, 1);
      assert.match(
        err.message,
        new RegExp(
          `^WebGPU reported an error during try ${i}, whose results would be wrong: .*MAP_WRITE`,
          "i",
        ),
      );
      await after("after"); // began after the error arrived: passes
    }
    const check = watchUncapturedErrors(device());
    invalidCall(), invalidCall();
    await assert.rejects(check("two"), /WebGPU reported 2 errors during two/);
  },
});

Deno.test({
  ...opts,
  name: "watchUncapturedErrors without timer callbacks: an error made before the check still fails it",
  fn: async () => {
    // the upscaler's check: two immediates, not a timer (one is not enough after a timer's turn);
    // a hundred times, the call made in each phase of the event loop, with tfjs's work between
    for (let i = 0; i < 100; i++) {
      const check = watchUncapturedErrors(device(), { timerCallbacks: false });
      if (i % 4 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
      if (i % 4 === 1) await new Promise((resolve) => setImmediate(resolve));
      if (i % 4 === 2) await tf.zeros([4]).data();
      invalidCall();
      if (i % 3 === 1) await tf.zeros([4]).data();
      if (i % 5 === 2) await Promise.resolve();
      const err = await check(`try ${i}`).then(() => undefined, (e) => e);
      assert.ok(err instanceof UncapturedGPUError, `try ${i}: no error seen`);
      assert.equal(err.count, 1);
      await watchUncapturedErrors(device(), { timerCallbacks: false })("after"); // nothing new: passes
    }
  },
});

Deno.test({
  ...opts,
  name: "watchUncapturedErrors: a check sees an error made by a timer callback after the check began",
  fn: async () => {
    // the check's own timer and the callback run in the same turn, the callback after it (as in a
    // training run, the code after one step's losses while the check of the step ahead waits)
    for (let i = 0; i < 10; i++) {
      const check = watchUncapturedErrors(device());
      const verdict = check(`try ${i}`).then(() => undefined, (e) => e);
      setTimeout(invalidCall, 0);
      assert.ok((await verdict) instanceof UncapturedGPUError, `try ${i}: no error seen`);
    }
  },
});

Deno.test({
  ...opts,
  name: "webgpu upscaler: an error WebGPU reports on one of tfjs's ops fails the upscale, naming it",
  fn: async () => {
    const up = new Upscaler(
      new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 }, { seed: 2 }),
    );
    const x = tf.randomUniform([1, 12, 10, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    // tfjs's slice of a tile binds three entries (output, input, uniforms)
    const fault = bindGroupFault(device(), (n) => n === 3);
    try {
      const ok = await up.upscaleTensor(x, { tile: 6, tilePad: 2 }); // plans made, no fault
      fault.arm();
      await assert.rejects(
        up.upscaleTensor(x, { tile: 6, tilePad: 2 }),
        /WebGPU reported .* during the upscale of a 10x12 input, whose results would be wrong/,
      );
      fault.restore();
      const again = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
      assert.deepEqual(await again.data(), await ok.data());
      tf.dispose([ok, again]);
    } finally {
      fault.restore();
      x.dispose();
      up.dispose();
    }
  },
});

Deno.test({
  ...opts,
  name: "webgpu trainer: an error WebGPU reports during a step fails the step, naming it",
  fn: async () => {
    for (const plannedStep of [false, true]) {
      const t = Trainer.create({ ...TINY, plannedStep });
      const batch = makeBatch([testImage(1), testImage(2)], TINY, 0);
      const fault = bindGroupFault(device(), () => true);
      try {
        await t.trainStep(batch);
        // the planned step's bind groups were made with its plan: the fault must come from elsewhere
        if (plannedStep) {
          const check = t.trainStep(batch);
          invalidCall();
          await assert.rejects(check, /WebGPU reported an error during training step 2/);
        } else {
          fault.arm();
          await assert.rejects(
            t.trainStep(batch),
            /WebGPU reported .* during training step 2, whose results/,
          );
        }
      } finally {
        fault.restore();
        t.dispose();
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "webgpu validation: an error WebGPU reports fails it, naming the image",
  fn: async () => {
    const t = Trainer.create(TINY);
    const pairs = makeValPairs([testImage(3)], { scale: 4, crop: 0 });
    const fault = bindGroupFault(device(), () => true);
    try {
      const clean = await validate(t.g, pairs, {});
      assert.ok(clean.psnr > 0);
      fault.arm();
      await assert.rejects(validate(t.g, pairs, {}), /WebGPU reported .* during validation on test3\.png/);
    } finally {
      fault.restore();
      t.dispose();
    }
  },
});

Deno.test({
  ...opts,
  name: "webgpu training run: an error WebGPU reports while steps overlap stops it at the last good state",
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${tmp}/data`);
      for (const k of [1, 2, 3]) {
        const { width, height, rgb } = testImage(k);
        const data = new Uint8ClampedArray(width * height * 4).fill(255);
        for (let i = 0; i < width * height; i++) data.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
        await Deno.writeFile(
          `${tmp}/data/${k}.png`,
          await encodeImage({ width, height, data }, { format: "png" }),
        );
      }
      const steps: number[] = [];
      await assert.rejects(
        runTraining({
          // checkpoints at 2 and 4; steps 3 and 5 start before their predecessors' losses are read
          config: { ...TINY, totalSteps: 8, logEvery: 1, valEvery: 0, checkpointEvery: 2 },
          dataDir: `${tmp}/data`,
          outDir: `${tmp}/out`,
          noExport: true,
          codec: imageIoCodec,
          onStep: (step) => {
            steps.push(step);
            if (step === 3) invalidCall(); // while step 4 runs (started ahead of 3's losses)
          },
        }),
        /WebGPU reported an error during training step 4, .*; the last good state is .*checkpoint.* \(step 2\)/,
      );
      assert.deepEqual(steps, [1, 2, 3]);
      assert.equal((await readCheckpoint(checkpointPath(`${tmp}/out`))).step, 2);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
