/** Smoke tests of `deno task bench`'s code path on tiny nets (no timing assertions). */
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import {
  addTorchRatios,
  backendProcessArgs,
  type BenchRow,
  formatTable,
  parseBenchArgs,
  runBench,
} from "../bench/bench.ts";
import {
  ALL_CASES,
  backendLabel,
  caseName,
  maxAbsDiff,
  parseBackend,
  parseCase,
  timeCase,
} from "../bench/cases.ts";
import { randomNcnnBin } from "../bench/ncnn_peer.ts";
import { initBackend } from "../core/backend.ts";
import { readNcnn } from "../core/import/ncnn.ts";
import { EARLY_MAP_DENO } from "../core/kernels/webgpu_map.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { needsShared, SHARED } from "./shared.ts";

const TINY: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 };

Deno.test("bench: cases, backends and the command line parse, bad ones say why", () => {
  assert.deepEqual(parseCase("train:16x32x32"), { kind: "train", n: 16, h: 32, w: 32 });
  assert.equal(caseName(parseCase("forward:1x256x256")), "forward:1x256x256");
  assert.throws(() => parseCase("forward:64x64"), /bad case "forward:64x64"/);
  assert.throws(() => parseCase("infer:1x8x8"), /forward:NxHxW, train:NxHxW, gan:NxHxW or upscale:NxHxW/);
  assert.deepEqual(parseCase("gan:16x32x32"), { kind: "gan", n: 16, h: 32, w: 32 });
  assert.throws(
    () => parseCase("gan:16x64x64"),
    /gan steps take 32x32 LR \(the discriminator's 128x128 GT\)/,
  );
  assert.deepEqual(parseCase("upscale:1x256x256"), { kind: "upscale", n: 1, h: 256, w: 256 });
  assert.deepEqual(parseCase("upscale:1x512x512/256"), { kind: "upscale", n: 1, h: 512, w: 512, tile: 256 });
  assert.equal(caseName(parseCase("upscale:1x512x512/256")), "upscale:1x512x512/256");
  assert.throws(() => parseCase("forward:1x64x64/32"), /bad case "forward:1x64x64\/32"/);
  assert.throws(() => parseCase("upscale:1x64x64/0"), /the tile must be positive/);
  assert.deepEqual(parseBackend("wasm:3"), { name: "wasm", threads: 3 });
  assert.deepEqual(parseBackend("webgpu-custom"), { name: "webgpu", custom: true });
  assert.equal(backendLabel(parseBackend("wasm:1")), "wasm:1");
  assert.throws(() => parseBackend("cpu:2"), /bad backend "cpu:2"/);
  assert.deepEqual(parseBackend("webgpu-plan:f16"), { name: "webgpu", plan: true, precision: "f16" });
  assert.equal(backendLabel(parseBackend("webgpu-plan:f16-f32acc")), "webgpu-plan:f16-f32acc");
  assert.equal(backendLabel(parseBackend("webgpu-plan")), "webgpu-plan");
  assert.deepEqual(parseBackend("webgpu-plan:f16+tune"), {
    name: "webgpu",
    plan: true,
    precision: "f16",
    tune: true,
  });
  assert.equal(backendLabel(parseBackend("webgpu-plan+tune")), "webgpu-plan+tune");
  assert.deepEqual(parseBackend("wasm-plan:2+unchecked"), {
    name: "wasm",
    threads: 2,
    plan: true,
    unchecked: true,
  });
  assert.equal(backendLabel(parseBackend("wasm:1+unchecked")), "wasm:1+unchecked");
  assert.throws(() => parseBackend("webgpu-plan+unchecked"), /\+unchecked goes after wasm or wasm-plan/);
  assert.throws(() => parseBackend("wasm-plan+unchecked+tune"), /bad backend/);
  // V8's flag goes to the backend's process, before the script (after it, it would be the script's)
  const args = backendProcessArgs(parseBackend("wasm-plan:1+unchecked"), ["--runs", "1"]);
  assert.deepEqual(args.slice(0, 3), ["run", "-A", "--v8-flags=--no-wasm-bounds-checks"]);
  assert.deepEqual(args.slice(4), ["--child", "wasm-plan:1+unchecked", "--runs", "1"]);
  assert.ok(!backendProcessArgs(parseBackend("wasm-plan:1"), []).some((a) => a.startsWith("--v8-flags")));
  assert.throws(() => parseBackend("wasm+tune"), /bad backend/);
  assert.deepEqual(parseBackend("webgpu-plan+winograd2+tune"), {
    name: "webgpu",
    plan: true,
    winograd: 2,
    tune: true,
  });
  for (const label of ["webgpu-plan+winograd", "webgpu-plan+winograd2+tune", "webgpu-plan:f16+auto+tune"]) {
    assert.equal(backendLabel(parseBackend(label)), label);
  }
  assert.equal(parseBackend("webgpu-plan+auto").winograd, "auto");
  assert.throws(() => parseBackend("webgpu-plan+winograd+winograd2"), /one of/);
  assert.throws(() => parseBackend("webgpu-plan+auto+winograd"), /one of/);
  assert.throws(() => parseBackend("webgpu-plan+fast"), /bad backend/);
  assert.deepEqual(parseBackend("webgpu-plan+auto+hostblend"), {
    name: "webgpu",
    plan: true,
    winograd: "auto",
    hostBlend: true,
  });
  assert.equal(backendLabel(parseBackend("webgpu-plan+auto+hostblend")), "webgpu-plan+auto+hostblend");
  assert.throws(() => parseBackend("wasm-plan+hostblend"), /bad backend/);
  assert.equal(
    backendLabel(parseBackend("webgpu-plan+winograd+onesubmit")),
    "webgpu-plan+winograd+onesubmit",
  );
  assert.equal(parseBackend("webgpu-plan+onesubmit").oneSubmit, true);
  assert.equal(parseBackend("webgpu-plan+auto+latemap").lateMap, true);
  assert.equal(backendLabel(parseBackend("webgpu-plan+auto+latemap")), "webgpu-plan+auto+latemap");
  assert.throws(() => parseBackend("wasm-plan+latemap"), /bad backend/);
  assert.equal(parseBackend("webgpu-plan:f16+winograd+halfmath").winogradHalfMath, true);
  assert.equal(
    backendLabel(parseBackend("webgpu-plan:f16+winograd+halfmath")),
    "webgpu-plan:f16+winograd+halfmath",
  );
  assert.throws(() => parseBackend("webgpu-plan+winograd+halfmath"), /needs webgpu-plan:f16/);
  assert.throws(() => parseBackend("webgpu-plan:f16+halfmath"), /needs webgpu-plan:f16 and \+winograd/);
  assert.throws(() => parseBackend("wasm:f16"), /bad backend "wasm:f16"/);
  assert.throws(() => parseBackend("webgpu-plan:2"), /bad backend/);
  assert.throws(() => parseBackend("webgl"), /bad backend/);

  const plan = parseBenchArgs([
    "--all-shapes",
    "--backend",
    "wasm:2, cpu",
    "--runs",
    "3",
    "--random",
    "--json",
  ]);
  assert.deepEqual(plan.cases.map(caseName), ALL_CASES);
  const more = parseBenchArgs(["--all-shapes", "--case", "upscale:1x256x256"]);
  assert.deepEqual(more.cases.map(caseName), [...ALL_CASES, "upscale:1x256x256"]);
  assert.deepEqual(parseBenchArgs([]).cases.map(caseName), ["forward:1x64x64"]);
  assert.deepEqual(plan.backends?.map(backendLabel), ["wasm:2", "cpu"]);
  assert.equal(plan.runs, 3);
  assert.equal(plan.model, null);
  assert.equal(plan.torch, "auto");
  assert.ok(plan.json);
  const gpu = parseBenchArgs([
    "--torch",
    "--torch-device",
    "cuda",
    "--torch-script",
    "/x/t.py",
    "--blocks",
    "2",
  ]);
  assert.deepEqual([gpu.torch, gpu.torchDevice, gpu.torchScript, gpu.blocks], [
    "required",
    "cuda",
    "/x/t.py",
    2,
  ]);
  assert.deepEqual(gpu.cases.map(caseName), ["forward:1x64x64"]);
  assert.throws(() => parseBenchArgs(["--runs", "0"]), /--runs must be an integer ≥ 1/);
  assert.throws(() => parseBenchArgs(["--torch", "--no-torch"]), /contradict/);
});

Deno.test("bench: timeCase runs a forward pass and a training step and leaks no tensors", async () => {
  await initBackend("cpu");
  const before = tf.memory().numTensors;
  const net = new RRDBNet(TINY, { seed: 3 });
  const fwd = await timeCase(net, parseCase("forward:2x8x6"), { runs: 2, warmup: 1, profile: true });
  assert.equal(fwd.case, "forward:2x8x6");
  assert.equal(fwd.times_ms.length, 2);
  assert.ok(fwd.ms > 0);
  assert.equal(fwd.output?.length, 2 * 32 * 24 * 3);
  assert.ok(
    fwd.profile?.kernels.some((k) => k.name === "FusedConv2D"),
    "the profile lists the fused convolutions",
  );
  net.dispose();

  const trainable = new RRDBNet(TINY, { seed: 3, trainable: true });
  const w0 = trainable.params.get("conv_first.weight")!.dataSync<"float32">().slice();
  const tr = await timeCase(trainable, parseCase("train:2x8x8"), { runs: 1, warmup: 1 });
  assert.equal(tr.times_ms.length, 1);
  assert.equal(tr.output, undefined);
  const w1 = trainable.params.get("conv_first.weight")!.dataSync<"float32">();
  assert.ok(maxAbsDiff(w0, w1) > 0, "Adam moved the weights");
  await assert.rejects(() => timeCase(new RRDBNet(TINY), parseCase("train:1x8x8")), /trainable: true/);
  trainable.dispose();
  tf.disposeVariables();
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("bench: the processes take turns; wasm with 2 threads gives the 1-thread output bit for bit", async () => {
  const plan = parseBenchArgs([
    "--backend",
    "wasm:1,wasm:2,wasm:1+unchecked",
    "--case",
    "forward:1x12x12",
    "--blocks",
    "1",
    "--runs",
    "2",
    "--warmup",
    "0",
  ]);
  const report = await runBench(plan);
  const [one, two, unchecked, torch] = report.rows;
  assert.deepEqual([one.backend, two.backend, unchecked.backend], ["wasm:1", "wasm:2", "wasm:1+unchecked"]);
  for (const r of [one, two, unchecked]) {
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.times_ms.length, 2);
    assert.ok(r.peak_mb! > 0);
  }
  assert.equal(one.threads, 1);
  assert.equal(two.threads, 2, "XNNPACK's pool has 2 threads");
  assert.equal(two.diff_vs, "wasm:1");
  assert.equal(two.max_abs_diff, 0);
  assert.equal(unchecked.max_abs_diff, 0, "V8's bounds checks change no result");
  if (torch) { // PyTorch present: its row and the ratios
    assert.match(torch.backend, /^torch /);
    assert.ok(torch.ms > 0 && one.vs_torch! > 0);
    assert.equal(torch.host_ms, undefined, "on the CPU, PyTorch's output is in host memory already");
  } else console.warn("PyTorch absent: the bench's torch side is untested here");
  const table = formatTable(report.rows);
  assert.match(table, /wasm:2 \(2 thr\)/);
  assert.match(table, /0\.0e\+0 \(wasm:1\)/);
  // PyTorch on CUDA also reports its time until the output is in host memory, and ours against it
  const cuda = formatTable([
    {
      case: "forward:1x8x8",
      backend: "torch 2.11 cuda",
      ms: 30,
      host_ms: 32.5,
      also_ms: { "no-tf32": 45 },
      times_ms: [30],
    },
    {
      case: "forward:1x8x8",
      backend: "webgpu-plan",
      ms: 36,
      times_ms: [36],
      vs_torch: 1.2,
      vs_torch_host: 36 / 32.5,
      vs_torch_also: { "no-tf32": 36 / 45 },
    },
  ]);
  assert.match(cuda, /30\.0 \(\+host 32\.5\)/);
  assert.match(cuda, /1\.20x \(1\.11x\) \(no-tf32 0\.80x\)/);
  assert.match(cuda, /30\.0 \(\+host 32\.5\) \(no-tf32 45\.0\)/);
  // the ratios: ours over PyTorch's timings, our "done" over PyTorch's median
  const rows: BenchRow[] = [
    { case: "c", backend: "webgpu-plan", ms: 36, times_ms: [36], also_ms: { done: 24 } },
    {
      case: "c",
      backend: "torch 2.11 cuda",
      ms: 30,
      host_ms: 32,
      also_ms: { "no-tf32": 45, "cudnn-benchmark": 20 },
      times_ms: [30],
    },
    { case: "c", backend: "webgpu", ms: NaN, times_ms: [], error: "no adapter" },
  ];
  addTorchRatios(rows);
  assert.equal(rows[0].vs_torch, 1.2);
  assert.equal(rows[0].vs_torch_host, 36 / 32);
  assert.deepEqual(rows[0].vs_torch_also, { done: 0.8, "no-tf32": 0.8, "cudnn-benchmark": 1.8 });
  assert.equal(rows[1].vs_torch, undefined);
  assert.equal(rows[2].vs_torch, undefined);
});

Deno.test("bench: wasm-plan times the CPU training step; tfjs's wasm ops say why they cannot", async () => {
  const plan = parseBenchArgs([
    "--backend",
    "wasm-plan:2,wasm:1",
    "--case",
    "train:2x8x8",
    "--blocks",
    "1",
    "--runs",
    "1",
    "--warmup",
    "1",
    "--no-torch",
  ]);
  const [ours, stock] = (await runBench(plan)).rows;
  assert.equal(ours.backend, "wasm-plan:2");
  assert.equal(ours.error, undefined, ours.error);
  assert.ok(ours.ms > 0 && ours.threads === 2);
  assert.match(stock.error ?? "", /Conv2DBackpropFilter/);
});

Deno.test("bench: a process on wasm with 2 threads exits by itself once done", async () => {
  const backend = new URL("../core/backend.ts", import.meta.url).href;
  const code = `import * as tf from "@tensorflow/tfjs-core";
    import { initBackend } from "${backend}";
    const info = await initBackend("wasm", { threads: 2 });
    const y = tf.conv2d(tf.ones([1, 8, 8, 4]), tf.ones([3, 3, 4, 4]), 1, "same");
    console.log(info.threads, (await y.data())[0]);`;
  const proc = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped", stderr: "piped" })
    .spawn();
  const timer = setTimeout(() => proc.kill(), 60_000);
  const { code: exit, stdout, stderr } = await proc.output();
  clearTimeout(timer);
  assert.equal(exit, 0, new TextDecoder().decode(stderr));
  assert.equal(new TextDecoder().decode(stdout).trim(), "2 16");
});

const adapter = await (navigator as { gpu?: GPU }).gpu?.requestAdapter().catch(() => null);
if (!adapter) console.warn("skipping the kernel sweep smoke test: no WebGPU adapter");

Deno.test({
  name: "bench: kernel_sweep --quick times each kernel, tiling and number format on WebGPU",
  ignore: !adapter,
  async fn() {
    const json = await Deno.makeTempFile({ suffix: ".json" });
    try {
      const script = new URL("../bench/kernel_sweep.ts", import.meta.url).pathname;
      const proc = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, "--quick", "--runs", "3", "--json", json],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const timer = setTimeout(() => proc.kill(), 120_000);
      const { code, stderr } = await proc.output();
      clearTimeout(timer);
      assert.equal(code, 0, new TextDecoder().decode(stderr));
      const report = JSON.parse(await Deno.readTextFile(json));
      const kernels = new Set(report.rows.map((r: { kernel: string }) => r.kernel));
      assert.deepEqual([...kernels].sort(), [
        "dw 160->32",
        "dw 192->64",
        "dx 64->192",
        "fwd 160->32",
        "fwd 192->64",
      ]);
      const formats = report.f16 ? ["f16", "f32"] : ["f32"];
      assert.deepEqual(
        [...new Set(report.rows.map((r: { precision: string }) => r.precision))].sort(),
        [
          ...new Set([...formats, ...(report.f16 ? ["f16-f32acc"] : [])]),
        ].sort(),
      );
      for (const r of report.rows) assert.ok(r.us > 0 && Number.isFinite(r.tflops), JSON.stringify(r));
    } finally {
      await Deno.remove(json);
    }
  },
});

Deno.test({
  name: "bench: readback_probe times each step of a read-back, and whether waiting for the queue blocks",
  ignore: !adapter,
  async fn() {
    const json = await Deno.makeTempFile({ suffix: ".json" });
    try {
      const script = new URL("../bench/readback_probe.ts", import.meta.url).pathname;
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, "--runs", "1", "--spin", "1000", "--json", json],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(code, 0, new TextDecoder().decode(stderr));
      const report = JSON.parse(await Deno.readTextFile(json));
      assert.deepEqual(
        report.rows.map((r: { bytes: number; staging: string }) => `${r.bytes} ${r.staging}`),
        [786432, 3145728, 12582912].flatMap((b) => [`${b} fresh`, `${b} kept`, `${b} early`]),
      );
      // the early rows' reads went through mapRead: each size's first one waited, the others early
      // where this Deno allows it (core/kernels/webgpu_map.ts)
      const early = EARLY_MAP_DENO.includes(Deno.version.deno);
      assert.deepEqual(report.mapStats, early ? { early: 3, awaited: 3 } : { early: 0, awaited: 6 });
      for (const r of report.rows) {
        if (r.staging === "early") {
          assert.deepEqual(Object.keys(r.steps), ["create", "submit", "mapRead"]);
          continue;
        }
        assert.deepEqual(Object.keys(r.steps), [
          "create",
          "submit",
          "mapAsync call",
          "mapAsync await",
          "getMappedRange",
          "slice",
          "unmap",
        ]);
      }
      assert.equal(report.waits.length, 3);
    } finally {
      await Deno.remove(json);
    }
  },
});

Deno.test({
  name: "bench/early_map_ab.ts: times a forward and an upscale with early and awaited reads",
  ignore: !adapter,
  async fn() {
    const script = new URL("../bench/early_map_ab.ts", import.meta.url).pathname;
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...["--runs", "1", "--size", "4", "--upscale", "8", "--tile", "4"]],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(code, 0, new TextDecoder().decode(stderr));
    const out = new TextDecoder().decode(stdout);
    assert.match(out, /^forward 1x4x4 .*: early [\d.]+ ms, awaited [\d.]+ ms$/m);
    assert.match(out, /^upscale 8x8 in 4x4 tiles: early [\d.]+ ms, awaited [\d.]+ ms$/m);
    assert.match(out, /^train step 2x4x4: early [\d.]+ ms, awaited [\d.]+ ms$/m);
    const [, early] = /reads taken early (\d+), awaited \d+/.exec(out)!;
    assert.equal(Number(early) > 0, EARLY_MAP_DENO.includes(Deno.version.deno), out);
  },
});

Deno.test({
  name: "bench: planned webgpu rows also time training steps started one ahead, forwards to the GPU's end",
  ignore: !adapter,
  async fn() {
    const plan = parseBenchArgs([
      ...["--backend", "webgpu-plan,webgpu-plan:f16", "--case", "train:2x8x8", "--case", "forward:1x8x8"],
      ...["--blocks", "1"],
      ...["--runs", "2", "--warmup", "0", "--random", "--no-torch"],
    ]);
    const report = await runBench(plan);
    const [f32, f16, fwd32, fwd16] = report.rows;
    for (const r of [f32, f16]) {
      assert.equal(r.error, undefined, r.error);
      assert.equal(r.also_times_ms?.ahead?.length, 2, `${r.backend}: no "ahead" time`);
      assert.ok(r.also_ms!.ahead > 0);
    }
    // forwards: Deno's mapAsync returned when the GPU finished, 10 ms before it resolved
    for (const r of [fwd32, fwd16]) {
      assert.equal(r.case, "forward:1x8x8");
      assert.equal(r.error, undefined, r.error);
      assert.equal(r.also_times_ms?.done?.length, 2, `${r.backend}: no "done" time`);
    }
    assert.match(
      formatTable([{ ...f32, also_ms: { ahead: 12.34 }, vs_torch: 1.5, vs_torch_also: { ahead: 1.25 } }]),
      /\(ahead 12\.3\).*1\.50x \(ahead 1\.25x\)/,
    );
  },
});

Deno.test({
  name:
    "bench: +auto times direct and Winograd before forwards and upscales, says which it kept; not for training",
  ignore: !adapter,
  async fn() {
    const plan = parseBenchArgs([
      ...["--backend", "webgpu-plan+auto,webgpu-plan", "--case", "forward:1x8x8", "--case", "upscale:1x8x6"],
      ...["--case", "train:2x8x8", "--blocks", "1", "--runs", "1", "--warmup", "1", "--random", "--no-torch"],
    ]);
    const report = await runBench(plan);
    const auto = report.rows.filter((r) => r.backend === "webgpu-plan+auto");
    assert.deepEqual(auto.map((r) => r.case), ["forward:1x8x8", "upscale:1x8x6"], "no training row");
    for (const r of auto) {
      assert.equal(r.error, undefined, r.error);
      assert.match(
        r.convs ?? "",
        /^(direct|Winograd F\(4x4\)) \(timed on a \d+x8 patch: direct [\d.]+ ms, Winograd F\(4x4\) [\d.]+ ms\)$/,
      );
      // the same forward as the direct plan's, within Winograd's rounding
      assert.ok(r.max_abs_diff === undefined || r.max_abs_diff < 1e-4, `${r.case}: ${r.max_abs_diff}`);
    }
    assert.match(formatTable(auto), /^ {2}auto forward:1x8x8 webgpu-plan\+auto: (direct|Winograd)/m);
  },
});

Deno.test("bench: gan cases time the trainer's gan-stage step (G, VGG19 to conv5_4, D) on the CPU", async () => {
  const plan = parseBenchArgs([
    ...["--backend", "wasm-plan:2", "--case", "gan:1x32x32", "--blocks", "1"],
    ...["--runs", "1", "--warmup", "1", "--random", "--no-torch"],
  ]);
  const report = await runBench(plan);
  const [row] = report.rows;
  assert.equal(row.case, "gan:1x32x32");
  assert.equal(row.error, undefined, row.error);
  assert.ok(row.ms > 0 && row.max_abs_diff === undefined, JSON.stringify(row));
});

Deno.test("bench: upscale cases run the tiled Upscaler; our CPU kernels and tfjs's ops agree", async () => {
  const plan = parseBenchArgs([
    ...["--backend", "wasm-plan:2,wasm:2", "--case", "upscale:1x20x18", "--case", "upscale:1x20x18/8"],
    ...["--blocks", "1", "--runs", "1", "--warmup", "0", "--random", "--no-torch"],
  ]);
  const report = await runBench(plan);
  assert.deepEqual(report.rows.map((r) => r.case), [
    ...["upscale:1x20x18", "upscale:1x20x18"],
    ...["upscale:1x20x18/8", "upscale:1x20x18/8"],
  ]);
  // 20x18 in one tile, then in 3x3 tiles of 8: both backends ran the same forwards, blended and clamped
  for (const [ours, ops] of [report.rows.slice(0, 2), report.rows.slice(2)]) {
    for (const r of [ours, ops]) assert.equal(r.error, undefined, r.error);
    assert.equal(ops.diff_vs, "wasm-plan:2");
    assert.ok(ops.max_abs_diff! < 1e-4, `max |Δ| ${ops.max_abs_diff}`);
  }
});

Deno.test("bench: stopped by SIGTERM (a timeout), it still reports the cases it finished", async () => {
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      ...[
        "run",
        "-A",
        "bench/bench.ts",
        "--backend",
        "wasm-plan:1",
        "--blocks",
        "1",
        "--random",
        "--no-torch",
      ],
      ...["--case", "forward:1x8x8", "--case", "forward:1x64x64", "--runs", "50", "--warmup", "0", "--json"],
    ],
    cwd: new URL("..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // the second case's first line: the first case's rows are in
  const lines = proc.stderr.pipeThrough(new TextDecoderStream()).values();
  let log = "";
  for await (const chunk of lines) {
    log += chunk;
    if (log.includes("forward:1x64x64: warming up")) break;
  }
  proc.kill("SIGTERM");
  const [status, out] = await Promise.all([proc.status, new Response(proc.stdout).text()]);
  assert.equal(status.code, 143);
  const report = JSON.parse(out);
  assert.equal(report.interrupted, true);
  assert.deepEqual(report.rows.map((r: { case: string }) => r.case), ["forward:1x8x8"]);
  assert.ok(report.rows[0].ms > 0);
});

Deno.test({
  name: "bench/ncnn_peer.ts: its random weights are a .bin that x4plus's .param reads to the end",
  ignore: needsShared("ncnn_peer's random .bin"),
  fn: async () => {
    const param = await Deno.readTextFile(`${SHARED}/models/realesrgan-x4plus.param`);
    const bin = randomNcnnBin(param);
    const real = await Deno.stat(`${SHARED}/models/realesrgan-x4plus.bin`);
    assert.equal(bin.byteLength, real.size, "the size of the release's fp16 .bin");
    const sd = readNcnn(param, bin, "random x4plus"); // every tag, count and bias where ncnn reads them
    assert.equal(sd.size, 2 * 351);
    for (const [name, t] of sd) {
      const fanIn = t.data.length / t.shape[0];
      const bound = name.endsWith(".bias") ? 0 : 0.5 / Math.sqrt(fanIn) + 1e-3;
      assert.ok(t.data.every((v) => Math.abs(v) <= bound), `${name} within ±${bound}`);
    }
  },
});
