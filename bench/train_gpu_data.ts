/**
 * Packs training images for the GPU machine (bench/gpu_session.sh): the centre `--size`² of each
 * image (or the whole image when smaller) as JPEG quality 95, into a folder carried inside
 * .device/. JPEG because the carry limit (64 MiB, of which Deno and the repository take ~55)
 * leaves room for ~3 MB of photos: 37 crops of 480 px. The session script decodes them to PNG there
 * (Pillow), which the bundle's fast-png reader takes.
 *
 *   deno run -A bench/train_gpu_data.ts ../shared/data/train .device/train_jpg --size 480
 * @module
 */
import { parseArgs } from "node:util";
import { decodeImage, encodeImage } from "../core/image_io.ts";
import { listImages } from "../train/data.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { size: { type: "string", default: "480" }, quality: { type: "string", default: "95" } },
});
if (positionals.length !== 2) {
  console.error("usage: deno run -A bench/train_gpu_data.ts SRC_DIR DST_DIR [--size 480] [--quality 95]");
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
  const jpeg = await encodeImage({ width: w, height: h, data }, {
    format: "jpeg",
    quality: Number(values.quality),
  });
  const name = f.split("/").pop()!.replace(/\.[^.]+$/, ".jpg");
  await Deno.writeFile(`${dst}/${name}`, jpeg);
  total += jpeg.length;
}
console.log(`${dst}: ${(total / 1048576).toFixed(1)} MiB of JPEG crops`);
