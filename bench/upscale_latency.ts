/**
 * The fixed cost of one `Upscaler.upscale` call, as the CLI and the edge endpoint make it (an RGBA
 * image in and out, an AbortSignal given): a tiny random RRDBNet on a small image, so that the net's
 * own time is small beside the waits, yields and conversions around it. Median of `--runs` calls after
 * three to warm up. To compare commits, run it from a worktree of each, alternated:
 *
 *     deno run -A bench/upscale_latency.ts [--backend webgpu] [--size 16] [--tile 0] [--runs 25]
 * @module
 */
import { parseArgs } from "node:util";
import { initBackend } from "../core/backend.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { Upscaler } from "../core/upscaler.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "webgpu" },
    size: { type: "string", default: "16" },
    tile: { type: "string", default: "0" },
    runs: { type: "string", default: "25" },
  },
});
const [size, tile, runs] = [values.size, values.tile, values.runs].map(Number);
await initBackend(values.backend as "webgpu" | "wasm" | "cpu");
const net = new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 }, {
  seed: 1,
});
const up = new Upscaler(net);
const img = {
  width: size,
  height: size,
  data: Uint8ClampedArray.from({ length: size * size * 4 }, (_, i) => (i % 4 === 3 ? 255 : (i * 13) & 255)),
};
const { signal } = new AbortController();
const times: number[] = [];
for (let r = -3; r < runs; r++) {
  const t0 = performance.now();
  await up.upscale(img, { signal, tile });
  if (r >= 0) times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
console.log(
  `${values.backend}: a ${size}x${size} upscale (tile ${tile}) took ${times[runs >> 1].toFixed(1)} ms ` +
    `(median of ${runs}; fastest ${times[0].toFixed(1)})`,
);
up.dispose();
