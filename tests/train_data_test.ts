/**
 * Training data: crops are reproducible per (seed, step), augmentation follows BasicSR's
 * hflip → vflip → transpose, the LR is MATLAB bicubic of the 8-bit crop, the prefetch queue hands
 * out exactly the per-step batches, and validation pairs are centre crops cut to the scale.
 */
import assert from "node:assert/strict";
import { imresizeArray } from "../core/imresize.ts";
import { BatchQueue, cropAugment, makeBatch, makeValPairs, type RgbImage } from "../train/data.ts";
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

Deno.test("the PRNG's state round-trips and continues the same stream", () => {
  const r = new Rng(42, 3);
  for (let i = 0; i < 5; i++) r.nextU32();
  const copy = Rng.fromState(JSON.parse(JSON.stringify(r.state)));
  for (let i = 0; i < 10; i++) assert.equal(copy.nextU32(), r.nextU32());
  const u = Array.from({ length: 2000 }, () => r.random());
  const m = u.reduce((a, b) => a + b) / u.length;
  assert.ok(Math.abs(m - 0.5) < 0.03 && u.every((x) => x >= 0 && x < 1));
});
