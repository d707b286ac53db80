/**
 * GPU time of single kernels on RRDBNet's real convolution shapes, per tiling and number format:
 * the forward kernel (dense-block growth conv 160→32 and fuse conv 192→64), the input gradient
 * (flipped filter) and the filter-gradient tilings. Each timing replays one dispatch R and 2R times
 * in one compute pass (R sized to ~5e10 FLOPs), median of --runs each, on the GPU's timestamps where
 * the device has `timestamp-query` (else submit to completion: Deno 2.9.6 resolves a completion
 * ~10 ms after it, a constant the difference cancels but whose jitter stays), and takes the
 * difference over R. Reported as µs per dispatch and TFLOP/s (2·MACs / time). For a borrowed GPU:
 * `bash bench/prepare_gpu_session.sh bench`.
 *
 *   deno run -A bench/kernel_sweep.ts [--quick] [--runs 5] [--json FILE]
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { parseArgs } from "node:util";
import { initBackend } from "../core/backend.ts";
import {
  conv3x3Program,
  type Conv3x3Spec,
  type ConvPrecision,
  type ConvTile,
  setConvTileOverride,
} from "../core/kernels/webgpu_conv3x3.ts";
import {
  DEFAULT_FILTER_GRAD_VARIANT,
  filterGradPrograms,
  type FilterGradTile,
  type FilterGradVariant,
  setFilterGradVariant,
} from "../core/kernels/webgpu_filter_grad.ts";
import { type PassBackend, PlannedPass, type Region } from "../core/kernels/webgpu_pass.ts";
import { fuseConvSpec, growthConvSpec } from "../core/kernels/webgpu_rrdb.ts";

const { values: a } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
    "allow-software": { type: "boolean", default: false },
  },
});
const runs = Number(a.runs);

const info = await initBackend("webgpu");
if (tf.getBackend() !== "webgpu") throw new Error("kernel_sweep: no webgpu backend");
if (/llvmpipe|lavapipe|software/i.test(info.adapter ?? "") && !a["allow-software"] && !a.quick) {
  throw new Error(`kernel_sweep: ${info.adapter} is a software adapter (pass --allow-software or --quick)`);
}
const backend = tf.backend() as unknown as PassBackend;
const device = backend.device;
console.error(`kernel_sweep on ${info.adapter} (shader-f16: ${info.f16})`);

/** Pixel counts: a training batch (16x32x32), a 64x64 LR and a 256x256 LR tile. */
const SIZES = a.quick ? [{ n: 1, h: 8, w: 8 }] : [{ n: 16, h: 32, w: 32 }, { n: 1, h: 256, w: 256 }];
const TILES: (Partial<ConvTile> | null)[] = a.quick
  ? [null, { bm: 64, bk: 16, ks: 1, tm: 8, tn: 8, prefetch: true }]
  : [
    null,
    { bm: 64, bk: 16, ks: 1, tm: 4, tn: 4 },
    { bm: 32, bk: 16, ks: 2, tm: 4, tn: 4 },
    { bm: 64, bk: 16, ks: 1, tm: 8, tn: 4 },
    { bm: 64, bk: 16, ks: 1, tm: 8, tn: 8 },
    { bm: 64, bk: 32, ks: 1, tm: 8, tn: 8 },
    { bm: 64, bk: 16, ks: 2, tm: 8, tn: 8 },
    { bm: 128, bk: 8, ks: 1, tm: 8, tn: 8 },
    { bm: 128, bk: 16, ks: 1, tm: 8, tn: 8 },
    { bm: 128, bk: 16, ks: 2, tm: 8, tn: 8 },
    { bm: 128, bk: 16, ks: 1, tm: 8, tn: 4 },
    { prefetch: true },
    { bm: 64, bk: 16, ks: 1, tm: 4, tn: 4, prefetch: true },
    { bm: 64, bk: 16, ks: 1, tm: 8, tn: 8, prefetch: true },
    { bm: 128, bk: 16, ks: 2, tm: 8, tn: 8, prefetch: true },
  ];
const DW_TILINGS: [FilterGradVariant, Partial<FilterGradTile> | null][] = a.quick
  ? [["v1", null], ["v4", null]]
  : [
    ["v1", null],
    ["v3", null],
    ["v4", null],
    ["v4", { ks: 1 }],
    ["v4", { ks: 4 }],
    ["v4", { br: 16 }],
    ["v4", { bk: 32 }],
    ["v4", { target: 4096, maxSplits: 256 }],
    ["v4", { tk: 4, tn: 8 }],
  ];
const PRECISIONS: ConvPrecision[] = info.f16 ? ["f32", "f16"] : ["f32"];

const bytes = (count: number) => count * 4;
function region(count: number, pass: PlannedPass): Region {
  return { buffer: pass.buffer(bytes(count)) };
}

const gpuClock = device.features.has("timestamp-query");
if (!gpuClock) {
  console.error("no timestamp-query: timing submit to completion (R and 2R launches, the difference)");
}

/**
 * Median ms of replaying the pass's first `to` dispatches (GPU timestamps where the device has them),
 * after replays adding up to 30 ms: the first H200 sweep's later rows, short bursts between pauses,
 * ran 3-4x slower than the same kernels inside the bench (clocks dropping while idle, presumably).
 */
async function time(pass: PlannedPass, to: number): Promise<number> {
  for (let warm = 0, r = 0; warm < 30 && r < 50; r++) warm += await pass.time({ to }, gpuClock);
  const times: number[] = [];
  for (let r = 0; r < runs; r++) times.push(await pass.time({ to }, gpuClock));
  return times.sort((x, y) => x - y)[times.length >> 1];
}

interface Row {
  kernel: string;
  shape: string;
  precision: string;
  tile: string;
  us: number;
  tflops: number;
}
const rows: Row[] = [];
const say = (r: Row) => {
  rows.push(r);
  console.error(
    `${r.kernel.padEnd(14)} ${r.shape.padEnd(18)} ${r.precision.padEnd(11)} ${r.tile.padEnd(40)} ` +
      `${r.us.toFixed(1).padStart(9)} µs ${r.tflops.toFixed(2).padStart(6)} TFLOP/s`,
  );
};

/**
 * µs per launch of `add`'s dispatches: R launches for ~5e10 FLOPs, timed as R and as 2R, the
 * difference over R (launch overhead, and without timestamps Deno's completion latency, cancel out).
 */
async function timeDispatch(
  flops: number,
  add: (pass: PlannedPass) => void,
): Promise<number> {
  const reps = Math.max(
    2,
    Math.min(gpuClock ? 16 : 64, Math.ceil((a.quick ? 1e8 : gpuClock ? 2e10 : 5e10) / flops)),
  );
  const pass = new PlannedPass(backend);
  try {
    add(pass);
    const per = pass.size;
    for (let r = 1; r < 2 * reps; r++) add(pass);
    const once = await time(pass, reps * per), twice = await time(pass, 2 * reps * per);
    // noise can make the difference vanish (a loaded machine): then the plain mean of 2R, an upper bound
    return (twice > once ? (twice - once) / reps : twice / (2 * reps)) * 1000;
  } finally {
    pass.dispose();
  }
}

// Buffers are shared by every timing of a size (contents are irrelevant to the time).
for (const size of SIZES) {
  const m = size.n * size.h * size.w;
  const shape = `${size.n}x${size.h}x${size.w}`;
  const store = new PlannedPass(backend);
  const big = region(m * 192, store), big2 = region(m * 192, store), out = region(m * 192, store);
  const w = region(9 * 192 * 192, store), bias = region(192, store);
  const convs: { kernel: string; spec: Conv3x3Spec; inputs: Region[]; macs: number }[] = [
    {
      kernel: "fwd 160->32",
      spec: growthConvSpec(size, 64, 32, 4),
      inputs: [big, w, bias],
      macs: m * 9 * 160 * 32,
    },
    {
      kernel: "fwd 192->64",
      spec: fuseConvSpec(size, 64, 32, { resScale: 0.2, skipScale: 0.2 }),
      inputs: [big, big2, w, bias, big2],
      macs: m * 9 * 192 * 64,
    },
    {
      kernel: "dx 64->192",
      spec: { ...size, c0: 64, x0Stride: 64, cout: 192, flipTransposed: true },
      inputs: [big, w],
      macs: m * 9 * 192 * 64,
    },
  ];
  if (size.n === 16 || a.quick) {
    // filter gradients of the same two convolutions (the training step's largest cost), first
    const specs = [
      { kernel: "dw 160->32", spec: { ...size, c0: 64, x0Stride: 64, c1: 96, x1Stride: 128, cout: 32 } },
      { kernel: "dw 192->64", spec: { ...size, c0: 64, x0Stride: 64, c1: 128, x1Stride: 128, cout: 64 } },
    ];
    for (const { kernel, spec } of specs) {
      const cin = spec.c0 + spec.c1;
      for (const half of info.f16 ? [false, true] : [false]) {
        for (const [v, tile] of DW_TILINGS) {
          setFilterGradVariant(v, tile);
          let p;
          try {
            p = filterGradPrograms({ ...spec, bias: true, half });
          } catch (e) {
            console.error(`skipped ${v} ${JSON.stringify(tile)}: ${(e as Error).message}`);
            continue;
          } finally {
            setFilterGradVariant(DEFAULT_FILTER_GRAD_VARIANT);
          }
          const parts = region(p.splits * p.partSize, store);
          const macs = m * 9 * cin * spec.cout;
          const us = await timeDispatch(2 * macs, (pass) => {
            pass.add(p.main, p.sum ? parts : out, [big, big2, big]);
            if (p.sum) pass.add(p.sum, out, [parts]);
          });
          say({
            kernel,
            shape,
            precision: half ? "f16-f32acc" : "f32",
            tile: `${v} ${p.main.key.match(/"tile":(\{[^}]*\})/)?.[1]} splits ${p.splits}`,
            us,
            tflops: (2 * macs) / (us * 1e6),
          });
        }
      }
    }
  }
  for (const c of convs) {
    for (const precision of PRECISIONS) {
      for (const tile of TILES) {
        setConvTileOverride(tile);
        let program;
        try {
          program = conv3x3Program({ ...c.spec, precision });
        } catch (e) {
          console.error(`skipped ${JSON.stringify(tile)}: ${(e as Error).message}`);
          continue;
        } finally {
          setConvTileOverride(null);
        }
        const us = await timeDispatch(2 * c.macs, (pass) => pass.add(program, out, c.inputs));
        const t = program.key.match(/"tile":(\{[^}]*\})/)?.[1] ?? "?";
        say({
          kernel: c.kernel,
          shape,
          precision,
          tile: tile ? t : `default ${t}`,
          us,
          tflops: (2 * c.macs) / (us * 1e6),
        });
      }
    }
  }
  store.dispose();
}

const best: Record<string, Row> = {};
for (const r of rows) {
  const k = `${r.kernel} ${r.shape} ${r.precision}`;
  if (!best[k] || r.us < best[k].us) best[k] = r;
}
console.error("\nfastest per kernel, shape and format:");
for (const r of Object.values(best)) {
  console.error(
    `  ${r.kernel} ${r.shape} ${r.precision}: ${r.tile} ${r.us.toFixed(1)} µs ${r.tflops.toFixed(2)} TFLOP/s`,
  );
}
const json = JSON.stringify({ adapter: info.adapter, f16: info.f16, rows, best }, null, 1);
if (a.json) await Deno.writeTextFile(a.json, json);
else console.log(json);
