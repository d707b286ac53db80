import assert from "node:assert/strict";
import { PLAN_CONFIG } from "./train_plan_helpers.ts";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { decodeImage, type RgbaImage, to8Bits } from "../core/image_io.ts";
import { RRDBNet, type RRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { featherWeights, planTiles, TileBlender } from "../core/tile.ts";
import {
  DEFAULT_MODEL,
  DEFAULT_TILE,
  DEFAULT_TILE_CPU_KERNELS,
  DEFAULT_TILE_PAD,
  Upscaler,
} from "../core/upscaler.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import { decodeFloat, parseSafetensors } from "../core/weights/safetensors.ts";
import { importWeights } from "../core/import/mod.ts";
import { needsShared, SHARED } from "./shared.ts";

await initBackend("wasm");

/** A small random RRDBNet as a model file; two blocks give it a receptive field wider than the pad. */
async function tinyModel(config: Partial<RRDBNetConfig> = {}, seed = 7): Promise<Uint8Array> {
  const net = new RRDBNet({ ...PLAN_CONFIG, ...config }, {
    seed,
  });
  const sd = await net.stateDict();
  net.dispose();
  // Scale the dense blocks' weights up: BasicSR's 0.1 init leaves the body near identity, which
  // would make any tiling look seamless.
  for (const [k, t] of sd) if (k.startsWith("body.")) t.data.forEach((v, i) => t.data[i] = v * 8);
  return encodeModelFile(sd, { dtype: "fp32" });
}

const SAMPLE = new URL("../samples/spaniel.png", import.meta.url);

function psnr(a: RgbaImage, b: RgbaImage): number {
  assert.equal(a.width, b.width);
  assert.equal(a.height, b.height);
  let e = 0, n = 0;
  for (let i = 0; i < a.data.length; i++) {
    if (i % 4 === 3) continue;
    e += (a.data[i] - b.data[i]) ** 2;
    n++;
  }
  return e === 0 ? Infinity : 10 * Math.log10((255 * 255) / (e / n));
}

function solid(width: number, height: number, f: (x: number, y: number) => number[]): RgbaImage {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data.set(f(x, y), 4 * (y * width + x));
  return { width, height, data };
}

Deno.test("planTiles: near-equal cores of at most `tile`, padded and clipped", () => {
  assert.deepEqual(planTiles(100, 0, 10), [{ start: 0, end: 100, inStart: 0, inEnd: 100 }]);
  assert.deepEqual(planTiles(100, 128, 10), [{ start: 0, end: 100, inStart: 0, inEnd: 100 }]);
  const spans = planTiles(130, 64, 10);
  assert.deepEqual(spans.map((s) => s.end - s.start), [43, 44, 43]);
  assert.equal(spans[0].start, 0);
  assert.equal(spans.at(-1)!.end, 130);
  for (let k = 1; k < spans.length; k++) {
    assert.equal(spans[k].start, spans[k - 1].end);
    assert.equal(spans[k].inStart, spans[k].start - 10);
  }
  assert.throws(() => planTiles(10, 4, -1), /pad/);
});

Deno.test("featherWeights: neighbours' ramps sum to 1 across each overlap, 1 elsewhere", () => {
  const spans = planTiles(100, 30, 6);
  const s = 4;
  const total = new Float32Array(100 * s);
  spans.forEach((span, k) => {
    const w = featherWeights(spans, k, s);
    assert.equal(w.length, (span.inEnd - span.inStart) * s);
    w.forEach((v, i) => total[span.inStart * s + i] += v);
    if (k > 0) assert.ok(w[0] < 0.05, "zero at the tile's own inner border");
  });
  for (const v of total) assert.ok(Math.abs(v - 1) < 1e-6, `sum ${v}`);
});

Deno.test("TileBlender: weighted average, and refuses uncovered pixels", () => {
  const b = new TileBlender({ width: 3, height: 1, channels: 1 });
  b.add([2, 2], { y0: 0, x0: 0, wy: Float32Array.of(1), wx: Float32Array.of(1, 0.5) });
  b.add([4, 4], { y0: 0, x0: 1, wy: Float32Array.of(1), wx: Float32Array.of(0.5, 1) });
  assert.deepEqual([...b.result()], [2, 3, 4]);
  assert.throws(() => new TileBlender({ width: 2, height: 1, channels: 1 }).result(), /not covered/);
  // tiles overlapping at full weight average there (the copy of a tile's core is for pixels no
  // other tile has reached)
  const flat = new TileBlender({ width: 3, height: 1, channels: 1 });
  flat.add(Float32Array.of(2, 2), { y0: 0, x0: 0, wy: Float32Array.of(1), wx: Float32Array.of(1, 1) });
  flat.add(Float32Array.of(4, 4), { y0: 0, x0: 1, wy: Float32Array.of(1), wx: Float32Array.of(1, 1) });
  assert.deepEqual([...flat.result()], [2, 3, 4]);
});

Deno.test("TileBlender: feathered tiles blend to the weighted average, pixel by pixel", () => {
  const s = 4, h = 21, w = 26, c = 3, n = 2;
  const rows = planTiles(h, 8, 3), cols = planTiles(w, 8, 3);
  const blender = new TileBlender({ batch: n, width: w * s, height: h * s, channels: c });
  const want = new Float64Array(n * h * s * w * s * c), total = new Float64Array(h * s * w * s);
  let seed = 7;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  rows.forEach((r, i) =>
    cols.forEach((col, j) => {
      const wy = featherWeights(rows, i, s), wx = featherWeights(cols, j, s);
      const data = Float32Array.from({ length: n * wy.length * wx.length * c }, random);
      const y0 = r.inStart * s, x0 = col.inStart * s;
      blender.add(data, { y0, x0, wy, wx });
      for (let b = 0; b < n; b++) {
        for (let y = 0; y < wy.length; y++) {
          for (let x = 0; x < wx.length; x++) {
            const p = (y0 + y) * w * s + x0 + x, wt = wy[y] * wx[x];
            if (b === 0) total[p] += wt;
            for (let k = 0; k < c; k++) {
              want[(b * h * s * w * s + p) * c + k] += wt *
                data[((b * wy.length + y) * wx.length + x) * c + k];
            }
          }
        }
      }
    })
  );
  const got = blender.result();
  let worst = 0;
  for (let q = 0; q < got.length; q++) {
    worst = Math.max(worst, Math.abs(got[q] - want[q] / total[Math.floor(q / c) % (h * s * w * s)]));
  }
  assert.ok(worst < 1e-6, `off by ${worst}`);
});

Deno.test("Upscaler: model file in, sizes, outscale, no tensor leaks", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  try {
    assert.equal(up.scale, 4);
    assert.equal(up.config.numBlock, 2);
    assert.equal(up.info.dtype, "fp32");
    const img = solid(13, 9, (x, y) => [x * 19, y * 28, 100, 255]);
    const before = tf.memory().numTensors;
    const out = await up.upscale(img, { tile: 8, tilePad: 2 });
    assert.equal(out.width, 52);
    assert.equal(out.height, 36);
    const half = await up.upscale(img, { outscale: 2 });
    assert.deepEqual([half.width, half.height], [26, 18]);
    const odd = await up.upscale(img, { outscale: 2.5 });
    assert.deepEqual([odd.width, odd.height], [33, 23]);
    assert.equal(tf.memory().numTensors, before, "upscale leaks no tensors");
  } finally {
    up.dispose();
  }
  assert.ok(DEFAULT_MODEL.endsWith("weights/realesrgan-x4plus.int8.safetensors"));
});

Deno.test("Upscaler: a 16-bit image is read at full depth and comes back 16-bit (alpha too)", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  try {
    const w = 11, h = 7;
    // colours between 8-bit steps: 16-bit input must not be rounded to 8 bits first
    const data16 = Uint16Array.from(
      { length: w * h * 4 },
      (_, i) => i % 4 === 3 ? 30000 + i * 97 : (i * 4099 + 77) % 65536,
    );
    const img: RgbaImage = { width: w, height: h, data: to8Bits(data16), data16 };
    for (const outscale of [4, 2.5]) {
      const out = await up.upscale(img, { tile: 0, outscale });
      assert.ok(out.data16, `outscale ${outscale}: 16-bit out`);
      // colours: the net on the 16-bit values, rounded to 16 bits
      if (outscale === 4) {
        const x = tf.tensor4d(
          Float32Array.from({ length: w * h * 3 }, (_, i) => data16[4 * Math.floor(i / 3) + (i % 3)] / 65535),
          [1, h, w, 3],
        );
        const y = await up.upscaleTensor(x, { tile: 0 });
        const ref = (await y.data()) as Float32Array;
        tf.dispose([x, y]);
        for (let i = 0; i < out.width * out.height; i++) {
          for (let c = 0; c < 3; c++) {
            assert.equal(out.data16![4 * i + c], Math.round(ref[3 * i + c] * 65535));
          }
        }
      }
      // 8 bits from the same values; alpha (not opaque) resized at 16 bits
      for (let i = 0; i < out.data.length; i++) {
        assert.ok(Math.abs(out.data[i] - out.data16![i] / 257) <= 0.5 + 1e-9);
      }
      const alphas = new Set(out.data16!.filter((_, i) => i % 4 === 3));
      assert.ok(alphas.size > 100 && [...alphas].some((a) => a % 257), "alpha keeps 16-bit detail");
    }
    // an 8-bit image stays 8-bit
    assert.equal((await up.upscale({ width: w, height: h, data: img.data }, { tile: 0 })).data16, undefined);
  } finally {
    up.dispose();
  }
});

Deno.test("tta: the mean of the net on the 8 flips and transposes, so flipping the input flips the output", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  const x = tf.randomUniform([1, 9, 7, 3], 0, 1, "float32", 11) as tf.Tensor4D;
  const diff = async (a: tf.Tensor, b: tf.Tensor) => {
    const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
    const v = (await d.data())[0];
    d.dispose();
    return v;
  };
  try {
    const tta = await up.upscaleTensor(x, { tile: 0, tta: true });
    // by hand: each transform through the net, turned back, averaged
    const parts: tf.Tensor4D[] = [];
    for (const [fw, fh, tr] of [0, 1, 2, 3, 4, 5, 6, 7].map((k) => [k & 1, k & 2, k & 4])) {
      let t = x;
      if (fw) t = tf.reverse(t, 2);
      if (fh) t = tf.reverse(t, 1);
      if (tr) t = tf.transpose(t, [0, 2, 1, 3]);
      let y = await up.upscaleTensor(t, { tile: 0 });
      if (tr) y = tf.transpose(y, [0, 2, 1, 3]);
      if (fh) y = tf.reverse(y, 1);
      if (fw) y = tf.reverse(y, 2);
      parts.push(y);
    }
    const mean = tf.tidy(() => tf.div(tf.addN(parts), 8));
    assert.ok((await diff(tta, mean)) < 1e-6, "the mean of the eight");
    const plain = await up.upscaleTensor(x, { tile: 0 });
    assert.ok((await diff(tta, plain)) > 1e-3, "differs from one pass");
    // equivariant: the input flipped or transposed gives the output flipped or transposed
    for (
      const f of [(t: tf.Tensor4D) => tf.reverse(t, 2), (t: tf.Tensor4D) => tf.transpose(t, [0, 2, 1, 3])]
    ) {
      const xf = f(x);
      const y = await up.upscaleTensor(xf, { tile: 0, tta: true });
      const want = f(tta);
      assert.ok((await diff(y, want)) < 1e-5, "equivariant");
      const yPlain = await up.upscaleTensor(xf, { tile: 0 });
      assert.ok((await diff(yPlain, f(plain))) > 1e-3, "one pass is not (the check can fail)");
      tf.dispose([xf, y, want, yPlain]);
    }
    // tiled, leaking no tensor
    const before = tf.memory().numTensors;
    const tiled = await up.upscaleTensor(x, { tile: 4, tilePad: 2, tta: true });
    assert.deepEqual(tiled.shape, tta.shape);
    assert.equal(tf.memory().numTensors, before + 1);
    tf.dispose([tta, mean, plain, tiled, ...parts]);
  } finally {
    x.dispose();
    up.dispose();
  }
});

Deno.test("default tile: larger on the CPU kernels (wasm), the WebGPU-safe one on tfjs's ops", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  try {
    // 300 pixels wide: two tiles at 256, three at 128
    const img = solid(300, 20, (x, y) => [x % 256, y * 9, 100, 255]);
    const tilesRun = async () => {
      let total = 0;
      await up.upscale(img, { onProgress: (_, t) => total = t });
      return total;
    };
    assert.equal(DEFAULT_TILE_CPU_KERNELS, 256);
    assert.equal(up.defaultTile, DEFAULT_TILE_CPU_KERNELS);
    assert.equal(await tilesRun(), 2);
    up.cpuKernels = false;
    assert.equal(up.defaultTile, DEFAULT_TILE);
    assert.equal(await tilesRun(), 3);
    await tf.setBackend("cpu");
    up.cpuKernels = true;
    assert.equal(up.defaultTile, DEFAULT_TILE, "the cpu backend: tfjs's ops");
  } finally {
    await tf.setBackend("wasm");
    up.dispose();
  }
});

Deno.test("default tile: where the CPU kernels cannot start, tfjs's ops' tile, said once", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  const { Memory } = WebAssembly;
  const warn = console.warn, warnings: string[] = [];
  // a runtime without shared wasm memory (the kernels' threads need it)
  WebAssembly.Memory = class extends Memory {
    constructor(d: WebAssembly.MemoryDescriptor) {
      if (d.shared) throw new TypeError("shared memory is not supported here");
      super(d);
    }
  };
  console.warn = (m: string) => warnings.push(m);
  try {
    assert.equal(up.defaultTile, DEFAULT_TILE);
    assert.equal(up.cpuKernels, false);
    assert.equal(up.defaultTile, DEFAULT_TILE);
  } finally {
    WebAssembly.Memory = Memory;
    console.warn = warn;
    up.dispose();
  }
  assert.equal(warnings.length, 1);
  assert.match(
    warnings[0],
    /CPU kernels unavailable \(shared memory is not supported here\): running tfjs's wasm ops/,
  );
});

Deno.test("precision f16 on wasm: refused, naming the backend", async () => {
  const up = Upscaler.fromBytes(await tinyModel(), { name: "tiny" });
  try {
    up.precision = "f16";
    const before = tf.memory().numTensors;
    await assert.rejects(
      up.upscale(solid(8, 8, () => [1, 2, 3, 255])),
      /f16 runs on the webgpu backend only, not wasm/,
    );
    assert.equal(tf.memory().numTensors, before);
  } finally {
    up.dispose();
  }
});

Deno.test("upscaleTensor untiled equals the net clamped; batches work", async () => {
  const bytes = await tinyModel();
  const up = Upscaler.fromBytes(bytes);
  try {
    const x = tf.randomUniform([2, 12, 10, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const y = await up.upscaleTensor(x, { tile: 0 });
    const t = await up.upscaleTensor(x, { tile: 6, tilePad: 4 });
    // on wasm the upscaler has made no tfjs net yet (the CPU kernels read the model's weights)
    assert.equal(tf.memory().numTensors, before + 2);
    const ref = tf.tidy(() => tf.clipByValue(up.net.apply(x), 0, 1));
    assert.deepEqual(y.shape, [2, 48, 40, 3]);
    assert.ok(tf.tidy(() => tf.max(tf.abs(tf.sub(y, ref))).dataSync()[0]) < 1e-6);
    // Tiled, each batch item matches its own untiled result closely.
    const err = tf.tidy(() => tf.max(tf.abs(tf.sub(t, ref))).dataSync()[0]);
    assert.ok(err < 0.1, `tiled max error ${err}`);
    tf.dispose([y, ref, t]);
    x.dispose();
  } finally {
    up.dispose();
  }
});

Deno.test("tiled vs untiled on the sample photo at tile 32: ≥ 40 dB, and the overlap matters", async () => {
  const up = Upscaler.fromBytes(await tinyModel());
  try {
    const sample = await decodeImage(await Deno.readFile(SAMPLE));
    const full = await up.upscale(sample, { tile: 0 });
    const t32 = await up.upscale(sample, { tile: 32 });
    const p32 = psnr(full, t32);
    console.log(`spaniel 96x64, tile 32 pad ${DEFAULT_TILE_PAD}: ${p32.toFixed(2)} dB vs untiled`);
    assert.ok(p32 >= 40, `tile 32: ${p32.toFixed(2)} dB`);
    // The crop seams would be visible with no overlap: the test can fail.
    const noPad = psnr(full, await up.upscale(sample, { tile: 32, tilePad: 0 }));
    assert.ok(noPad < p32, `pad 0 gives ${noPad.toFixed(2)} dB`);
  } finally {
    up.dispose();
  }
});

Deno.test("the shipped model tiled at 32 with the default pad vs untiled: ≥ 40 dB on the sample photo", async () => {
  // A tiny net sees only a few pixels, so only the real model shows whether the pad is wide enough.
  const up = await Upscaler.load(DEFAULT_MODEL);
  try {
    const sample = await decodeImage(await Deno.readFile(SAMPLE));
    const p = psnr(await up.upscale(sample, { tile: 0 }), await up.upscale(sample, { tile: 32 }));
    console.log(`x4plus int8, spaniel 96x64, tile 32 pad ${DEFAULT_TILE_PAD}: ${p.toFixed(2)} dB vs untiled`);
    assert.ok(p >= 40, `${p.toFixed(2)} dB`);
  } finally {
    up.dispose();
  }
});

Deno.test({
  name: "tiled vs untiled at the default tile on a Kodak crop (../shared)",
  ignore: needsShared("tiled vs untiled at the default tile"),
  fn: async () => {
    const up = Upscaler.fromBytes(await tinyModel());
    try {
      const kodak = await decodeImage(await Deno.readFile(`${SHARED}/data/bench/Kodak/kodim03.png`));
      const w = 300, h = 72;
      const data = new Uint8ClampedArray(w * h * 4);
      for (let y = 0; y < h; y++) {
        data.set(
          kodak.data.subarray(((200 + y) * kodak.width + 300) * 4, ((200 + y) * kodak.width + 300 + w) * 4),
          y * w * 4,
        );
      }
      const img = { width: w, height: h, data };
      let tiles = 0;
      const tiled = await up.upscale(img, { onProgress: (_, total) => tiles = total });
      assert.equal(tiles, 2, "the default tile splits a 300-pixel side in two");
      const p = psnr(await up.upscale(img, { tile: 0 }), tiled);
      console.log(
        `Kodak 300x72, default tile (${up.defaultTile}, pad ${DEFAULT_TILE_PAD}): ${
          p.toFixed(2)
        } dB vs untiled`,
      );
      assert.ok(p >= 40, `${p.toFixed(2)} dB`);
    } finally {
      up.dispose();
    }
  },
});

Deno.test("alpha is kept (through the net, or resized), grayscale stays gray", async () => {
  const up = Upscaler.fromBytes(await tinyModel());
  try {
    // Left half transparent, right half opaque; a coloured pattern underneath.
    const img = solid(16, 8, (x, y) => [x * 15, 200 - y * 20, 60, x < 8 ? 0 : y < 4 ? 255 : 200]);
    const out = await up.upscale(img, { tile: 6, tilePad: 2, alpha: "bicubic" });
    const alphaAt = (x: number, y: number) => out.data[4 * (y * out.width + x) + 3];
    assert.equal(alphaAt(2, 10), 0);
    assert.equal(alphaAt(60, 2), 255);
    assert.ok(alphaAt(31, 5) < alphaAt(33, 5), "the edge stays at the same place");

    // "net" (the default): near edges the alpha is what the net makes of it as a gray picture, in
    // flat areas (an input pixel whose 3x3 neighbourhood has one alpha) that alpha exactly; the
    // colours are as with "bicubic"; progress counts both passes
    const progress: number[][] = [];
    const net = await up.upscale(img, { tile: 6, tilePad: 2, onProgress: (d, t) => progress.push([d, t]) });
    const alphaAsGray = await up.upscale(
      solid(16, 8, (x, y) => Array(3).fill(img.data[4 * (y * 16 + x) + 3]).concat(255) as number[]),
      { tile: 6, tilePad: 2 },
    );
    const lrAlpha = (x: number, y: number) =>
      img.data[4 * (Math.min(7, Math.max(0, y)) * 16 + Math.min(15, Math.max(0, x))) + 3];
    let flatCount = 0;
    for (let i = 0; i < net.data.length; i += 4) {
      const X = Math.floor((i / 4) % 64 / 4), Y = Math.floor(i / 4 / 64 / 4);
      const v = lrAlpha(X, Y);
      const flat = [-1, 0, 1].every((dy) => [-1, 0, 1].every((dx) => lrAlpha(X + dx, Y + dy) === v));
      flatCount += flat ? 1 : 0;
      assert.equal(net.data[i + 3], flat ? v : alphaAsGray.data[i], `alpha at pixel ${i / 4}`);
      for (let c = 0; c < 3; c++) assert.equal(net.data[i + c], out.data[i + c]);
    }
    assert.ok(flatCount > 0 && flatCount < net.data.length / 4, "flat areas and edges both");
    assert.notDeepEqual(net.data, out.data, "the tiny net's alpha is not bicubic's");
    assert.deepEqual(progress, Array.from({ length: 13 }, (_, i) => [i, 12]), "6 tiles, twice");
    await assert.rejects(up.upscale(img, { alpha: "nearest" as "net" }), /alpha must be "net" or "bicubic"/);

    const gray = solid(12, 10, (x, y) => {
      const v = (x * 37 + y * 11) % 256;
      return [v, v, v, 255];
    });
    const g = await up.upscale(gray);
    for (let i = 0; i < g.data.length; i += 4) {
      assert.ok(g.data[i] === g.data[i + 1] && g.data[i + 1] === g.data[i + 2], "gray output");
      assert.equal(g.data[i + 3], 255);
    }
  } finally {
    up.dispose();
  }
});

Deno.test("original-ESRGAN x8 and x1 models (3 and 0 upsamplings): the model file keeps them, untiled output is PyTorch's, tiles fit", async () => {
  const ref = parseSafetensors(
    await Deno.readFile(new URL("fixtures/esrgan_scales_ref.safetensors", import.meta.url)),
    "esrgan_scales_ref",
  ).tensors;
  const input = ref.get("input")!;
  for (const scale of [8, 1]) {
    const sd = await importWeights(new URL(`fixtures/esrgan_x${scale}.pth`, import.meta.url).pathname);
    const up = Upscaler.fromBytes(encodeModelFile(sd, { dtype: "fp32" }));
    try {
      assert.equal(up.scale, scale);
      assert.equal(up.config.numUpsample, Math.log2(scale));
      // x8 too gets the CPU kernels' tile (they make its upsampled maps in bands); tfjs's ops half
      assert.equal(up.defaultTile, DEFAULT_TILE_CPU_KERNELS);
      up.cpuKernels = false;
      assert.equal(up.defaultTile, scale === 8 ? DEFAULT_TILE / 2 : DEFAULT_TILE);
      up.cpuKernels = true;
      const x = tf.tensor4d(decodeFloat(input), input.shape as [number, number, number, number]);
      const y = await up.upscaleTensor(x, { tile: 0 });
      const want = decodeFloat(ref.get(`out_x${scale}`)!).map((v) => Math.min(1, Math.max(0, v)));
      const got = await y.data();
      assert.equal(got.length, want.length);
      assert.ok(got.every((v, i) => Math.abs(v - want[i]) < 1e-4), `x${scale}: not PyTorch's output`);
      const tiled = await up.upscaleTensor(x, { tile: 4, tilePad: 1 });
      assert.deepEqual(tiled.shape, y.shape);
      tf.dispose([x, y, tiled]);
    } finally {
      up.dispose();
    }
  }
});

Deno.test("x2 and x1 models: odd sizes are padded for the pixel-unshuffle and cropped back", async () => {
  for (const scale of [2, 1] as const) {
    const up = Upscaler.fromBytes(await tinyModel({ scale, numBlock: 1 }));
    try {
      const img = solid(11, 7, (x, y) => [x * 20, y * 30, 90, 255]);
      const out = await up.upscale(img, { tile: 5, tilePad: 2 });
      assert.deepEqual([out.width, out.height], [11 * scale, 7 * scale]);
    } finally {
      up.dispose();
    }
  }
});

Deno.test("progress per tile; abort between tiles throws AbortError and leaks nothing", async () => {
  const up = Upscaler.fromBytes(await tinyModel());
  try {
    const img = solid(40, 20, (x, y) => [x * 6, y * 12, 50, 255]);
    const seen: [number, number][] = [];
    await up.upscale(img, { tile: 10, tilePad: 2, onProgress: (d, t) => seen.push([d, t]) });
    assert.deepEqual(seen, Array.from({ length: 9 }, (_, i) => [i, 8]));

    const before = tf.memory().numTensors;
    const controller = new AbortController();
    let calls = 0;
    await assert.rejects(
      up.upscale(img, {
        tile: 10,
        onProgress: (done) => {
          calls++;
          if (done === 2) controller.abort();
        },
        signal: controller.signal,
      }),
      (e: Error) => e instanceof DOMException && e.name === "AbortError",
    );
    assert.equal(calls, 3, "stopped right after the tile during which it was aborted");
    assert.equal(tf.memory().numTensors, before);
    const aborted = AbortSignal.abort();
    await assert.rejects(up.upscale(img, { signal: aborted }), { name: "AbortError" });
  } finally {
    up.dispose();
  }
});

Deno.test("onFineProgress: onProgress's calls, and shares of the running tile between them on the CPU kernels", async () => {
  // a net whose tiles take tens of ms, reporting every ms: the reports cannot all fall between runs
  const up = Upscaler.fromBytes(await tinyModel({ numFeat: 32, numGrowCh: 16, numBlock: 3 }));
  up.progressMs = 1;
  try {
    const img = solid(64, 32, (x, y) => [x * 4, y * 8, 50, 255]);
    const whole: number[] = [], fine: number[] = [];
    await up.upscale(img, {
      tile: 32,
      tilePad: 4,
      onProgress: (d, t) => (assert.equal(t, 2), whole.push(d)),
      onFineProgress: (d, t) => (assert.equal(t, 2), fine.push(d)),
    });
    assert.deepEqual(whole, [0, 1, 2]);
    let next = 0; // onProgress's calls come in fine's, in order
    for (const d of fine) if (d === whole[next]) next++;
    assert.equal(next, whole.length, `fine ${fine} lacks some of ${whole}`);
    assert.ok(fine.filter((d) => d > 0 && d < 1).length > 0, `none within the first tile: ${fine}`);
    assert.ok(fine.filter((d) => d > 1 && d < 2).length > 0, `none within the second tile: ${fine}`);
    fine.forEach((d, i) => assert.ok(i === 0 || d >= fine[i - 1], `not monotone: ${fine}`));
  } finally {
    up.dispose();
  }
});

Deno.test("Upscaler.load: a missing file names the path", async () => {
  await assert.rejects(
    Upscaler.load("/nonexistent/model.safetensors"),
    /\/nonexistent\/model\.safetensors: model file not found/,
  );
});

Deno.test("on wasm the CPU kernels give tfjs's result (tiled, odd sizes, x4/x2/x1, concurrent calls)", async () => {
  for (const scale of [4, 2, 1] as const) {
    const up = Upscaler.fromBytes(await tinyModel({ scale, numBlock: 2 }));
    try {
      const x = tf.randomUniform([1, 13, 9, 3], 0, 1, "float32", scale) as tf.Tensor4D;
      up.cpuKernels = false;
      const ref = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
      const whole = await up.upscaleTensor(x, { tile: 0 });
      up.cpuKernels = true;
      // two at once: the plan's maps are shared, so the second must wait for the first
      const [a, b] = await Promise.all([
        up.upscaleTensor(x, { tile: 6, tilePad: 2 }),
        up.upscaleTensor(x, { tile: 0 }),
      ]);
      const diff = (p: tf.Tensor, q: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(p, q))).dataSync()[0]);
      assert.ok(diff(a, ref) < 1e-5, `x${scale} tiled: ${diff(a, ref)}`);
      assert.ok(diff(b, whole) < 1e-5, `x${scale} untiled: ${diff(b, whole)}`);
      tf.dispose([x, ref, a, b, whole]);
    } finally {
      up.dispose();
    }
  }
});

Deno.test("cpuPackEachRun: the same bits as kept filters; switching it makes the plan again", async () => {
  const up = Upscaler.fromBytes(await tinyModel({ numBlock: 2 }));
  const x = tf.randomUniform([1, 13, 9, 3], 0, 1, "float32", 7) as tf.Tensor4D;
  try {
    const kept = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
    up.cpuPackEachRun = true;
    const each = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
    assert.deepEqual(each.dataSync(), kept.dataSync());
    const plan = (up as unknown as { cpuPlan?: { packEachRun: boolean } }).cpuPlan;
    assert.equal(plan?.packEachRun, true, "the plan was made again");
    tf.dispose([kept, each]);
  } finally {
    x.dispose();
    up.dispose();
  }
});

Deno.test("from a model file on wasm: no tfjs net is made; `net` makes one, with the same result", async () => {
  const up = Upscaler.fromBytes(await tinyModel());
  const x = tf.randomUniform([1, 11, 9, 3], 0, 1, "float32", 5) as tf.Tensor4D;
  try {
    const before = tf.memory();
    const lazy = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
    assert.equal(tf.memory().numTensors, before.numTensors + 1, "only the output");
    const weights = up.net.params.size; // makes the net
    assert.ok(weights > 0 && tf.memory().numTensors === before.numTensors + 1 + weights);
    const planOf = () => (up as unknown as { cpuPlan?: { plan: object } }).cpuPlan?.plan;
    const first = planOf();
    const made = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
    assert.notEqual(planOf(), first, "the plan is made again from the net, which may change");
    assert.deepEqual(await made.data(), await lazy.data());
    up.cpuKernels = false; // tfjs's ops on the net
    const ops = await up.upscaleTensor(x, { tile: 6, tilePad: 2 });
    const err = tf.tidy(() => tf.max(tf.abs(tf.sub(ops, lazy))).dataSync()[0]);
    assert.ok(err < 1e-5, `tfjs's ops ${err} from the kernels`);
    tf.dispose([lazy, made, ops]);
  } finally {
    x.dispose();
    up.dispose();
  }
});

Deno.test("fromBytes keeps its own copy: the caller's buffer changed afterwards changes nothing", async () => {
  const bytes = await tinyModel();
  const want = Upscaler.fromBytes(bytes.slice()), up = Upscaler.fromBytes(bytes);
  bytes.fill(0); // the weights are decoded only now, where the plan is made
  const x = tf.randomUniform([1, 8, 8, 3], 0, 1, "float32", 6) as tf.Tensor4D;
  try {
    const a = await up.upscaleTensor(x, { tile: 0 }), b = await want.upscaleTensor(x, { tile: 0 });
    assert.deepEqual(await a.data(), await b.data());
    tf.dispose([a, b]);
  } finally {
    x.dispose();
    up.dispose();
    want.dispose();
  }
});

Deno.test("dispose({ keepNet: true }) frees the upscaler's plans and leaves its net usable", async () => {
  const up = Upscaler.fromBytes(await tinyModel());
  const x = tf.randomUniform([1, 8, 8, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  try {
    const want = await up.upscaleTensor(x, { tile: 0 }); // through the CPU kernels' plan
    const weights = up.net.params.size;
    const before = tf.memory().numTensors;
    up.dispose({ keepNet: true });
    assert.equal(tf.memory().numTensors, before, "the net's tensors stay");
    const other = new Upscaler(up.net); // a new plan, same net
    const again = await other.upscaleTensor(x, { tile: 0 });
    other.dispose({ keepNet: true });
    assert.deepEqual(await again.data(), await want.data());
    assert.equal(up.net.params.size, weights);
    tf.dispose([want, again]);
  } finally {
    x.dispose();
    up.dispose();
  }
});
