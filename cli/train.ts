/**
 * `deno task train --config smoke|psnr|gan|smoke-gan|FILE --data DIR [--data-lr DIR]
 *   [--val DIR [--val-lr DIR]] --out DIR [--resume]`
 * (`--data-lr`, `--val-lr`: the HR images' own LR, paired by name; else MATLAB bicubic of the HR),
 * plus any option as a flag (`--total-steps 100`, `--lr-g 1e-4`, `--no-rot`, lists comma-separated).
 * Backend: webgpu on a real GPU; else wasm (G's step on core/kernels' CPU training step, the gan
 * stage's D and VGG on tfjs-wasm), or cpu where the step cannot be planned (tfjs's ops, slow);
 * `--backend` forces one.
 * Ctrl-C saves a checkpoint after the current step and exits; `--resume` continues from
 * OUT/checkpoint.safetensors (or `--resume-from FILE`) with the checkpoint's options, flags on top.
 * @module
 */
import { parseArgs } from "node:util";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { applyFlags, configFlags, loadConfig, PRESETS, validateConfig } from "../train/config.ts";
import { readCheckpoint } from "../train/checkpoint.ts";
import { checkpointPath, runTraining } from "../train/train.ts";
import { cpuPlannable } from "../train/trainer.ts";
import { imageIoCodec } from "../train/codecs.ts";
import { renderCurvesPng } from "../train/plot_png.ts";
import { runMain } from "./run_main.ts";

const USAGE = `usage: deno task train --config ${
  Object.keys(PRESETS).join("|")
}|FILE.json --data DIR [--data-lr DIR] [--val DIR [--val-lr DIR]] --out DIR
       [--resume | --resume-from CKPT] [--backend webgpu|wasm|cpu] [--OPTION VALUE ...]
options (all also keys of the JSON file): see train/config.ts`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      config: { type: "string" },
      data: { type: "string" },
      "data-lr": { type: "string" },
      val: { type: "string" },
      "val-lr": { type: "string" },
      out: { type: "string" },
      resume: { type: "boolean" },
      "resume-from": { type: "string" },
      "no-export": { type: "boolean" },
      help: { type: "boolean", short: "h" },
      ...configFlags(),
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values["val-lr"] && !values.val) {
    console.error(`--val-lr needs --val (the HR images)\n${USAGE}`);
    return 2;
  }
  if (!values.data || !values.out) {
    console.error(`--data and --out are required\n${USAGE}`);
    return 2;
  }
  const resumePath = values["resume-from"] ?? (values.resume ? checkpointPath(values.out) : undefined);
  const resume = resumePath ? await readCheckpoint(resumePath) : undefined;
  let base;
  if (resume) {
    base = validateConfig(resume.config, resumePath!);
    if (values.config) {
      console.error(`note: resuming uses the checkpoint's options; --config ${values.config} is ignored`);
    }
  } else {
    base = await loadConfig(values.config ?? "psnr");
  }
  const config = applyFlags(base, values as Record<string, unknown>);

  let backend = config.backend || undefined;
  if (!backend) {
    const probe = await probeWebGPU();
    backend = probe.adapter && !probe.software ? "webgpu" : cpuPlannable(config) ? "wasm" : "cpu";
  }
  const info = await initBackend(backend);
  console.error(
    `=== BACKEND: ${info.name}${info.adapter ? ` (${info.adapter})` : ""}, ${
      config.backend
        ? "requested"
        : info.name === "webgpu"
        ? "a GPU was found"
        : info.name === "wasm"
        ? "no real GPU found: G's step on the CPU kernels"
        : "no real GPU found; tfjs's cpu ops (slow; the CPU kernels need x4, widths and LR sides multiples of 4)"
    } ===`,
  );

  const ac = new AbortController();
  const onInt = () => {
    if (ac.signal.aborted) Deno.exit(130);
    console.error("\nCtrl-C: saving a checkpoint after this step (press again to quit at once)");
    ac.abort();
  };
  Deno.addSignalListener("SIGINT", onInt);
  try {
    const s = await runTraining({
      config,
      dataDir: values.data,
      dataLrDir: values["data-lr"],
      valDir: values.val,
      valLrDir: values["val-lr"],
      outDir: values.out,
      resume,
      signal: ac.signal,
      noExport: values["no-export"],
      codec: imageIoCodec,
      renderPng: renderCurvesPng,
    });
    const fmt = (r: Record<string, number>) =>
      Object.entries(r).filter(([k]) => k !== "lr").map(([k, v]) => `${k} ${v.toFixed(5)}`).join(", ");
    console.error(
      `steps ${s.startStep}→${s.endStep} in ${s.seconds.toFixed(1)} s (${s.itPerSec.toFixed(3)} it/s); ` +
        `first ${fmt(s.first)}; last ${fmt(s.last)}` +
        (s.val ? `; val PSNR ${s.val.psnr.toFixed(3)} dB SSIM ${s.val.ssim.toFixed(4)}` : ""),
    );
    return s.interrupted ? 130 : 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
  }
}

if (import.meta.main) await runMain(main);
