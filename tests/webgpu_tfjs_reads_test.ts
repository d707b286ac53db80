/**
 * tfjs's read-backs through mapRead (core/kernels/webgpu_tfjs_reads.ts): the values tfjs's own read
 * gives, taken early from the second read of a size (tfjs's staging pool hands the same buffer back).
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import assert from "node:assert/strict";
import { EARLY_MAP_DENO, mapStats } from "../core/kernels/webgpu_map.ts";
import { readTfjsTensorsEarly } from "../core/kernels/webgpu_tfjs_reads.ts";

const earlyHere = EARLY_MAP_DENO.includes(Deno.version.deno);
const opts = { ignore: !(await tfOnWebGPU()), sanitizeResources: false, sanitizeOps: false };
if (opts.ignore) console.warn("skipping the tfjs read tests: no WebGPU adapter");

Deno.test(
  "readTfjsTensorsEarly: tfjs's data() reads through mapRead, early from a size's second read",
  opts,
  async () => {
    readTfjsTensorsEarly();
    readTfjsTensorsEarly(); // idempotent
    const values = Float32Array.from({ length: 1000 }, (_, i) => i / 7);
    for (let k = 0; k < 3; k++) {
      const before = { ...mapStats };
      // a kernel's output (on the GPU, not the upload's copy on the host)
      const t = tf.tidy(() => tf.add(tf.tensor1d(values), k));
      const read = (await t.data()) as Float32Array;
      t.dispose();
      assert.deepEqual(read, values.map((v) => Math.fround(v + k)));
      const [early, awaited] = [mapStats.early - before.early, mapStats.awaited - before.awaited];
      // tfjs's pool hands the same staging buffer back: its first read waits
      assert.deepEqual(
        { early, awaited },
        k > 0 && earlyHere ? { early: 1, awaited: 0 } : { early: 0, awaited: 1 },
      );
    }
  },
);

/** Whether tfjs runs on webgpu (started here if not). */
async function tfOnWebGPU(): Promise<boolean> {
  try {
    return tf.getBackend() === "webgpu" || await tf.setBackend("webgpu");
  } catch {
    return false;
  }
}
