/**
 * `deno task export CKPT -o OUT [--dtype fp32|fp16|int8] [--which ema|g]`: a training checkpoint's
 * generator (its EMA by default, as BasicSR's params_ema) as a model file.
 * @module
 */
import { parseArgs } from "node:util";
import { readCheckpoint } from "../train/checkpoint.ts";
import { exportGenerator } from "../train/export.ts";
import { runMain } from "./run_main.ts";

const USAGE =
  "usage: deno task export CHECKPOINT -o OUT.safetensors [--dtype fp32|fp16|int8] [--which ema|g]";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      out: { type: "string", short: "o" },
      dtype: { type: "string", default: "fp16" },
      which: { type: "string", default: "ema" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length !== 1 || !values.out) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const dtype = values.dtype as "fp32" | "fp16" | "int8";
  if (!["fp32", "fp16", "int8"].includes(dtype)) {
    throw new Error(`--dtype must be fp32, fp16 or int8, not ${dtype}`);
  }
  if (values.which !== "ema" && values.which !== "g") throw new Error(`--which must be ema or g`);
  const ckpt = await readCheckpoint(positionals[0]);
  const bytes = exportGenerator(ckpt, { dtype, which: values.which });
  await Deno.writeFile(values.out, bytes);
  console.error(
    `${values.out}: ${
      values.which === "ema" ? "EMA generator" : "generator"
    } of step ${ckpt.step}, ${dtype}, ${(bytes.length / 1048576).toFixed(2)} MiB`,
  );
  return 0;
}

if (import.meta.main) await runMain(main);
