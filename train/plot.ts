/**
 * The loss and PSNR curves of a training log as an SVG picture (two panels: the training losses on a
 * log scale, validation PSNR), drawn here without dependencies so it works in bundles too;
 * train/plot_png.ts renders it to PNG.
 * @module
 */
import type { LogRecord } from "./log.ts";

const W = 900, PANEL_H = 300, PAD = { l: 70, r: 20, t: 30, b: 40 };
const COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

interface Series {
  name: string;
  points: [number, number][];
}

interface Panel {
  title: string;
  series: Series[];
  log: boolean;
}

/** One text label of the picture. */
export interface Label {
  x: number;
  y: number;
  text: string;
  color: string;
  anchor: "start" | "end" | "middle";
}

function panels(records: LogRecord[]): Panel[] {
  const train = records.filter((r) => r.type === "train");
  const keys = [...new Set(train.flatMap((r) => Object.keys(r).filter((k) => k.startsWith("l_"))))];
  const lossSeries = keys.map((k) => ({
    name: k,
    points: train.filter((r) => typeof r[k] === "number" && (r[k] as number) > 0).map((r) =>
      [r.step, r[k] as number] as [number, number]
    ),
  }));
  const val = records.filter((r) =>
    r.type === "val" && typeof r.psnr === "number" && Number.isFinite(r.psnr)
  );
  return [
    { title: "training losses (log scale)", series: lossSeries, log: true },
    {
      title: "validation PSNR (dB, Y)",
      series: [{ name: "psnr", points: val.map((r) => [r.step, r.psnr as number]) }],
      log: false,
    },
  ];
}

function drawPanel(p: Panel, top: number, labels: Label[]): string {
  const x0 = PAD.l, x1 = W - PAD.r, y0 = top + PAD.t, y1 = top + PANEL_H - PAD.b;
  const all = p.series.flatMap((s) => s.points);
  let out = `<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" fill="none" stroke="#444"/>`;
  labels.push({ x: (x0 + x1) / 2, y: top + 20, text: p.title, color: "#000", anchor: "middle" });
  if (!all.length) {
    labels.push({ x: (x0 + x1) / 2, y: (y0 + y1) / 2, text: "no data yet", color: "#888", anchor: "middle" });
    return out;
  }
  const f = (v: number) => (p.log ? Math.log10(v) : v);
  let xmin = Math.min(...all.map((q) => q[0])), xmax = Math.max(...all.map((q) => q[0]));
  let ymin = Math.min(...all.map((q) => f(q[1]))), ymax = Math.max(...all.map((q) => f(q[1])));
  if (xmax === xmin) xmax = xmin + 1, xmin -= 0;
  if (ymax - ymin < 1e-9) ymax += 0.5, ymin -= 0.5;
  const X = (v: number) => x0 + (v - xmin) / (xmax - xmin) * (x1 - x0);
  const Y = (v: number) => y1 - (f(v) - ymin) / (ymax - ymin) * (y1 - y0);
  for (let i = 0; i <= 4; i++) {
    const yv = ymin + (ymax - ymin) * i / 4, y = y1 - (y1 - y0) * i / 4;
    out += `<line x1="${x0}" y1="${y}" x2="${x1}" y2="${y}" stroke="#ddd"/>`;
    const v = p.log ? Math.pow(10, yv) : yv;
    labels.push({
      x: x0 - 6,
      y: y + 4,
      text: p.log ? v.toExponential(1) : v.toFixed(2),
      color: "#444",
      anchor: "end",
    });
    const xv = xmin + (xmax - xmin) * i / 4, x = x0 + (x1 - x0) * i / 4;
    labels.push({ x, y: y1 + 16, text: String(Math.round(xv)), color: "#444", anchor: "middle" });
  }
  p.series.forEach((s, i) => {
    if (!s.points.length) return;
    const c = COLORS[i % COLORS.length];
    const pts = s.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
    out += s.points.length > 1
      ? `<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="1.5"/>`
      : `<circle cx="${X(s.points[0][0])}" cy="${Y(s.points[0][1])}" r="3" fill="${c}"/>`;
    labels.push({ x: x1 - 8, y: y0 + 16 + 16 * i, text: s.name, color: c, anchor: "end" });
  });
  return out;
}

/** The curves of a log as an SVG, and its labels apart (for renderers without fonts). */
export function curvesSvgParts(records: LogRecord[]): { svg: string; labels: Label[]; height: number } {
  const labels: Label[] = [];
  const ps = panels(records);
  const height = PANEL_H * ps.length;
  const body = ps.map((p, i) => drawPanel(p, i * PANEL_H, labels)).join("");
  const text = labels.map((l) =>
    `<text x="${l.x}" y="${l.y}" fill="${l.color}" font-size="12" font-family="sans-serif" text-anchor="${l.anchor}">${l.text}</text>`
  ).join("");
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}">` +
    `<rect width="${W}" height="${height}" fill="white"/>${body}`;
  return { svg: svg + text + "</svg>", labels, height };
}

/** The curves of a log as SVG text. */
export function curvesSvg(records: LogRecord[]): string {
  return curvesSvgParts(records).svg;
}
