/**
 * `deno task plot LOG.jsonl -o curves.png`: the loss and PSNR curves of a training log as PNG (or
 * SVG when OUT ends in .svg), e.g. for a log brought back from the GPU machine; given a bench report
 * (`deno task bench --json` output), its bar chart (bench/chart.ts).
 * @module
 */
import { parseArgs } from "node:util";
import type { LogRecord } from "../train/log.ts";
import { curvesSvg } from "../train/plot.ts";
import { renderCurvesPng } from "../train/plot_png.ts";
import { writeBenchChart } from "../bench/chart.ts";
import { runMain } from "./run_main.ts";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { out: { type: "string", short: "o" } },
  });
  if (positionals.length !== 1 || !values.out) {
    console.error("usage: deno task plot LOG.jsonl|BENCH.json -o OUT.png|OUT.svg");
    return 2;
  }
  const text = await Deno.readTextFile(positionals[0]);
  const report = benchReport(text);
  if (report) {
    await writeBenchChart(report, values.out);
    console.error(`${values.out}: ${report.rows.length} bench rows`);
    return 0;
  }
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

/** The text as a bench report (one JSON object with rows), or null: a training log. */
function benchReport(text: string): Parameters<typeof writeBenchChart>[0] | null {
  try {
    const v = JSON.parse(text);
    return v && Array.isArray(v.rows) ? v : null;
  } catch {
    return null; // JSONL: several objects
  }
}

if (import.meta.main) await runMain(main);
