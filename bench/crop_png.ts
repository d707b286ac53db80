/**
 * Writes a SIDE x SIDE crop of an image, from its centre, as PNG: inputs of a given size for the
 * benchmarks that take image files (bench/ncnn_peer.ts; README's measurements of `deno task
 * upscale` on a 256x256 photo).
 *
 *     deno run -A bench/crop_png.ts SRC.png SIDE OUT.png
 * @module
 */
import { decodeImage, encodeImage } from "../core/image_io.ts";

const [src, sideArg, out] = Deno.args;
const side = Number(sideArg);
if (!src || !out || !Number.isInteger(side) || side < 1) {
  console.error("usage: crop_png.ts SRC SIDE OUT.png");
  Deno.exit(2);
}
const img = await decodeImage(await Deno.readFile(src));
if (img.width < side || img.height < side) {
  console.error(`${src}: ${img.width}x${img.height}, smaller than ${side}x${side}`);
  Deno.exit(1);
}
const x0 = (img.width - side) >> 1, y0 = (img.height - side) >> 1;
const data = new Uint8ClampedArray(side * side * 4);
for (let y = 0; y < side; y++) {
  const from = ((y0 + y) * img.width + x0) * 4;
  data.set(img.data.subarray(from, from + side * 4), y * side * 4);
}
await Deno.writeFile(out, await encodeImage({ width: side, height: side, data }, { format: "png" }));
