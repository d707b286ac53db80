/**
 * `deno task bench`: RRDBNet forward and training-step time per tfjs backend, warmed up, median of
 * several runs, with peak memory, next to PyTorch (bench/torch_bench.py) in the same run.
 *
 * Each backend runs in its own process (this program with `--child`), PyTorch in another; all stay
 * up and take turns, one timed run each per round (bench/peer.ts), so that a load that comes and
 * goes on a shared machine hits them alike. Works bundled (`deno bundle`, see
 * ../shared/device/README.md): the only paths used are the CLI's (`--model`, `--torch-script`).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
// the union package's node bundle registers the gradients (tfjs-core alone has none) for train cases
import "@tensorflow/tfjs";
import process from "node:process";
import { parseArgs } from "node:util";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { ESRGAN_X4, type RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { customKernelStats, enableCustomWebGPUKernels } from "../core/kernels/register.ts";
import { setFirstSubmit } from "../core/kernels/webgpu_pass.ts";
import { setEarlyMap } from "../core/kernels/webgpu_map.ts";
import {
  ALL_CASES,
  backendLabel,
  type BackendSpec,
  type BenchCase,
  caseName,
  type KernelProfile,
  loadNet,
  maxAbsDiff,
  median,
  parseBackend,
  parseCase,
  peakRssMb,
  prepareCase,
  type PreparedCase,
  UNCHECKED_V8_FLAGS,
  usePlannedPasses,
} from "./cases.ts";
import { Peer, type Reply, serve } from "./peer.ts";
import { writeBenchChart } from "./chart.ts";

/** The default model, relative to the working directory (the project root under `deno task`). */
export const DEFAULT_BENCH_MODEL = "weights/realesrgan-x4plus.int8.safetensors";

/**
 * Steps per run timed one ahead (each started before the last one's loss is read), after the
 * awaited one, for the planned training rows on webgpu.
 */
export const AHEAD_STEPS = 3;

const HELP = `deno task bench [options]
Times RRDBNet (forward passes; training steps with train: cases; gan-stage steps, G with VGG19's
perceptual loss and D, with gan: cases; the Upscaler's tiled upscale, 128-pixel tiles (or /TILE)
overlapping by 24, with upscale: cases) per tfjs backend, warmed up,
median of --runs, with peak memory, next to PyTorch on the same machine in the same run. The
backends and PyTorch each run in a process of their own and take turns, one run each per round.

  --case SPEC         forward:NxHxW, train:NxHxW, gan:Nx32x32 or upscale:NxHxW[/TILE] (LR size; an
                      upscale's tile side, default 128), repeatable; default forward:1x64x64
  --all-shapes        ${ALL_CASES.join(", ")} (and any --case)
  --backend LIST      comma list of wasm, wasm:N (N threads), wasm-plan[:N] (our CPU kernels: forward
                      and the planned training step), cpu, webgpu, webgpu-custom (our kernels),
                      webgpu-plan (our kernels as prepared passes, incl. the planned training step),
                      webgpu-plan:f16, webgpu-plan:f16-f32acc (half precision: the forward plan, the
                      training step in mixed precision); "+tune" after a plan (webgpu-plan+tune,
                      webgpu-plan:f16+tune) times candidate tilings per shape before forwards;
                      "+winograd" / "+winograd2" run the 3x3 convolutions as Winograd F(4x4) (f32) /
                      F(2x2) (also webgpu-plan:f16+winograd2: f16 storage, f32 arithmetic; forward
                      only), in training steps too (f32: forward, input and filter gradients);
                      "+auto" (forwards and upscales) whichever of direct and Winograd a timed
                      first run finds faster, as deno task upscale --winograd auto does;
                      "+hostblend" (upscales only) each tile read back and blended on the host,
                      as the Upscaler did before it blended on the GPU; "+onesubmit" each pass
                      submitted whole, as before the plans submitted them in growing pieces;
                      "+latemap" every read-back awaiting mapAsync's promise, as before the plans
                      read early past Deno 2.9.6's 10 ms (core/kernels/webgpu_map.ts);
                      "+halfmath" (webgpu-plan:f16 with +winograd or +winograd2, forwards only) the
                      Winograd GEMMs' products in f16 too (experimental);
                      "+unchecked" after wasm or wasm-plan[:N] runs that backend's process with
                      V8's wasm bounds checks off (unsafe, for measuring only: what the checks
                      cost, which Deno leaves in, having no trap handler for wasm);
                      default: webgpu,webgpu-custom,webgpu-plan (+ webgpu-plan:f16 with shader-f16)
                      on a real GPU adapter, else wasm:1,wasm:<cores>,wasm-plan:1,wasm-plan:<cores>
  --cpu               add the (slow) cpu backend to the default list
  --llvmpipe          add webgpu,webgpu-custom to the default list on a software adapter
  --runs N            timed runs (default 5)     --warmup N   untimed runs first (default 1)
  --model PATH        model file (default ${DEFAULT_BENCH_MODEL} when it exists, else random weights)
  --random            random ESRGAN x4 weights (same cost)   --blocks N   RRDB blocks (random weights)
  --profile           one more run under tf.profile: time per kernel and the kernels' share
                      (on webgpu: the planned backends only, each kind of dispatch replayed alone)
  --no-torch          skip PyTorch (default: run it when a Python with torch is found)
  --torch             require PyTorch (fail if absent)
  --torch-device D    cpu or cuda (default cpu)     --torch-threads N   (default 2); on cuda PyTorch's
                      forward is also timed until its output is in host memory ("+host"), as our
                      forwards read theirs back, and ratios to that follow in brackets; planned
                      training on webgpu is also timed as deno task train runs it, each step started
                      before the last one's loss is read ("ahead"), planned forwards until the GPU
                      finished without the read-back ("done", as torch.cuda.synchronize waits), and
                      PyTorch on cuda with cuDNN's TF32 off ("no-tf32": strict fp32, as WGSL computes)
                      and in cuDNN's benchmark mode ("cudnn-benchmark": algorithms timed per shape,
                      as BasicSR trains)
  --torch-script P    (default bench/torch_bench.py)  --python P   (default python3, then /usr/bin/python3)
  --json              one JSON object on stdout instead of the table
  --chart FILE        also the results as a bar chart: FILE.png, or FILE.svg (each row's time over
                      PyTorch's, or over the case's fastest row without PyTorch); from a saved --json
                      report: deno task plot REPORT.json -o FILE.png
`;

/** The command line, parsed. */
export interface BenchPlan {
  cases: BenchCase[];
  /** Null: {@link defaultBackends}. */
  backends: BackendSpec[] | null;
  runs: number;
  warmup: number;
  model: string | null;
  blocks?: number;
  profile: boolean;
  torch: "auto" | "required" | "off";
  torchDevice: string;
  torchThreads: number;
  torchScript: string;
  python?: string;
  json: boolean;
  /** Where to write the bar chart (.png or .svg), if anywhere. */
  chart?: string;
  cpu: boolean;
  llvmpipe: boolean;
  /** Set in the child processes: the backend to serve. */
  child?: BackendSpec;
  help: boolean;
}

/** Parses the bench's command line (see `--help`); throws a one-line error on bad input. */
export function parseBenchArgs(args: string[]): BenchPlan {
  const { values: v } = parseArgs({
    args,
    options: {
      case: { type: "string", multiple: true },
      "all-shapes": { type: "boolean" },
      backend: { type: "string" },
      cpu: { type: "boolean" },
      llvmpipe: { type: "boolean" },
      runs: { type: "string" },
      warmup: { type: "string" },
      model: { type: "string" },
      random: { type: "boolean" },
      blocks: { type: "string" },
      profile: { type: "boolean" },
      torch: { type: "boolean" },
      "no-torch": { type: "boolean" },
      "torch-device": { type: "string" },
      "torch-threads": { type: "string" },
      "torch-script": { type: "string" },
      python: { type: "string" },
      json: { type: "boolean" },
      chart: { type: "string" },
      child: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const int = (name: string, s: string | undefined, dflt: number, min: number) => {
    if (s === undefined) return dflt;
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got "${s}"`);
    return n;
  };
  if (v.blocks && v.model) throw new Error("--blocks needs random weights, not --model");
  if (v.torch && v["no-torch"]) throw new Error("--torch and --no-torch contradict each other");
  const blocks = v.blocks === undefined ? undefined : int("blocks", v.blocks, 23, 1);
  let model: string | null = v.model ?? null;
  if (!model && !v.random && blocks === undefined) {
    try {
      if (Deno.statSync(DEFAULT_BENCH_MODEL).isFile) model = DEFAULT_BENCH_MODEL;
    } catch { /* absent: random weights, same cost */ }
  }
  return {
    cases: [...(v["all-shapes"] ? ALL_CASES : []), ...(v.case ?? [])].concat(
      v["all-shapes"] || v.case?.length ? [] : ["forward:1x64x64"],
    ).map(parseCase),
    backends: v.backend ? v.backend.split(",").map((s) => parseBackend(s.trim())) : null,
    runs: int("runs", v.runs, 5, 1),
    warmup: int("warmup", v.warmup, 1, 0),
    model,
    blocks,
    profile: !!v.profile,
    torch: v["no-torch"] ? "off" : v.torch ? "required" : "auto",
    torchDevice: v["torch-device"] ?? "cpu",
    torchThreads: int("torch-threads", v["torch-threads"], 2, 1),
    torchScript: v["torch-script"] ?? "bench/torch_bench.py",
    python: v.python,
    json: !!v.json,
    chart: v.chart,
    cpu: !!v.cpu,
    llvmpipe: !!v.llvmpipe,
    child: v.child ? parseBackend(v.child) : undefined,
    help: !!v.help,
  };
}

/** The backends to time when `--backend` is absent, and why. */
export async function defaultBackends(plan: BenchPlan): Promise<{ backends: BackendSpec[]; note: string }> {
  const probe = await probeWebGPU();
  const backends: BackendSpec[] = [];
  let note: string;
  if (probe.adapter && !probe.software) {
    backends.push({ name: "webgpu" }, { name: "webgpu", custom: true }, { name: "webgpu", plan: true });
    if (probe.f16) backends.push({ name: "webgpu", plan: true, precision: "f16" });
    note = `GPU adapter: ${probe.adapter}`;
  } else {
    // wasm:1 first: the other outputs are compared with the first backend's
    backends.push({ name: "wasm", threads: 1 });
    const cores = navigator.hardwareConcurrency ?? 1;
    if (cores > 1) backends.push({ name: "wasm", threads: cores });
    backends.push({ name: "wasm", threads: 1, plan: true });
    if (cores > 1) backends.push({ name: "wasm", threads: cores, plan: true });
    if (plan.llvmpipe && probe.adapter) backends.push({ name: "webgpu" }, { name: "webgpu", custom: true });
    note = probe.adapter
      ? `software adapter ${probe.adapter}${plan.llvmpipe ? "" : " (webgpu only with --llvmpipe)"}`
      : `no WebGPU adapter (${probe.why})`;
  }
  if (plan.cpu) backends.push({ name: "cpu" });
  return { backends, note };
}

/** `deno` arguments for the process that serves `spec` (this program with `--child`). */
export function backendProcessArgs(spec: BackendSpec, childArgs: string[]): string[] {
  // V8's flags go before the script; import.meta.url is this file, or the bundle when bundled
  const v8 = spec.unchecked ? [UNCHECKED_V8_FLAGS] : [];
  return ["run", "-A", ...v8, import.meta.url, "--child", backendLabel(spec), ...childArgs];
}

/** Serves one backend to the parent (`--child`): see bench/peer.ts for the requests. */
async function serveBackend(spec: BackendSpec, plan: BenchPlan): Promise<void> {
  const nets = new Map<boolean, RRDBNet>();
  let current: { c: BenchCase; prepared: PreparedCase; out?: Float32Array } | null = null;
  await serve(async () => {
    const info = await initBackend(spec.name, { threads: spec.threads });
    if (spec.custom) enableCustomWebGPUKernels();
    usePlannedPasses(!!spec.plan, spec);
    if (spec.oneSubmit) setFirstSubmit(0);
    // tfjs's stock backend reads as tfjs does: awaiting mapAsync's promise
    if (spec.lateMap || (spec.name === "webgpu" && !spec.plan && !spec.custom)) setEarlyMap(false);
    return { ready: true, threads: info.threads, adapter: info.adapter };
  }, async (msg) => {
    switch (msg.cmd) {
      case "setup": {
        const c = parseCase(msg.case);
        // inference runs the fused conv+bias+LeakyReLU; training the unfused ops that have gradients
        const trainable = c.kind === "train";
        if (!nets.has(trainable)) {
          nets.get(!trainable)?.dispose();
          nets.delete(!trainable);
          nets.set(trainable, await loadNet(plan.model, { trainable, blocks: plan.blocks }));
        }
        current = { c, prepared: prepareCase(nets.get(trainable)!, c) };
        for (let i = 0; i < msg.warmup; i++) await current.prepared.step();
        return { ok: true };
      }
      case "run": {
        const [t0, cpu0] = [performance.now(), process.cpuUsage()];
        const out = await current!.prepared.step();
        const [ms, cpu] = [performance.now() - t0, process.cpuUsage(cpu0)];
        if (current!.c.kind !== "train" && current!.c.kind !== "gan") current!.out = out;
        const also: Record<string, number> = {};
        const ahead = await current!.prepared.stepsAhead?.(AHEAD_STEPS);
        if (ahead !== undefined) also.ahead = ahead;
        const done = await current!.prepared.stepDone?.();
        if (done !== undefined) also.done = done;
        return { ms, cpu_ms: (cpu.user + cpu.system) / 1000, also };
      }
      case "finish": {
        const { prepared, out } = current!;
        current = null;
        try {
          if (msg.dump && out) {
            await Deno.writeFile(msg.dump, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
          }
          // tf.profile of tfjs's own webgpu kernels (timestamp queries per kernel) took minutes, or
          // hung, on an H200: profile only our planned passes there
          const skip = spec.name === "webgpu" && !spec.plan;
          const { tilings, convs } = prepared;
          return {
            ok: true,
            tilings,
            convs,
            profile: msg.profile && !skip ? await prepared.profile?.() : undefined,
          };
        } finally {
          prepared.dispose();
        }
      }
      case "exit":
        for (const net of nets.values()) net.dispose();
        return {
          peak_mb: peakRssMb(),
          peak_kind: "rss",
          custom_kernels: spec.custom ? customKernelStats() : undefined,
        };
      default:
        throw new Error(`unknown request ${msg.cmd}`);
    }
  });
}

/** A row of the report: one case on one backend, or on PyTorch. */
export interface BenchRow {
  case: string;
  backend: string;
  /** Median of the timed runs. */
  ms: number;
  times_ms: number[];
  /** Median CPU time (user + system, all the process's threads) of a run. */
  cpu_ms?: number;
  cpu_times_ms?: number[];
  threads?: number;
  /** Peak RSS of the backend's process over the whole run (GPU memory for torch on CUDA). */
  peak_mb?: number;
  peak_kind?: string;
  vs_torch?: number;
  /**
   * PyTorch on CUDA only: its forward's median until the output is in host memory (as ours read
   * theirs back), and the row's time over that.
   */
  host_ms?: number;
  host_times_ms?: number[];
  vs_torch_host?: number;
  /**
   * The case timed other ways in each run, and their medians: "ahead" (planned training on
   * webgpu: ms per step with each step started before the last one's loss is read, as `deno task
   * train` runs them; {@link AHEAD_STEPS} per run), "done" (planned forwards on webgpu: until the GPU
   * finished, without reading the output back, as torch.cuda.synchronize waits), "no-tf32" (PyTorch
   * on CUDA with cuDNN's TF32 tensor cores off: strict fp32, as WGSL computes; PyTorch's default
   * lets fp32 convolutions use TF32), "cudnn-benchmark" (PyTorch on CUDA with
   * torch.backends.cudnn.benchmark on, as BasicSR trains).
   */
  also_times_ms?: Record<string, number[]>;
  also_ms?: Record<string, number>;
  /** Why a row has no "also" time it should have (e.g. PyTorch could not switch TF32 off). */
  also_errors?: Record<string, string>;
  /** Ours: "ahead" and "done" over PyTorch's median; "no-tf32", "cudnn-benchmark": our median over PyTorch's that. */
  vs_torch_also?: Record<string, number>;
  /** Largest |difference| of the forward output from {@link diff_vs}'s. */
  max_abs_diff?: number;
  diff_vs?: string;
  profile?: KernelProfile;
  /** What a tuned plan (`+tune`) chose per convolution shape. */
  tilings?: Record<string, string>;
  /** What `+auto` chose for the convolutions, and the times it chose by. */
  convs?: string;
  error?: string;
}

/** The bench's result. */
export interface BenchReport {
  model: string;
  deno: string;
  tfjs: string;
  cpus: number;
  note: string;
  /** /proc/loadavg's 1-minute load at the start and the end (timings on a shared machine depend on it). */
  load?: [number, number];
  peers: Record<string, Reply>;
  rows: BenchRow[];
  /** Stopped (SIGTERM) before every case ran: the rows are those of the cases finished. */
  interrupted?: boolean;
}

/** Finds a Python that imports torch: `python` if given, else `python3`, then Debian's `/usr/bin/python3`. */
export async function findTorchPython(python?: string): Promise<string | null> {
  for (const p of python ? [python] : ["python3", "/usr/bin/python3"]) {
    try {
      const r = await new Deno.Command(p, { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
        .output();
      if (r.success) return p;
    } catch { /* not installed */ }
  }
  return null;
}

/** Runs the plan: starts the peers, takes the rounds, compares outputs and PyTorch. */
export async function runBench(
  plan: BenchPlan,
  log: (line: string) => void = () => {},
  options: {
    /** Called with the report so far (the same object, growing) after each case. */
    onCase?: (report: BenchReport) => void;
  } = {},
): Promise<BenchReport> {
  let config: RRDBNetConfig = { ...ESRGAN_X4, numBlock: plan.blocks ?? ESRGAN_X4.numBlock };
  if (plan.model) config = decodeModelFile(await Deno.readFile(plan.model), plan.model).config;
  const { numBlock, numFeat, numGrowCh, scale } = config;
  const model = `${
    plan.model ?? "random weights"
  } (RRDBNet x${scale}, ${numBlock} blocks, nf ${numFeat}, gc ${numGrowCh})`;
  let backends = plan.backends;
  let note = "backends as requested";
  if (!backends) ({ backends, note } = await defaultBackends(plan));
  log(`bench: ${model}; ${plan.cases.map(caseName).join(", ")}; ${note}`);
  const load0 = loadAverage();
  log(
    `  Deno ${Deno.version.deno}, tfjs ${tf.version_core}, ${navigator.hardwareConcurrency} logical CPUs` +
      (load0 === undefined ? "" : `, load ${load0.toFixed(1)}`),
  );

  const peers: { label: string; peer: Peer; hello: Reply; torch?: boolean }[] = [];
  const report: BenchReport = {
    model,
    deno: Deno.version.deno,
    tfjs: tf.version_core,
    cpus: navigator.hardwareConcurrency,
    note,
    peers: {},
    rows: [],
  };
  const childArgs = ["--runs", "1", ...(plan.model ? ["--model", plan.model] : ["--random"])];
  if (plan.blocks) childArgs.push("--blocks", String(plan.blocks));
  for (const spec of backends) {
    const label = backendLabel(spec);
    const peer = new Peer(label, Deno.execPath(), backendProcessArgs(spec, childArgs));
    peers.push({ label, peer, hello: await peer.ready() });
  }
  if (plan.torch !== "off") {
    const python = await findTorchPython(plan.python);
    let why = "";
    if (numFeat !== 64 || numGrowCh !== 32 || scale !== 4) {
      why = "bench/torch_bench.py builds x4, nf 64, gc 32 only";
    } else if (!python) why = `no Python with torch (${plan.python ?? "python3, /usr/bin/python3"})`;
    if (why && plan.torch === "required") throw new Error(`PyTorch: ${why}`);
    if (why) log(`  PyTorch skipped: ${why}`);
    else {
      const args = [plan.torchScript, "--serve", "--device", plan.torchDevice];
      args.push("--threads", String(plan.torchThreads), "--blocks", String(numBlock));
      const peer = new Peer("torch", python!, args);
      const hello = await peer.ready();
      if (hello.error && plan.torch === "required") throw new Error(`PyTorch: ${hello.error}`);
      const label = hello.error ? "torch" : `torch ${hello.torch} ${hello.device}`;
      peers.push({ label, peer, hello, torch: true });
    }
  }
  for (const p of peers) {
    report.peers[p.label] = p.hello;
    if (!p.hello.error) continue;
    log(`  ${p.label}: ${p.hello.error}`);
    report.rows.push({ case: "-", backend: p.label, ms: NaN, times_ms: [], error: p.hello.error });
  }
  const live = peers.filter((p) => !p.hello.error);
  const dumpDir = await Deno.makeTempDir({ prefix: "esrgan-bench-" });
  try {
    for (const c of plan.cases) {
      const name = caseName(c);
      const rows = new Map<string, BenchRow>();
      const active: typeof live = [];
      for (const p of live) {
        const spec = p.torch ? undefined : parseBackend(p.label);
        if (c.kind === "train" && spec?.winograd && spec.precision && spec.precision !== "f32") {
          log(`  ${name}: ${p.label} skipped (the training step runs Winograd in f32 only)`);
          continue;
        }
        if (c.kind === "train" && spec?.winograd === "auto") {
          log(`  ${name}: ${p.label} skipped (+auto chooses for forwards and upscales only)`);
          continue;
        }
        if (c.kind !== "forward" && spec?.winogradHalfMath) {
          log(`  ${name}: ${p.label} skipped (+halfmath is for forwards only)`);
          continue;
        }
        if (c.kind !== "upscale" && spec?.hostBlend) {
          log(`  ${name}: ${p.label} skipped (+hostblend is for upscales only)`);
          continue;
        }
        if (c.kind === "gan" && spec?.tune) {
          log(`  ${name}: ${p.label} skipped (the trainer does not tune)`);
          continue;
        }
        if (c.kind === "upscale" && spec && (spec.tune || (spec.name === "webgpu" && !spec.plan))) {
          // the Upscaler runs planned passes on webgpu, with the built-in tilings
          log(`  ${name}: ${p.label} skipped (the Upscaler neither tunes nor runs tfjs's webgpu ops)`);
          continue;
        }
        log(`  ${name}: warming up ${p.label} ...`);
        const r = await p.peer.request({ cmd: "setup", case: name, warmup: plan.warmup });
        const threads = p.hello.threads;
        rows.set(p.label, { case: name, backend: p.label, ms: NaN, times_ms: [], threads, error: r.error });
        if (!r.error) active.push(p);
      }
      for (let round = 0; round < plan.runs; round++) {
        // rotate who goes first, so no backend always runs right after the same other one
        for (let i = 0; i < active.length; i++) {
          const p = active[(i + round) % active.length];
          const row = rows.get(p.label)!;
          if (row.error) continue;
          const r = await p.peer.request({ cmd: "run" });
          if (r.error) row.error = r.error;
          else row.times_ms.push(r.ms);
          if (typeof r.cpu_ms === "number") (row.cpu_times_ms ??= []).push(r.cpu_ms);
          if (typeof r.host_ms === "number") (row.host_times_ms ??= []).push(r.host_ms);
          for (const [k, v] of Object.entries((r.also ?? {}) as Record<string, number>)) {
            ((row.also_times_ms ??= {})[k] ??= []).push(v);
          }
          if (r.also_errors) Object.assign(row.also_errors ??= {}, r.also_errors);
        }
        const got = active.map((p) => `${p.label} ${fmt(rows.get(p.label)!.times_ms[round])} ms`);
        log(`  ${name}: round ${round + 1}/${plan.runs}: ${got.join(", ")}`);
      }
      let ref: { label: string; out: Float32Array } | undefined;
      for (const p of active) {
        const dump = p.torch ? undefined : `${dumpDir}/${p.label.replace(/[^\w-]/g, "_")}.f32`;
        const r = await p.peer.request({ cmd: "finish", profile: plan.profile && !p.torch, dump });
        const row = rows.get(p.label)!;
        if (r.error) row.error ??= r.error;
        if (r.profile) row.profile = r.profile;
        if (r.tilings) row.tilings = r.tilings as Record<string, string>;
        if (typeof r.convs === "string") row.convs = r.convs;
        if (!row.error) row.ms = median(row.times_ms);
        if (!row.error && row.cpu_times_ms) row.cpu_ms = median(row.cpu_times_ms);
        if (!row.error && row.host_times_ms) row.host_ms = median(row.host_times_ms);
        for (const [k, v] of Object.entries(row.error ? {} : row.also_times_ms ?? {})) {
          (row.also_ms ??= {})[k] = median(v);
        }
        for (const [k, why] of Object.entries(row.also_errors ?? {})) {
          log(`  ${name}: ${p.label}: no ${k} time (${why})`);
        }
        if (c.kind !== "train" && c.kind !== "gan" && dump && !row.error) {
          const bytes = await Deno.readFile(dump);
          const out = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
          if (!ref) ref = { label: p.label, out };
          else [row.max_abs_diff, row.diff_vs] = [maxAbsDiff(ref.out, out), ref.label];
        }
      }
      addTorchRatios([...rows.values()]);
      report.rows.push(...rows.values());
      options.onCase?.(report);
    }
  } finally {
    for (const p of peers) {
      const bye = p.hello.error ? {} : await p.peer.close();
      Object.assign(report.peers[p.label], { exit: bye });
      for (const row of report.rows) {
        if (row.backend === p.label) Object.assign(row, { peak_mb: bye.peak_mb, peak_kind: bye.peak_kind });
      }
    }
    await Deno.remove(dumpDir, { recursive: true });
  }
  const load1 = loadAverage();
  if (load0 !== undefined && load1 !== undefined) report.load = [load0, load1];
  return report;
}

/**
 * Sets each row's ratios to the case's PyTorch row (if any, without error): vs_torch, vs_torch_host,
 * and vs_torch_also: the row's other timings ("ahead", "done") over PyTorch's median, the row's median
 * over each of PyTorch's other timings ("no-tf32", "cudnn-benchmark").
 */
export function addTorchRatios(rows: BenchRow[]): void {
  const torch = rows.find((r) => r.backend.startsWith("torch") && !r.error);
  if (!torch) return;
  for (const row of rows) {
    if (row === torch || row.error) continue;
    row.vs_torch = row.ms / torch.ms;
    if (torch.host_ms) row.vs_torch_host = row.ms / torch.host_ms;
    for (const [k, v] of Object.entries(row.also_ms ?? {})) (row.vs_torch_also ??= {})[k] = v / torch.ms;
    for (const [k, v] of Object.entries(torch.also_ms ?? {})) (row.vs_torch_also ??= {})[k] = row.ms / v;
  }
}

/** The 1-minute load average (Linux), or undefined. */
function loadAverage(): number | undefined {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return undefined;
  }
}

const fmt = (x: number | undefined, digits = 0) => x == null || Number.isNaN(x) ? "-" : x.toFixed(digits);

/** " (name value)" for each of a row's other timings. */
const also = (m: Record<string, number> | undefined, value: (v: number) => string) =>
  Object.entries(m ?? {}).map(([k, v]) => ` (${k} ${value(v)})`).join("");

/** Formats the rows as a table, with each profiled row's top kernels under it. */
export function formatTable(rows: BenchRow[]): string {
  const head = [
    "case",
    "backend",
    "median ms",
    "min ms",
    "runs",
    "CPU ms",
    "peak MB",
    "vs torch (+host; others)",
    "max |Δ| (vs)",
  ];
  const body = rows.map((r) => [
    r.case,
    r.backend + (r.threads && r.backend.startsWith("wasm") ? ` (${r.threads} thr)` : ""),
    r.error ? "error" : fmt(r.ms, 1) + (r.host_ms ? ` (+host ${fmt(r.host_ms, 1)})` : "") +
      also(r.also_ms, (v) => fmt(v, 1)),
    fmt(r.times_ms.length ? Math.min(...r.times_ms) : NaN, 1),
    String(r.times_ms.length),
    fmt(r.cpu_ms),
    fmt(r.peak_mb) + (r.peak_kind && r.peak_kind !== "rss" ? ` (${r.peak_kind})` : ""),
    r.vs_torch === undefined
      ? "-"
      : `${r.vs_torch.toFixed(2)}x${r.vs_torch_host ? ` (${r.vs_torch_host.toFixed(2)}x)` : ""}` +
        also(r.vs_torch_also, (v) => `${v.toFixed(2)}x`),
    r.max_abs_diff === undefined ? "-" : `${r.max_abs_diff.toExponential(1)} (${r.diff_vs})`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)];
  for (const r of rows) {
    if (r.error) out.push(`  ${r.case} ${r.backend}: ${r.error}`);
    if (r.tilings) {
      const counts = new Map<string, number>();
      for (const t of Object.values(r.tilings)) counts.set(t, (counts.get(t) ?? 0) + 1);
      out.push(
        `  tuned ${r.case} ${r.backend}: ${[...counts].map(([t, k]) => `${t} x${k}`).join(", ")} (shapes)`,
      );
    }
    if (r.convs) out.push(`  auto ${r.case} ${r.backend}: ${r.convs}`);
    if (!r.profile) continue;
    const { kernels, wall_ms, peak_tensor_mb, clock } = r.profile;
    const total = kernels.reduce((s, k) => s + (Number.isNaN(k.ms) ? 0 : k.ms), 0);
    out.push(
      `  profile ${r.case} ${r.backend}: kernels ${fmt(total)} ms of ${fmt(wall_ms)} ms ` +
        `${clock === "gpu" ? "on the GPU clock" : "wall"}` +
        ` (${fmt((100 * total) / wall_ms)}%), peak tensors ${fmt(peak_tensor_mb, 1)} MB`,
    );
    for (const k of kernels.slice(0, 8)) {
      out.push(
        `    ${k.name.padEnd(22)} ${fmt(k.ms, 1).padStart(9)} ms  ${
          fmt((100 * k.ms) / total, 1)
        }%  x${k.count}`,
      );
    }
  }
  return out.join("\n");
}

/** The bench's entry point; returns the exit code (1 when a row failed). */
export async function main(args: string[]): Promise<number> {
  let plan: BenchPlan;
  try {
    plan = parseBenchArgs(args);
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    return 1;
  }
  if (plan.help) {
    console.log(HELP);
    return 0;
  }
  // Mesa's Vulkan driver complains on every WebGPU probe without it (children inherit it)
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  if (plan.child) {
    await serveBackend(plan.child, plan);
    return 0;
  }
  // `timeout` (the GPU session's) stops the bench with SIGTERM: the cases done by then still come out
  let partial: BenchReport | undefined;
  const onTerm = async () => {
    if (partial) {
      const done = new Set(partial.rows.map((r) => r.case)).size;
      console.error(`bench: stopped by SIGTERM: reporting the ${done} case(s) finished`);
      await printReport({ ...partial, interrupted: true }, plan);
    }
    Deno.exit(143);
  };
  Deno.addSignalListener("SIGTERM", onTerm);
  let result: BenchReport;
  try {
    result = await runBench(plan, (s) => plan.json ? console.error(s) : console.log(s), {
      onCase: (r) => partial = r,
    });
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGTERM", onTerm);
  }
  await printReport(result, plan);
  return result.rows.some((r) => r.error) || Object.values(result.peers).some((p) => p.error) ? 1 : 0;
}

/** Prints the report (a table, or JSON with --json) and draws its chart (--chart). */
async function printReport(report: BenchReport, plan: BenchPlan): Promise<void> {
  if (plan.chart) {
    try {
      await writeBenchChart(report, plan.chart);
    } catch (e) {
      console.error(`bench: the chart: ${(e as Error).message}`);
    }
  }
  if (plan.json) console.log(JSON.stringify(report, null, 1));
  else {
    console.log(formatTable(report.rows));
    if (report.load) {
      const [a, b] = report.load;
      const busy = Math.max(a, b) > report.cpus ? ": busier than its CPUs, timings are inflated" : "";
      console.log(`  load average ${a.toFixed(1)} at the start, ${b.toFixed(1)} at the end${busy}`);
    }
    for (const [label, p] of Object.entries(report.peers)) {
      if (p.exit?.custom_kernels) {
        console.log(`  ${label} kernel calls: ${JSON.stringify(p.exit.custom_kernels)}`);
      }
    }
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
