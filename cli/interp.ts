/**
 * `deno task interp A B --alpha 0.8 -o OUT [--dtype fp32|fp16|int8]`: network interpolation
 * (1 − α)·A + α·B of two generators of one architecture (the paper: A the PSNR net, B the ESRGAN
 * net). A and B may be model files or training checkpoints (EMA weights).
 * @module
 */
import { parseArgs } from "node:util";
import { interpolateModelFiles } from "../train/interp.ts";
import { runMain } from "./run_main.ts";

const USAGE = "usage: deno task interp A B --alpha 0.8 -o OUT.safetensors [--dtype fp32|fp16|int8]";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      alpha: { type: "string" },
      out: { type: "string", short: "o" },
      dtype: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length !== 2 || !values.out || values.alpha === undefined) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const alpha = Number(values.alpha);
  if (!Number.isFinite(alpha)) throw new Error(`--alpha must be a number, not ${values.alpha}`);
  if (alpha < 0 || alpha > 1) console.error(`note: alpha ${alpha} lies outside [0, 1]: extrapolating`);
  const dtype = values.dtype as "fp32" | "fp16" | "int8" | undefined;
  if (dtype && !["fp32", "fp16", "int8"].includes(dtype)) {
    throw new Error(`--dtype must be fp32, fp16 or int8`);
  }
  const [a, b] = await Promise.all(
    positionals.map(async (p) => ({ name: p, bytes: await Deno.readFile(p) })),
  );
  const bytes = interpolateModelFiles(a, b, { alpha, dtype });
  await Deno.writeFile(values.out, bytes);
  console.error(`${values.out}: (1 - ${alpha}) * ${a.name} + ${alpha} * ${b.name}`);
  return 0;
}

if (import.meta.main) await runMain(main);
