/**
 * The curves picture as PNG: train/plot.ts's SVG rendered by imagescript (`Image.renderSVG`, resvg
 * compiled to wasm). That renderer has no fonts, so the labels become glyph outlines (opentype.js,
 * from a system TrueType font); where no font is found the PNG has curves and axes but no text
 * (the SVG keeps them), and a warning says so once. Not for bundles: imagescript loads its wasm
 * from its package folder.
 * @module
 */
import { Image } from "imagescript";
import opentype from "opentype.js";
import type { LogRecord } from "./log.ts";
import { curvesSvgParts, type Label } from "./plot.ts";

const FONTS = [
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
  "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

let font: opentype.Font | null | undefined;

async function loadFont(): Promise<opentype.Font | null> {
  for (const f of FONTS) {
    try {
      return opentype.parse((await Deno.readFile(f)).buffer);
    } catch { /* next */ }
  }
  console.warn(
    `no TrueType font at ${FONTS.join(" or ")}: PNG pictures have no labels (their SVGs have them)`,
  );
  return null;
}

/** The curves of a log as PNG bytes. */
export function renderCurvesPng(records: LogRecord[]): Promise<Uint8Array> {
  return renderSvgPng(curvesSvgParts(records));
}

/**
 * An SVG picture as PNG bytes, its `<text>` elements replaced by `labels` drawn as glyph outlines
 * (12 px, as this project's pictures set them).
 */
export async function renderSvgPng({ svg, labels }: { svg: string; labels: Label[] }): Promise<Uint8Array> {
  if (font === undefined) font = await loadFont();
  let paths = "";
  if (font) {
    for (const l of labels) {
      const w = font.getAdvanceWidth(l.text, 12);
      const x = l.anchor === "end" ? l.x - w : l.anchor === "middle" ? l.x - w / 2 : l.x;
      paths += `<path d="${font.getPath(l.text, x, l.y, 12).toPathData(2)}" fill="${l.color}"/>`;
    }
  }
  const forPng = svg.replace(/<text[^>]*>[^<]*<\/text>/g, "").replace("</svg>", paths + "</svg>");
  const img = await Image.renderSVG(forPng, 1, Image.SVG_MODE_SCALE);
  return await img.encode();
}
