/**
 * A bench report as a bar chart: per case, each backend's median time over PyTorch's from the same
 * run (or, without PyTorch, over the case's fastest row), with a line at 1 — the picture of the
 * table `deno task bench` prints. SVG built here (no dependencies, works in bundles);
 * train/plot_png.ts renders it to PNG.
 * @module
 */
import type { Label } from "../train/plot.ts";

/** What the chart reads of a bench row (bench.ts's BenchRow). */
export interface ChartRow {
  case: string;
  backend: string;
  ms: number;
  vs_torch?: number;
  error?: string;
}

const W = 900, ROW = 22, LEFT = 250, RIGHT = 150, TOP = 50;

/** The chart of a report's rows as an SVG, and its labels apart (for renderers without fonts). */
export function benchChartParts(
  report: { rows: ChartRow[] },
): { svg: string; labels: Label[]; height: number } {
  const labels: Label[] = [];
  const label = (x: number, y: number, text: string, color = "#222", anchor: Label["anchor"] = "start") =>
    labels.push({ x, y, text, color, anchor });
  const torch = report.rows.some((r) => r.vs_torch !== undefined);
  const cases = [...new Set(report.rows.map((r) => r.case))];
  const bars: { y: number; ratio: number; text: string }[] = [];
  let y = TOP;
  for (const c of cases) {
    const rows = report.rows.filter((r) => r.case === c && Number.isFinite(r.ms) && !r.error);
    const fastest = Math.min(...rows.filter((r) => !r.backend.startsWith("torch")).map((r) => r.ms));
    const ref = rows.find((r) => r.backend.startsWith("torch"));
    label(10, y + 15, torch && ref ? `${c} (${ref.backend}: ${fmtMs(ref.ms)})` : c, "#000");
    y += ROW;
    for (const r of rows) {
      if (torch && r.backend.startsWith("torch")) continue;
      const ratio = torch ? r.vs_torch : r.ms / fastest;
      if (ratio === undefined) continue;
      label(LEFT - 8, y + 15, r.backend, "#444", "end");
      bars.push({ y, ratio, text: `${ratio.toFixed(2)}x (${fmtMs(r.ms)})` });
      y += ROW;
    }
    y += ROW / 2;
  }
  const height = y + 30;
  const max = Math.max(1.5, ...bars.map((b) => b.ratio)) * 1.05;
  const X = (v: number) => LEFT + (v / max) * (W - LEFT - RIGHT);
  let body = "";
  for (const b of bars) {
    const color = b.ratio <= 1 ? "#2ca02c" : b.ratio <= 1.5 ? "#ff7f0e" : "#d62728";
    body +=
      `<rect x="${LEFT}" y="${b.y + 3}" width="${(X(b.ratio) - LEFT).toFixed(1)}" height="${ROW - 6}" ` +
      `fill="${color}"/>`;
    label(Math.max(X(b.ratio), X(1)) + 6, b.y + 15, b.text); // clear of the line at 1
  }
  body += `<line x1="${X(1)}" y1="${TOP - 8}" x2="${X(1)}" y2="${y}" stroke="#000" stroke-dasharray="4 3"/>`;
  label(X(1), TOP - 12, torch ? "PyTorch = 1" : "fastest = 1", "#000", "middle");
  label(
    10,
    20,
    torch
      ? "median time over PyTorch's, same run (lower is better)"
      : "median time over the case's fastest backend (lower is better)",
    "#000",
  );
  const text = labels.map((l) =>
    `<text x="${l.x}" y="${l.y}" fill="${l.color}" font-size="12" font-family="sans-serif" ` +
    `text-anchor="${l.anchor}">${escape(l.text)}</text>`
  ).join("");
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}">` +
    `<rect width="${W}" height="${height}" fill="white"/>${body}${text}</svg>`;
  return { svg, labels, height };
}

/**
 * Writes the report's bar chart (bench/chart.ts) to `path`: SVG for `.svg`, else PNG (rendered by
 * train/plot_png.ts, loaded only then: bundles, which cannot render, write SVG).
 */
export async function writeBenchChart(report: { rows: ChartRow[] }, path: string): Promise<void> {
  const parts = benchChartParts(report);
  if (path.endsWith(".svg")) return await Deno.writeTextFile(path, parts.svg);
  // a specifier the bundler does not follow: a bundle (the GPU session's) leaves imagescript out
  const renderer = "../train/plot_png.ts";
  const { renderSvgPng } = await import(renderer) as typeof import("../train/plot_png.ts");
  await Deno.writeFile(path, await renderSvgPng(parts));
}

function fmtMs(ms: number): string {
  return ms >= 100 ? `${Math.round(ms).toLocaleString("en-US")} ms` : `${ms.toFixed(1)} ms`;
}

function escape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
