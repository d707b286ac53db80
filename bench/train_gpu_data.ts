/**
 * Packs training images for bench/train_gpu.ts on the GPU machine: the centre `--size`² of each
 * image (or the whole image when smaller) as PNG, which the bundle's fast-png reader decodes, into
 * a folder carried inside .device/ (prepare.sh would turn PNGs into JPEGs, which a bundle cannot
 * decode). 37 crops of 512 px take about 15-20 MB.
 *
 *   deno run -A bench/train_gpu_data.ts ../shared/data/train .device/train_png --size 512
 * @module
 */
import { parseArgs } from "node:util";
import { decodeImage, encodeImage } from "../core/image_io.ts";
import { listImages } from "../train/data.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { size: { type: "string", default: "512" } },
});
if (positionals.length !== 2) {
  console.error("usage: deno run -A bench/train_gpu_data.ts SRC_DIR DST_DIR [--size 512]");
  Deno.exit(2);
}
const [src, dst] = positionals;
const size = Number(values.size);
await Deno.mkdir(dst, { recursive: true });
let total = 0;
for (const f of await listImages(src)) {
  const img = await decodeImage(await Deno.readFile(f), { name: f });
  const w = Math.min(size, img.width), h = Math.min(size, img.height);
  const left = (img.width - w) >> 1, top = (img.height - h) >> 1;
  const data = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) {
    data.set(
      img.data.subarray(((top + y) * img.width + left) * 4, ((top + y) * img.width + left + w) * 4),
      y * w * 4,
    );
  }
  const png = await encodeImage({ width: w, height: h, data }, { format: "png" });
  const name = f.split("/").pop()!.replace(/\.[^.]+$/, ".png");
  await Deno.writeFile(`${dst}/${name}`, png);
  total += png.length;
}
console.log(`${dst}: ${(total / 1048576).toFixed(1)} MiB of PNG crops`);
