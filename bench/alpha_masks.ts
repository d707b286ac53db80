/**
 * Hard-edged alpha masks for scoring how alpha channels are upscaled: each image's luma thresholded
 * at 128 (the HR mask), its MATLAB-bicubic x1/4 the LR one.
 *
 * Writes the masks as gray PNGs (SET_IMAGE_mask.png), for `deno task eval` to score the net alone on
 * them as gray pictures against bicubic:
 *
 *     deno run -A bench/alpha_masks.ts /tmp/masks ../shared/data/bench/Set5/x4/*_HR.png \
 *       ../shared/data/bench/Set14/x4/*_HR.png
 *     deno task eval --data /tmp/masks --model bicubic --model realesrgan-x4plus --report out/masks
 *
 * or, with `--upscale NAME --alpha net|bicubic`, scores what `Upscaler.upscale` makes of RGBA images
 * (the image's LR as colours, the LR mask as alpha): mean PSNR and SSIM of the output alpha against
 * the HR mask (gray values, 4 px border), and the share of pixels 4 px or more from a mask edge whose
 * alpha is not exactly 0 or 255 (haze):
 *
 *     deno run -A bench/alpha_masks.ts --upscale realesrgan-x4plus --alpha net ../shared/data/bench/Set5/x4/*_HR.png ...
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname } from "node:path";
import { decodeImage, encodeImage, type RgbaImage } from "../core/image_io.ts";
import { imresize } from "../core/imresize.ts";
import { psnr, ssim } from "../core/metrics.ts";

/** The HR mask (luma > 128, as gray RGBA) and the image, both cut to a multiple of 4. */
function maskOf(img: RgbaImage): { mask: RgbaImage; photo: RgbaImage } {
  const W = img.width - img.width % 4, H = img.height - img.height % 4;
  const mask = { width: W, height: H, data: new Uint8ClampedArray(W * H * 4) };
  const photo = { width: W, height: H, data: new Uint8ClampedArray(W * H * 4) };
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const j = 4 * (y * img.width + x), i = 4 * (y * W + x);
      const luma = 0.299 * img.data[j] + 0.587 * img.data[j + 1] + 0.114 * img.data[j + 2];
      mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = luma > 128 ? 255 : 0;
      mask.data[i + 3] = 255;
      photo.data.set(img.data.subarray(j, j + 4), i);
    }
  }
  return { mask, photo };
}

/** Share of pixels whose 9x9 mask neighbourhood is constant and whose `alpha` differs from it. */
function haze(mask: RgbaImage, alpha: Uint8ClampedArray): { off: number; flat: number } {
  const { width: W, height: H } = mask;
  let off = 0, flat = 0;
  for (let y = 4; y < H - 4; y++) {
    for (let x = 4; x < W - 4; x++) {
      const v = mask.data[4 * (y * W + x)];
      let same = true;
      for (let dy = -4; dy <= 4 && same; dy++) {
        for (let dx = -4; dx <= 4; dx++) {
          if (mask.data[4 * ((y + dy) * W + x + dx)] !== v) {
            same = false;
            break;
          }
        }
      }
      if (!same) continue;
      flat++;
      if (alpha[y * W + x] !== v) off++;
    }
  }
  return { off, flat };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { upscale: { type: "string" }, alpha: { type: "string", default: "net" } },
  });
  if (values.upscale) {
    const { initBackend } = await import("../core/backend.ts");
    const { Upscaler } = await import("../core/upscaler.ts");
    const { resolveModel } = await import("../core/weights/shipped.ts");
    await initBackend("wasm");
    const up = await Upscaler.load(resolveModel(values.upscale));
    let sumP = 0, sumS = 0, off = 0, flat = 0;
    for (const file of positionals) {
      const { mask, photo } = maskOf(await decodeImage(await Deno.readFile(file), { name: file }));
      const lr = imresize(photo, { scale: 1 / 4 }), lrMask = imresize(mask, { scale: 1 / 4 });
      for (let i = 0; i < lr.width * lr.height; i++) lr.data[4 * i + 3] = lrMask.data[4 * i];
      const out = await up.upscale(lr, { alpha: values.alpha as "net" | "bicubic" });
      const alpha = out.data.filter((_, i) => i % 4 === 3);
      const gray = { ...mask, data: new Uint8ClampedArray(mask.data.length) };
      alpha.forEach((a, i) => gray.data.set([a, a, a, 255], 4 * i));
      sumP += psnr(gray, mask, { yChannel: false, cropBorder: 4 });
      sumS += ssim(gray, mask, { yChannel: false, cropBorder: 4 });
      const h = haze(mask, alpha);
      off += h.off;
      flat += h.flat;
    }
    const n = positionals.length;
    console.log(
      `${values.upscale}, alpha ${values.alpha}, ${n} masks: PSNR ${(sumP / n).toFixed(2)} dB, SSIM ${
        (sumS / n).toFixed(4)
      }, pixels 4 px or more from an edge off 0/255: ${(100 * off / flat).toFixed(2)}%`,
    );
    up.dispose();
    Deno.exit(0);
  }
  const [out, ...files] = positionals;
  if (!out || !files.length) {
    console.error(
      "usage: deno run -A bench/alpha_masks.ts OUT_DIR IMAGE...  |  --upscale NAME [--alpha net|bicubic] IMAGE...",
    );
    Deno.exit(2);
  }
  await Deno.mkdir(out, { recursive: true });
  for (const file of files) {
    const { mask } = maskOf(await decodeImage(await Deno.readFile(file), { name: file }));
    // benchmark files repeat names across sets (Set5/x4/img_001..., Set14/x4/img_001...)
    const set = basename(dirname(dirname(file)));
    const name = `${set}_${basename(file).replace(/(_SRF_\d+_HR)?\.\w+$/, "")}_mask.png`;
    await Deno.writeFile(`${out}/${name}`, await encodeImage(mask, { format: "png" }));
  }
  console.log(`${files.length} masks in ${out}`);
}
