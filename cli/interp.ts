/**
 * `deno task interp A B --alpha 0.8 -o OUT [--dtype fp32|fp16|int8]`: network interpolation
 * (1 − α)·A + α·B of two generators of one architecture (the paper: A the PSNR net, B the ESRGAN
 * net). A and B may be model files, shipped models' names (`esrgan-psnr-x4 esrgan-gan-x4`) or training
 * checkpoints (EMA weights).
 *
 * `deno task interp A B --table DIR [--alphas 0,0.2,0.4,0.6,0.8,1] [--scale 4]`: the trade-off
 * instead, as a Markdown table: for each α, PSNR and SSIM (Y, scale px of border cropped) and the
 * detail (mean |Laplacian| of Y, core/metrics.ts) of the interpolated net on a benchmark folder,
 * with bicubic's and HR's detail for reference. Nothing is written.
 * @module
 */
import { parseArgs } from "node:util";
import { parseNumberFlag, POSITIVE } from "./flags.ts";
import { interpolateModelFiles } from "../train/interp.ts";
import { initBackend } from "../core/backend.ts";
import { bicubicModel, evaluateDataset, listDataset, type SrModel, upscalerModel } from "../core/eval.ts";
import { laplacianEnergy } from "../core/metrics.ts";
import { Upscaler } from "../core/upscaler.ts";
import { resolveModel } from "../core/weights/shipped.ts";
import { runMain } from "./run_main.ts";

const USAGE = "usage: deno task interp A B --alpha 0.8 -o OUT.safetensors [--dtype fp32|fp16|int8]\n" +
  "       deno task interp A B --table DATASET_DIR [--alphas 0,0.2,0.4,0.6,0.8,1] [--scale 4]";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      alpha: { type: "string" },
      out: { type: "string", short: "o" },
      dtype: { type: "string" },
      table: { type: "string" },
      alphas: { type: "string" },
      scale: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const table = values.table !== undefined;
  if (values.help || positionals.length !== 2 || (!table && (!values.out || values.alpha === undefined))) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const dtype = values.dtype as "fp32" | "fp16" | "int8" | undefined;
  if (dtype && !["fp32", "fp16", "int8"].includes(dtype)) {
    throw new Error(`--dtype must be fp32, fp16 or int8`);
  }
  const [a, b] = await Promise.all(
    positionals.map(async (p) => ({ name: p, bytes: await Deno.readFile(resolveModel(p)) })),
  );
  if (table) {
    const alphas = (values.alphas ?? "0,0.2,0.4,0.6,0.8,1").split(",").map(number("--alphas"));
    console.log(
      await tradeOffTable(
        a,
        b,
        values.table!,
        alphas,
        parseNumberFlag("--scale", values.scale, POSITIVE) ?? 4,
      ),
    );
    return 0;
  }
  const alpha = number("--alpha")(values.alpha!);
  if (alpha < 0 || alpha > 1) console.error(`note: alpha ${alpha} lies outside [0, 1]: extrapolating`);
  const bytes = interpolateModelFiles(a, b, { alpha, dtype });
  await Deno.writeFile(values.out!, bytes);
  console.error(`${values.out}: (1 - ${alpha}) * ${a.name} + ${alpha} * ${b.name}`);
  return 0;
}

const number = (flag: string) => (s: string): number => parseNumberFlag(flag, s)!;

type ModelBytes = { name: string; bytes: Uint8Array };

/** The Markdown table of {@link main}'s `--table`. */
async function tradeOffTable(a: ModelBytes, b: ModelBytes, dir: string, alphas: number[], scale: number) {
  await initBackend();
  const dataset = await listDataset(dir, { scale });
  const names = alphas.map((alpha) => `alpha ${alpha}`);
  const ups = alphas.map((alpha, i) =>
    Upscaler.fromBytes(interpolateModelFiles(a, b, { alpha, dtype: "fp32" }), { name: names[i] })
  );
  const detail = new Map<string, number>();
  const add = (k: string, v: number) => detail.set(k, (detail.get(k) ?? 0) + v / dataset.entries.length);
  try {
    const models: SrModel[] = [bicubicModel(), ...ups.map((u, i) => upscalerModel(names[i], u))];
    const result = await evaluateDataset(dataset, models, {
      scale,
      onImage: ({ pair, outputs }, i, total) => {
        add("HR", laplacianEnergy(pair.hr, { cropBorder: scale }));
        for (const [name, img] of outputs) add(name, laplacianEnergy(img, { cropBorder: scale }));
        console.error(`${dataset.name}: ${i + 1}/${total} images`);
      },
    });
    const hr = detail.get("HR")!;
    const row = (label: string, name: string) => {
      const m = result.models[name];
      const d = detail.get(name)!;
      return `| ${label} | ${m.psnr.toFixed(2)} | ${m.ssim.toFixed(4)} | ${d.toFixed(2)} (${
        (d / hr).toFixed(2)
      }x HR) |`;
    };
    return [
      `${dataset.name} x${scale}, (1 − α)·${a.name} + α·${b.name}; PSNR/SSIM on Y, detail = mean |Laplacian| of Y ` +
      `(HR: ${hr.toFixed(2)}), ${scale} px border cropped`,
      "",
      "| α | PSNR (dB) | SSIM | detail |",
      "| --: | --: | --: | --: |",
      row("bicubic", "bicubic"),
      ...alphas.map((alpha, i) => row(String(alpha), names[i])),
    ].join("\n");
  } finally {
    ups.forEach((u) => u.dispose());
  }
}

if (import.meta.main) await runMain(main);
