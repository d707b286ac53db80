import assert from "node:assert/strict";
import { decodeImage, type RgbaImage } from "../core/image_io.ts";
import { imresize, imresizeArray } from "../core/imresize.ts";
import { psnr } from "../core/metrics.ts";
import { needsShared, SHARED } from "./shared.ts";

/** f(x, y) = 3x + 2y + 10 sampled on a width x height grid, one channel. */
function ramp(width: number, height: number): Float64Array {
  const a = new Float64Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) a[y * width + x] = 3 * x + 2 * y + 10;
  return a;
}

/** MATLAB's map from 1-based output index i to the 0-based input coordinate it samples. */
const source = (i: number, scale: number) => i / scale + 0.5 * (1 - 1 / scale) - 1;

Deno.test("imresize reproduces a linear ramp at MATLAB's sample positions (interior)", () => {
  // The a = -0.5 cubic reproduces linear functions exactly, also widened by an integer 1/scale, so any
  // error in the coordinate map, weights or normalisation shows up here.
  const w = 40;
  const h = 36;
  const cases: [{ scale: number } | { width: number; height: number }, number, number][] = [
    [{ scale: 0.5 }, 0.5, 0.5],
    [{ scale: 0.25 }, 0.25, 0.25],
    [{ scale: 2 }, 2, 2],
    [{ scale: 4 }, 4, 4],
    [{ width: 56, height: 45 }, 56 / 40, 45 / 36],
  ];
  for (const [target, sx, sy] of cases) {
    const { data, shape } = imresizeArray(ramp(w, h), { width: w, height: h, channels: 1 }, target);
    assert.deepEqual(shape, { width: Math.round(w * sx), height: Math.round(h * sy), channels: 1 });
    const reach = (s: number) => (s < 1 ? 2 / s : 2) + 1; // kernel half-width in input pixels, plus a margin
    let checked = 0;
    for (let y = 0; y < shape.height; y++) {
      for (let x = 0; x < shape.width; x++) {
        const u = source(x + 1, sx);
        const v = source(y + 1, sy);
        if (u < reach(sx) || u > w - 1 - reach(sx) || v < reach(sy) || v > h - 1 - reach(sy)) continue;
        const expected = 3 * u + 2 * v + 10;
        assert.ok(
          Math.abs(data[y * shape.width + x] - expected) < 1e-9,
          `${JSON.stringify(target)} at ${x},${y}`,
        );
        checked++;
      }
    }
    assert.ok(checked > 20, `${JSON.stringify(target)}: only ${checked} interior pixels`);
  }
});

Deno.test("imresize on RGBA: sizes, constant images, borders, errors", () => {
  const flat: RgbaImage = { width: 13, height: 7, data: new Uint8ClampedArray(13 * 7 * 4).fill(200) };
  const down = imresize(flat, { scale: 0.25 });
  assert.deepEqual([down.width, down.height], [4, 2]); // MATLAB: ceil(13 / 4), ceil(7 / 4)
  assert.ok(down.data.every((v) => v === 200));
  const up = imresize(flat, { width: 20, height: 3 });
  assert.deepEqual([up.width, up.height], [20, 3]);
  assert.ok(up.data.every((v) => v === 200));
  // A step at the border: clamping (the default) and mirroring differ only next to it.
  const step = new Float64Array(16).map((_, i) => (i === 0 ? 100 : 0));
  const shape = { width: 16, height: 1, channels: 1 };
  const rep = imresizeArray(step, shape, { width: 4, height: 1 }).data;
  const sym = imresizeArray(step, shape, { width: 4, height: 1, border: "symmetric" }).data;
  assert.ok(sym[0] > rep[0] && rep[0] > 0, `edge pixel: replicate ${rep[0]}, symmetric ${sym[0]}`);
  assert.throws(() => imresize(flat, { scale: 0 }), /scale must be a positive number/);
  assert.throws(() => imresize(flat, { width: 0, height: 3 }), /positive integers/);
  assert.throws(() => imresizeArray([1, 2, 3], shape, { scale: 2 }), /do not make a 16x1x1 image/);
});

async function load(path: string): Promise<RgbaImage> {
  return await decodeImage(await Deno.readFile(path), { name: path });
}

for (const set of ["Set5", "Set14", "BSD100"]) {
  Deno.test({
    name: `imresize(HR, 1/4) reproduces the official ${set} x4 LR files`,
    ignore: needsShared(`official ${set} LR`),
    fn: async () => {
      const dir = `${SHARED}/data/bench/${set}/x4`;
      const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith("_HR.png")).sort();
      assert.ok(names.length >= 5, `${dir}: no *_HR.png`);
      let worst = Infinity;
      for (const name of names) {
        const hr = await load(`${dir}/${name}`);
        const lr = await load(`${dir}/${name.replace(/_HR\.png$/, "_LR.png")}`);
        const made = imresize(hr, { scale: 0.25 });
        const p = psnr(made, lr, { yChannel: false });
        worst = Math.min(worst, p);
        assert.ok(p >= 45, `${set}/${name}: ${p.toFixed(2)} dB from the official LR`);
        // Measured: the files are reproduced bit for bit; keep it so.
        assert.ok(
          made.data.every((v, i) => v === lr.data[i]),
          `${set}/${name}: not bit-exact (${p.toFixed(2)} dB)`,
        );
      }
      console.log(`${set}: ${names.length} images, min PSNR vs official LR ${worst} dB`);
    },
  });
}
