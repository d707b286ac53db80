/**
 * Training data: crops are reproducible per (seed, step), augmentation follows BasicSR's
 * hflip → vflip → transpose, the LR is MATLAB bicubic of the 8-bit crop, the prefetch queue hands
 * out exactly the per-step batches, and validation pairs are centre crops cut to the scale; paired
 * data (an LR folder) is matched by name and cropped and augmented with its HR.
 */
import assert from "node:assert/strict";
import { imresizeArray } from "../core/imresize.ts";
import { encodeImage } from "../core/image_io.ts";
import { imageIoCodec } from "../train/codecs.ts";
import {
  attachLrImages,
  BatchQueue,
  cropAugment,
  loadImageFolder,
  makeBatch,
  makeValPairs,
  type RgbImage,
} from "../train/data.ts";
import { Rng } from "../train/rng.ts";

function image(width: number, height: number): RgbImage {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < rgb.length; i++) rgb[i] = (i * 37 + (i >> 5) * 11) % 251;
  return { name: "a.png", width, height, rgb };
}

const OPTS = { batchSize: 3, gtSize: 16, scale: 4, hflip: true, rot: true, seed: 7 };

Deno.test("batches are a pure function of (seed, step) and differ between steps and seeds", () => {
  const imgs = [image(40, 36), image(50, 20)];
  const a = makeBatch(imgs, OPTS, 5), b = makeBatch(imgs, OPTS, 5);
  assert.deepEqual(a.gt, b.gt);
  assert.deepEqual(a.lq, b.lq);
  assert.notDeepEqual(makeBatch(imgs, OPTS, 6).gt, a.gt);
  assert.notDeepEqual(makeBatch(imgs, { ...OPTS, seed: 8 }, 5).gt, a.gt);
  assert.equal(a.gt.length, 3 * 16 * 16 * 3);
  assert.equal(a.lq.length, 3 * 4 * 4 * 3);
});

Deno.test("augmentation is BasicSR's hflip, then vflip, then transpose", () => {
  const img = image(5, 5);
  const px = (y: number, x: number) => Array.from(img.rgb.subarray((y * 5 + x) * 3, (y * 5 + x) * 3 + 3));
  // explicit composition of the three steps on a 4x4 crop at (1, 1)
  const crop = (y: number, x: number) => px(1 + y, 1 + x);
  const h = (f: typeof crop) => (y: number, x: number) => f(y, 3 - x);
  const v = (f: typeof crop) => (y: number, x: number) => f(3 - y, x);
  const t = (f: typeof crop) => (y: number, x: number) => f(x, y);
  const got = cropAugment(img, { top: 1, left: 1, size: 4 }, { hflip: true, vflip: true, transpose: true });
  const want = t(v(h(crop)));
  for (let y = 0; y < 4; y++) {
    for (let x = 0; x < 4; x++) {
      assert.deepEqual(Array.from(got.subarray((y * 4 + x) * 3, (y * 4 + x) * 3 + 3)), want(y, x));
    }
  }
  const onlyT = cropAugment(img, { top: 1, left: 1, size: 4 }, {
    hflip: false,
    vflip: false,
    transpose: true,
  });
  assert.deepEqual(Array.from(onlyT.subarray(3, 6)), crop(1, 0));
});

Deno.test("the LR of a batch is MATLAB bicubic of its 8-bit HR crop", () => {
  const b = makeBatch([image(40, 40)], { ...OPTS, batchSize: 1 }, 0);
  const hr = Uint8Array.from(b.gt, (v) => Math.round(v * 255));
  const lr = imresizeArray(hr, { width: 16, height: 16, channels: 3 }, { scale: 0.25, uint8: true }).data;
  assert.deepEqual(Array.from(b.lq, (v) => Math.round(v * 255)), Array.from(lr));
});

Deno.test("the prefetch queue hands out the per-step batches in order from its start step", async () => {
  const imgs = [image(40, 36)];
  const q = new BatchQueue(imgs, OPTS, { startStep: 3, depth: 2 });
  for (let s = 3; s < 7; s++) {
    const b = await q.next();
    assert.equal(b.step, s);
    assert.deepEqual(b.gt, makeBatch(imgs, OPTS, s).gt);
  }
});

Deno.test("validation pairs: centre crop cut to the scale, LR a quarter of it", () => {
  const [p] = makeValPairs([image(50, 39)], { scale: 4, crop: 30 });
  assert.equal(p.gt.width, 28);
  assert.equal(p.gt.height, 28);
  assert.equal(p.lqWidth, 7);
  assert.equal(p.lq.length, 7 * 7 * 3);
  const [full] = makeValPairs([image(50, 39)], { scale: 4, crop: 0 });
  assert.deepEqual([full.gt.width, full.gt.height], [48, 36]);
});

/** The 4x box average of an image: an LR whose relation to its HR survives any crop on the LR grid. */
function boxLr(img: RgbImage, s = 4): RgbImage {
  const w = Math.floor(img.width / s), h = Math.floor(img.height / s);
  const rgb = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (let dy = 0; dy < s; dy++) {
          for (let dx = 0; dx < s; dx++) sum += img.rgb[((y * s + dy) * img.width + x * s + dx) * 3 + c];
        }
        rgb[(y * w + x) * 3 + c] = Math.round(sum / (s * s));
      }
    }
  }
  return { name: img.name, width: w, height: h, rgb };
}

Deno.test("paired data: each batch's LR is its own LR's crop, flipped and transposed with the HR", () => {
  const hr = image(40, 36);
  const paired: RgbImage = { ...hr, lq: boxLr(hr) };
  for (let step = 0; step < 6; step++) {
    const b = makeBatch([paired], OPTS, step);
    const gt = Uint8Array.from(b.gt, (v) => Math.round(v * 255));
    for (let k = 0; k < b.n; k++) {
      const crop = { name: "", width: 16, height: 16, rgb: gt.subarray(k * 768, (k + 1) * 768) };
      // the box average commutes with flips and transposes: LR(aug(crop)) = aug(crop of LR)
      assert.deepEqual(
        Array.from(b.lq.subarray(k * 48, (k + 1) * 48), (v) => Math.round(v * 255)),
        Array.from(boxLr(crop).rgb),
        `step ${step}, item ${k}`,
      );
    }
  }
  // validation: the centre crop on the LR grid, and the LR's own pixels
  const [v] = makeValPairs([paired], { scale: 4, crop: 24 });
  const gt = { name: "", width: v.gt.width, height: v.gt.height, rgb: v.gt.rgb };
  assert.deepEqual([v.lqWidth, v.lqHeight], [6, 6]);
  assert.deepEqual(Array.from(v.lq, (x) => Math.round(x * 255)), Array.from(boxLr(gt).rgb));
});

Deno.test("paired data: LR files found by name (same, DIV2K's x4, _HR → _LR), sizes checked", async () => {
  const dir = await Deno.makeTempDir({ prefix: "paired_" });
  try {
    const png = async (path: string, img: RgbImage) => {
      const data = new Uint8ClampedArray(img.width * img.height * 4).fill(255);
      for (let i = 0; i < img.width * img.height; i++) data.set(img.rgb.subarray(3 * i, 3 * i + 3), 4 * i);
      await Deno.writeFile(
        path,
        await encodeImage({ width: img.width, height: img.height, data }, { format: "png" }),
      );
    };
    await Deno.mkdir(`${dir}/hr`);
    await Deno.mkdir(`${dir}/lr`);
    const hrs = { "a.png": image(40, 36), "0001.png": image(32, 32), "b_HR.png": image(35, 34) };
    for (const [n, img] of Object.entries(hrs)) await png(`${dir}/hr/${n}`, img);
    await png(`${dir}/lr/a.png`, boxLr(hrs["a.png"]));
    await png(`${dir}/lr/0001x4.png`, boxLr(hrs["0001.png"]));
    await png(`${dir}/lr/b_LR.png`, boxLr(hrs["b_HR.png"]));
    const decode = imageIoCodec.decode;
    const hr = await loadImageFolder(`${dir}/hr`, { decode });
    const paired = await attachLrImages(hr, `${dir}/lr`, { decode, scale: 4 });
    assert.deepEqual(
      paired.map((p) => [p.name, p.width, p.height, p.lq!.width, p.lq!.height]),
      [["0001.png", 32, 32, 8, 8], ["a.png", 40, 36, 10, 9], ["b_HR.png", 32, 32, 8, 8]],
    );
    assert.deepEqual(paired[1].lq!.rgb, boxLr(hrs["a.png"]).rgb);

    await png(`${dir}/lr/a.png`, boxLr(image(40, 40)));
    await assert.rejects(
      attachLrImages(hr, `${dir}/lr`, { decode, scale: 4 }),
      /lr\/a\.png is 10x10: not the x4 LR of a\.png \(40x36\)/,
    );
    await Deno.remove(`${dir}/lr/a.png`);
    await assert.rejects(
      attachLrImages(hr, `${dir}/lr`, { decode, scale: 4 }),
      /lr: no LR image for a\.png \(looked for a, ax4\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the PRNG's state round-trips and continues the same stream", () => {
  const r = new Rng(42, 3);
  for (let i = 0; i < 5; i++) r.nextU32();
  const copy = Rng.fromState(JSON.parse(JSON.stringify(r.state)));
  for (let i = 0; i < 10; i++) assert.equal(copy.nextU32(), r.nextU32());
  const u = Array.from({ length: 2000 }, () => r.random());
  const m = u.reduce((a, b) => a + b) / u.length;
  assert.ok(Math.abs(m - 0.5) < 0.03 && u.every((x) => x >= 0 && x < 1));
});
