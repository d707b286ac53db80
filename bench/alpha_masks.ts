/**
 * Hard-edged alpha masks for scoring how alpha channels are upscaled: each image's luma thresholded
 * at 128, written as a gray PNG named SET_IMAGE_mask.png. `deno task eval` on the folder then scores
 * bicubic against the model, which is what the Upscaler does with a transparent image's alpha
 * (`alpha: "net"`: the alpha as a gray picture through the model, back to luma):
 *
 *     deno run -A bench/alpha_masks.ts /tmp/masks ../shared/data/bench/Set5/x4/*_HR.png \
 *       ../shared/data/bench/Set14/x4/*_HR.png
 *     deno task eval --data /tmp/masks --model bicubic --model realesrgan-x4plus --report out/masks
 * @module
 */
import { basename, dirname } from "node:path";
import { decodeImage, encodeImage } from "../core/image_io.ts";

if (import.meta.main) {
  const [out, ...files] = Deno.args;
  if (!out || !files.length) {
    console.error("usage: deno run -A bench/alpha_masks.ts OUT_DIR IMAGE...");
    Deno.exit(2);
  }
  await Deno.mkdir(out, { recursive: true });
  for (const file of files) {
    const img = await decodeImage(await Deno.readFile(file), { name: file });
    const data = new Uint8ClampedArray(img.data.length);
    for (let i = 0; i < data.length; i += 4) {
      const luma = 0.299 * img.data[i] + 0.587 * img.data[i + 1] + 0.114 * img.data[i + 2];
      data[i] = data[i + 1] = data[i + 2] = luma > 128 ? 255 : 0;
      data[i + 3] = 255;
    }
    // benchmark files repeat names across sets (Set5/x4/img_001..., Set14/x4/img_001...)
    const set = basename(dirname(dirname(file)));
    const name = `${set}_${basename(file).replace(/(_SRF_\d+_HR)?\.\w+$/, "")}_mask.png`;
    await Deno.writeFile(
      `${out}/${name}`,
      await encodeImage({ width: img.width, height: img.height, data }, { format: "png" }),
    );
  }
  console.log(`${files.length} masks in ${out}`);
}
