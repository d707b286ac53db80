/**
 * The image side of an upscale (core/upscale_image.ts), without a net: what pre-processing sets
 * aside, and how post-processing puts an output back together from made-up "net outputs".
 */
import assert from "node:assert/strict";
import { alphaAsRgb, alphaFromNet, postProcess, preProcess, resample } from "../core/upscale_image.ts";

const rgba = (width: number, height: number, px: (i: number) => number[]) => ({
  width,
  height,
  data: Uint8ClampedArray.from({ length: width * height * 4 }, (_, k) => px(k >> 2)[k & 3]),
});

Deno.test("preProcess: RGB and alpha in [0, 1]; gray and opaque said; 16-bit read at full depth", () => {
  const img = rgba(2, 1, (i) => (i ? [10, 20, 30, 255] : [51, 51, 51, 255]));
  const p = preProcess(img);
  assert.deepEqual([...p.rgb].map((v) => Math.round(v * 255)), [51, 51, 51, 10, 20, 30]);
  assert.deepEqual([p.gray, p.opaque, p.deep], [false, true, false]);
  const gray = preProcess(rgba(2, 1, (i) => [i * 90, i * 90, i * 90, 128]));
  assert.deepEqual([gray.gray, gray.opaque], [true, false]);
  assert.ok(Math.abs(gray.alpha[0] - 128 / 255) < 1e-7);
  const data16 = Uint16Array.from([1000, 1000, 1000, 65535]);
  const deep = preProcess({ width: 1, height: 1, data: new Uint8ClampedArray(4), data16 });
  assert.equal(deep.deep, true);
  assert.ok(Math.abs(deep.rgb[0] - 1000 / 65535) < 1e-7, "from data16, not data");
  assert.equal(deep.opaque, true);
});

Deno.test("preProcess: a buffer of the wrong size is refused, naming the sizes", () => {
  assert.throws(
    () => preProcess({ width: 3, height: 2, data: new Uint8ClampedArray(20) }),
    /20 bytes for a 3x2 RGBA image/,
  );
});

Deno.test("alphaFromNet: flat areas keep their alpha exactly, edges take the output's luma", () => {
  // a 4x1 alpha: 0 0 | 1 1 — the pixels next to the edge are not flat
  const input = preProcess(rgba(4, 1, (i) => [0, 0, 0, i < 2 ? 0 : 255]));
  assert.deepEqual([...alphaAsRgb(input)], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
  const s = 2;
  // a "net output" that is 0.5 gray with a haze everywhere, (0.2, 0.4, 0.6) at the edge
  const out = new Float32Array(8 * 2 * 3).fill(0.5);
  for (let i = 0; i < 16; i++) if (i % 8 === 3 || i % 8 === 4) out.set([0.2, 0.4, 0.6], 3 * i);
  const alpha = alphaFromNet(input, { rgb: out, scale: s });
  const luma = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6;
  const row = [0, 0, 0.5, luma, luma, 0.5, 1, 1];
  for (let y = 0; y < 2; y++) {
    for (let x = 0; x < 8; x++) {
      assert.ok(Math.abs(alpha[y * 8 + x] - row[x]) < 1e-6, `(${x}, ${y}): ${alpha[y * 8 + x]}`);
    }
  }
  assert.throws(() => alphaFromNet(input, { rgb: out.subarray(3), scale: s }), /45 values for 8x2 RGB/);
});

Deno.test("postProcess: gray inputs come back gray, opaque ones opaque, 16-bit ones 16-bit", () => {
  const gray = preProcess(rgba(1, 1, () => [40, 40, 40, 255]));
  const hr = { rgb: Float32Array.from({ length: 4 * 3 }, (_, k) => [0.2, 0.5, 0.9][k % 3]), scale: 2 };
  const out = postProcess(gray, hr);
  const y = Math.round((0.299 * 0.2 + 0.587 * 0.5 + 0.114 * 0.9) * 255);
  assert.deepEqual([...out.data.subarray(0, 4)], [y, y, y, 255]);
  assert.equal(out.data16, undefined);
  const colour = preProcess(rgba(1, 1, () => [40, 50, 60, 255]));
  const levels = [...hr.rgb.subarray(0, 3)].map((v) => Math.round(v * 255)); // 51, 128, 229 (0.9 in f32)
  assert.deepEqual([...postProcess(colour, hr).data.subarray(0, 4)], [...levels, 255]);
  const deep = preProcess({
    width: 1,
    height: 1,
    data: new Uint8ClampedArray(4),
    data16: Uint16Array.from([0, 1, 2, 65535]),
  });
  const out16 = postProcess(deep, { rgb: new Float32Array(12).fill(1.2), scale: 2 }).data16!;
  assert.deepEqual([...out16.subarray(0, 4)], [65535, 65535, 65535, 65535], "clamped to full scale");
});

Deno.test("postProcess: floats round to Math.round's byte: ties, near-ties, NaN and out-of-range values", () => {
  // the colours' and alpha's stores skip Math.round: a clamped array rounds f32 values the same
  const special = [0.5, 127.5 / 255, 0.5 / 255, 1.5 / 255, 254.5 / 255, NaN, -0.3, -0.5 / 255, 1.2, Infinity];
  const nearTies = Array.from(
    { length: 2000 },
    (_, i) => (i % 256 + 0.5 + ((i * 7919) % 1000 - 500) * 1e-6) / 255,
  );
  const values = Float32Array.from([...special, ...nearTies].slice(0, 2004)); // whole pixels
  const n = values.length / 3;
  const alpha = values.filter((_, k) => k % 3 === 1);
  const input = { width: n, height: 1, rgb: values, alpha, gray: false, opaque: false, deep: false };
  const out = postProcess(input, { rgb: values, alpha, scale: 1 });
  const byte = (v: number) => Math.min(255, Math.max(0, Math.round(v * 255) || 0));
  for (let i = 0; i < n; i++) {
    const want = [...values.subarray(3 * i, 3 * i + 3), alpha[i]].map(byte);
    assert.deepEqual([...out.data.subarray(4 * i, 4 * i + 4)], want, `pixel ${i}`);
  }
  assert.deepEqual([...out.data.subarray(0, 2)], [128, 128], "ties round up, as Math.round");
});

Deno.test("postProcess: outscale resamples the RGBA bicubically, clamped; an opaque image stays opaque", () => {
  // a sharp edge, whose bicubic overshoot would take alpha past 1 and colours out of range
  const input = preProcess(rgba(2, 2, (i) => (i % 2 ? [255, 255, 255, 255] : [0, 0, 0, 255])));
  const rgb = Float32Array.from({ length: 8 * 8 * 3 }, (_, k) => (Math.floor(k / 3) % 8 < 4 ? 0 : 1));
  const out = postProcess(input, { rgb, scale: 4 }, { outscale: 3 });
  assert.deepEqual([out.width, out.height], [6, 6]);
  for (let i = 3; i < out.data.length; i += 4) assert.equal(out.data[i], 255);
  // the same as resampling the RGBA floats by hand
  const rgbaF = Float32Array.from(
    { length: 64 * 4 },
    (_, k) => (k % 4 === 3 ? 1 : rgb[3 * (k >> 2) + (k % 4)]),
  );
  const want = resample(rgbaF, { width: 8, height: 8, channels: 4 }, { width: 6, height: 6 });
  for (let i = 0; i < out.data.length; i++) {
    if (i % 4 !== 3) assert.equal(out.data[i], Math.min(255, Math.max(0, Math.round(want[i] * 255))));
  }
});

Deno.test("postProcess: a transparent image without its upscaled alpha, or a short output, is refused", () => {
  const input = preProcess(rgba(1, 1, () => [1, 2, 3, 4]));
  assert.throws(() => postProcess(input, { rgb: new Float32Array(12), scale: 2 }), /no 2x2 alpha/);
  assert.throws(
    () => postProcess(input, { rgb: new Float32Array(9), alpha: new Float32Array(4), scale: 2 }),
    /9 values for 2x2 RGB/,
  );
});

Deno.test("resample: the same size is the same array", () => {
  const a = new Float32Array(12);
  assert.equal(resample(a, { width: 2, height: 2, channels: 3 }, { width: 2, height: 2 }), a);
});
