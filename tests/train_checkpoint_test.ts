/**
 * Checkpoint files: everything round-trips; a write killed midway (a half-written temp file, or a
 * writer process SIGKILLed during a write) always leaves a loadable checkpoint; a torn file is
 * rejected with a clear error.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { Adam } from "../train/adam.ts";
import {
  type CheckpointSource,
  decodeCheckpoint,
  encodeCheckpoint,
  readCheckpoint,
  removeStaleTemps,
  writeFileAtomic,
} from "../train/checkpoint.ts";
import type { StateDict } from "../core/state_dict.ts";

await initBackend("cpu");

async function checkpointBytes(
  step: number,
  floats = 16,
  more: Partial<CheckpointSource> = {},
): Promise<Uint8Array> {
  const sd: StateDict = new Map([["conv.weight", {
    shape: [floats],
    data: Float32Array.from({ length: floats }, (_, i) => i * step),
  }]]);
  const p = tf.variable(tf.ones([2, 2]));
  const adam = new Adam(new Map([["w", p]]));
  adam.t = step;
  adam.m.get("w")!.assign(tf.fill([2, 2], step));
  const bytes = await encodeCheckpoint({
    step,
    config: { stage: "psnr", emaDecay: 0.999 },
    rng: { seed: 3 },
    netG: sd,
    netGEma: sd,
    optimizerG: adam,
    ...more,
  });
  adam.dispose();
  p.dispose();
  return bytes;
}

Deno.test("a checkpoint round-trips step, config, RNG, weights, Adam state and the loss scaling", async () => {
  const c = decodeCheckpoint(await checkpointBytes(5));
  assert.equal(c.step, 5);
  assert.deepEqual(c.config, { stage: "psnr", emaDecay: 0.999 });
  assert.deepEqual(c.rng, { seed: 3 });
  assert.deepEqual(Array.from(c.netG.get("conv.weight")!.data.slice(0, 3)), [0, 5, 10]);
  assert.equal(c.optimizerG.t, 5);
  assert.deepEqual(Array.from(c.optimizerG.expAvg.get("w")!), [5, 5, 5, 5]);
  assert.equal(c.netD, undefined);
  assert.equal(c.gradScalerG, undefined, "an f32 run's has no loss scaling");
  const scaler = { scale: 2 ** 13, growthTracker: 417 };
  assert.deepEqual(
    decodeCheckpoint(await checkpointBytes(5, 16, { gradScalerG: scaler })).gradScalerG,
    scaler,
  );
});

Deno.test("a half-written temp file leaves the previous checkpoint loadable, and is cleaned up", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/checkpoint.safetensors`;
  await writeFileAtomic(path, await checkpointBytes(1));
  const next = await checkpointBytes(2, 100000);
  await Deno.writeFile(`${path}.12345.tmp`, next.subarray(0, next.length >> 1)); // the writer died here
  assert.equal((await readCheckpoint(path)).step, 1);
  assert.deepEqual(await removeStaleTemps(path), ["checkpoint.safetensors.12345.tmp"]);
  // a torn checkpoint itself (what a non-atomic write would leave) is refused with a reason
  await Deno.writeFile(`${dir}/torn.safetensors`, next.subarray(0, next.length - 1000));
  await assert.rejects(readCheckpoint(`${dir}/torn.safetensors`), /torn.safetensors: .*(truncated|outside)/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a writer SIGKILLed while rewriting a checkpoint leaves a whole one (old or new)", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/checkpoint.safetensors`;
  await Deno.writeFile(`${dir}/a.bin`, await checkpointBytes(1));
  await Deno.writeFile(`${dir}/b.bin`, await checkpointBytes(2, 6_000_000)); // 48 MB: a write takes a while
  const module = new URL("../train/checkpoint.ts", import.meta.url).href;
  const code = `
    import { writeFileAtomic } from "${module}";
    await writeFileAtomic("${path}", await Deno.readFile("${dir}/a.bin"));
    const b = await Deno.readFile("${dir}/b.bin");
    console.log("ready");
    for (;;) await writeFileAtomic("${path}", b);`;
  for (const delay of [5, 60, 170]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    assert.match(new TextDecoder().decode(value), /ready/);
    await new Promise((r) => setTimeout(r, delay));
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    await child.stdout.cancel();
    const step = (await readCheckpoint(path)).step; // throws if torn
    assert.ok(step === 1 || step === 2, `step ${step}`);
    await removeStaleTemps(path);
  }
  await Deno.remove(dir, { recursive: true });
});
