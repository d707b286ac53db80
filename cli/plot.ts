/**
 * `deno task plot LOG.jsonl -o curves.png`: the loss and PSNR curves of a training log as PNG (or
 * SVG when OUT ends in .svg), e.g. for a log brought back from the GPU machine.
 * @module
 */
import { parseArgs } from "node:util";
import type { LogRecord } from "../train/log.ts";
import { curvesSvg } from "../train/plot.ts";
import { renderCurvesPng } from "../train/plot_png.ts";
import { runMain } from "./run_main.ts";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { out: { type: "string", short: "o" } },
  });
  if (positionals.length !== 1 || !values.out) {
    console.error("usage: deno task plot LOG.jsonl -o curves.png|curves.svg");
    return 2;
  }
  const text = await Deno.readTextFile(positionals[0]);
  const records = text.split("\n").filter((l) => l.trim()).map((l, i) => {
    try {
      return JSON.parse(l) as LogRecord;
    } catch {
      throw new Error(`${positionals[0]}: line ${i + 1} is not JSON`);
    }
  });
  if (values.out.endsWith(".svg")) await Deno.writeTextFile(values.out, curvesSvg(records));
  else await Deno.writeFile(values.out, await renderCurvesPng(records));
  console.error(`${values.out}: ${records.length} records`);
  return 0;
}

if (import.meta.main) await runMain(main);
