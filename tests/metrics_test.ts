import assert from "node:assert/strict";
import type { RgbaImage } from "../core/image_io.ts";
import { laplacianEnergy, lumaBT601, psnr, psnrSsim, rgbToY, ssim } from "../core/metrics.ts";

/** An opaque image whose channel c at (x, y) is f(x, y, c). */
function makeImage(width: number, height: number, f: (x: number, y: number, c: number) => number): RgbaImage {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[4 * (y * width + x) + c] = f(x, y, c);
      data[4 * (y * width + x) + 3] = 255;
    }
  }
  return { width, height, data };
}

const C1 = (0.01 * 255) ** 2;
const C2 = (0.03 * 255) ** 2;

/** The test's own Gaussian taps, as OpenCV's getGaussianKernel(11, 1.5). */
function taps(): number[] {
  const g = Array.from({ length: 11 }, (_, i) => Math.exp(-((i - 5) ** 2) / (2 * 1.5 * 1.5)));
  const s = g.reduce((a, b) => a + b);
  return g.map((v) => v / s);
}

Deno.test("Y is MATLAB rgb2ycbcr's luma, unrounded", () => {
  assert.equal(lumaBT601(0, 0, 0), 16);
  assert.ok(Math.abs(lumaBT601(255, 255, 255) - 235) < 1e-12);
  const y = rgbToY(makeImage(1, 1, (_x, _y, c) => [10, 20, 30][c]));
  assert.ok(Math.abs(y[0] - (16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255)) < 1e-12);
});

Deno.test("identical images: PSNR is infinite, SSIM is 1", () => {
  const a = makeImage(32, 24, (x, y, c) => (x * 31 + y * 17 + c * 90) % 256);
  const b = { ...a, data: a.data.slice() };
  assert.equal(psnr(a, b, { cropBorder: 4 }), Infinity);
  assert.ok(Math.abs(ssim(a, b, { cropBorder: 4 }) - 1) < 1e-12);
  assert.ok(Math.abs(ssim(a, b, { yChannel: false }) - 1) < 1e-12);
});

Deno.test("constant offset on flat grey images: closed forms", () => {
  const a = makeImage(20, 20, () => 100);
  const b = makeImage(20, 20, () => 110);
  // On grey, Y = 16 + v * 219 / 255, so a step of 10 becomes 10 * 219 / 255 in Y.
  const dy = (10 * 219) / 255;
  const got = psnrSsim(a, b, { cropBorder: 2 });
  assert.ok(Math.abs(got.psnr - 20 * Math.log10(255 / dy)) < 1e-9, `psnr ${got.psnr}`);
  // Flat windows: no variance, so SSIM is the luminance term alone.
  const ya = 16 + (100 * 219) / 255;
  const yb = 16 + (110 * 219) / 255;
  const expected = (2 * ya * yb + C1) / (ya * ya + yb * yb + C1);
  assert.ok(Math.abs(got.ssim - expected) < 1e-12, `ssim ${got.ssim} vs ${expected}`);
  // RGB: MSE is exactly 100.
  assert.ok(Math.abs(psnr(a, b, { yChannel: false }) - 10 * Math.log10((255 * 255) / 100)) < 1e-9);
});

Deno.test("checkerboard noise of +-5 on flat grey (RGB): closed forms", () => {
  const n = 30;
  const a = makeImage(n, n, () => 128);
  const b = makeImage(n, n, (x, y) => 128 + ((x + y) % 2 ? -5 : 5));
  assert.ok(Math.abs(psnr(a, b, { yChannel: false }) - 20 * Math.log10(255 / 5)) < 1e-9);
  // With separable weights g, the window mean of the +-1 checkerboard is +-alpha^2 (alpha = sum g_t (-1)^t),
  // so mu2 = 128 +- 5 alpha^2, var2 = 25 (1 - alpha^4), and a flat `a` has var1 = cov = 0.
  const alpha = taps().reduce((s, g, t) => s + g * (t % 2 ? -1 : 1), 0);
  const m = n - 10;
  let sum = 0;
  for (let y = 0; y < m; y++) {
    for (let x = 0; x < m; x++) {
      const mu2 = 128 + 5 * alpha * alpha * ((x + y) % 2 ? -1 : 1);
      sum += ((2 * 128 * mu2 + C1) / (128 * 128 + mu2 * mu2 + C1)) * (C2 / (25 * (1 - alpha ** 4) + C2));
    }
  }
  const expected = sum / (m * m);
  const got = ssim(a, b, { yChannel: false });
  assert.ok(Math.abs(got - expected) < 1e-12, `ssim ${got} vs ${expected}`);
  assert.ok(got < 0.99, "the noise must lower SSIM");
});

Deno.test("matches a numpy BasicSR-style reference on textured images", () => {
  // Reference numbers from a one-off numpy script (float64, a full 2-D 11x11 window rather than the
  // separable one used here, BasicSR's formulas) on exactly these pixel formulas, crop 2:
  //   Y crop2 psnr 46.112394871008 ssim 0.999505612541
  //   RGB crop2 psnr 42.172857100714 ssim 0.999621834169
  //   pair2 Y crop2 psnr 15.751600183076 ssim 0.503673532144
  //   pair2 RGB crop2 psnr 9.674243008844 ssim 0.350087725453
  const pattern = (k: number) => (x: number, y: number, c: number) =>
    [
      (x * 37 + y * 91 + k * 13) % 256,
      (x * x * 7 + y * 3 + k * 29) % 256,
      (x * y * 11 + 5 + k * 71) % 256,
    ][c];
  const a = makeImage(20, 24, pattern(0));
  const perturbed = makeImage(20, 24, (x, y, c) => pattern(0)(x, y, c) + ((x * 5 + y * 3 + c) % 7) - 3);
  const other = makeImage(20, 24, pattern(1));
  const cases: [RgbaImage, boolean, number, number][] = [
    [perturbed, true, 46.112394871008, 0.999505612541],
    [perturbed, false, 42.172857100714, 0.999621834169],
    [other, true, 15.751600183076, 0.503673532144],
    [other, false, 9.674243008844, 0.350087725453],
  ];
  for (const [b, yChannel, p, s] of cases) {
    const got = psnrSsim(a, b, { cropBorder: 2, yChannel });
    assert.ok(Math.abs(got.psnr - p) < 1e-9, `psnr ${got.psnr} vs ${p}`);
    assert.ok(Math.abs(got.ssim - s) < 1e-11, `ssim ${got.ssim} vs ${s}`);
  }
});

Deno.test("bad input is refused with a clear message", () => {
  const a = makeImage(20, 20, () => 0);
  assert.throws(() => psnr(a, makeImage(20, 21, () => 0)), /differ in size: 20x20 vs 20x21/);
  assert.throws(() => ssim(a, a, { cropBorder: 5 }), /at least 11x11/);
  assert.throws(() => psnr(a, a, { cropBorder: 10 }), /nothing left/);
});

Deno.test("grayAsLuma: grey pairs on their grey values, colour pairs unchanged", () => {
  const a = makeImage(20, 20, (x, y) => (x * 13 + y * 7) % 256);
  const b = makeImage(20, 20, (x, y) => ((x * 13 + y * 7) % 256) + ((x + y) % 3) - 1);
  const yPsnr = psnr(a, b);
  const rawPsnr = psnr(a, b, { grayAsLuma: true });
  // Y = 16 + v * 219 / 255 on grey, so the Y error is 219/255 of the grey error.
  assert.ok(Math.abs(yPsnr - rawPsnr - 20 * Math.log10(255 / 219)) < 1e-9, `${yPsnr} vs ${rawPsnr}`);
  assert.ok(Math.abs(rawPsnr - psnr(a, b, { yChannel: false })) < 1e-9);
  const c = makeImage(20, 20, (x, y, ch) => (x * 13 + y * 7 + ch) % 256);
  assert.equal(psnr(c, b, { grayAsLuma: true }), psnr(c, b));
});

Deno.test("laplacianEnergy: 0 on flat and linear ramps, closed form on a checkerboard, RGB planes averaged", () => {
  assert.ok(laplacianEnergy(makeImage(8, 8, () => 90)) < 1e-9);
  assert.ok(laplacianEnergy(makeImage(8, 8, (x, y) => 10 * x + 3 * y)) < 1e-9, "a ramp has no curvature");
  // ±d checkerboard on grey: every interior pixel's Laplacian is ±8d
  const d = 5, board = makeImage(9, 7, (x, y) => 100 + ((x + y) % 2 ? d : -d));
  assert.ok(Math.abs(laplacianEnergy(board, { yChannel: false }) - 8 * d) < 1e-9);
  assert.ok(Math.abs(laplacianEnergy(board) - 8 * d * (65.481 + 128.553 + 24.966) / 255) < 1e-9, "on Y");
  // only the red plane varies: a third of it over R, G, B
  const red = makeImage(9, 7, (x, y, c) => c === 0 ? 100 + ((x + y) % 2 ? d : -d) : 100);
  assert.ok(Math.abs(laplacianEnergy(red, { yChannel: false }) - 8 * d / 3) < 1e-9);
  // what the crop removes is not measured: a flat image with a noisy 2 px frame
  const framed = makeImage(10, 10, (x, y) => x < 2 || y < 2 || x > 7 || y > 7 ? (x * 37 + y * 11) % 256 : 50);
  assert.ok(laplacianEnergy(framed) > 0);
  assert.ok(laplacianEnergy(framed, { cropBorder: 2 }) < 1e-9);
  assert.throws(() => laplacianEnergy(makeImage(4, 4, () => 0), { cropBorder: 1 }), /under 3x3/);
});
