import assert from "node:assert/strict";
import { zlibSync } from "fflate";
import {
  applyOrientation,
  decodeImage,
  encodeImage,
  formatFromPath,
  isOpaque,
  readImageHeader,
  type RgbaImage,
  to8Bits,
} from "../core/image_io.ts";

/** A smooth test picture with a varying alpha channel. */
function testImage(width: number, height: number, opaque = false): RgbaImage {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      data[i] = (x * 255) / (width - 1);
      data[i + 1] = (y * 255) / (height - 1);
      data[i + 2] = 128 + 100 * Math.sin(x / 5) * Math.cos(y / 7);
      data[i + 3] = opaque ? 255 : (x + y) % 256;
    }
  }
  return { width, height, data };
}

function psnr(a: Uint8ClampedArray, b: Uint8ClampedArray): number {
  let e = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    if (i % 4 === 3) continue;
    e += (a[i] - b[i]) ** 2;
    n++;
  }
  return 10 * Math.log10((255 * 255) / (e / n));
}

Deno.test("PNG round trip keeps every pixel, alpha included", async () => {
  const img = testImage(37, 23);
  const bytes = await encodeImage(img, { format: "png" });
  assert.deepEqual(readImageHeader(bytes), { format: "png", width: 37, height: 23 });
  const back = await decodeImage(bytes);
  assert.equal(back.width, 37);
  assert.equal(back.height, 23);
  assert.deepEqual(back.data, img.data);
});

Deno.test("small PNGs round trip (fixed-Huffman streams that imagescript's wasm decoder rejects)", async () => {
  for (const [w, h] of [[4, 4], [8, 8], [1, 1]]) {
    const img = testImage(w, h);
    assert.deepEqual((await decodeImage(await encodeImage(img, { format: "png" }))).data, img.data);
  }
});

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** A PNG written by hand, for layouts our encoder never makes. */
function handPng(
  w: number,
  h: number,
  depth: number,
  colorType: number,
  rows: number[][],
  extra: [string, number[]][] = [],
): Uint8Array {
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set([...type].map((c) => c.charCodeAt(0)), 4);
    out.set(data, 8);
    let crc = 0xffffffff;
    for (const b of out.subarray(4, 8 + data.length)) crc = crcTable[(crc ^ b) & 0xff] ^ (crc >>> 8);
    view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
    return out;
  };
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, w);
  new DataView(ihdr.buffer).setUint32(4, h);
  ihdr.set([depth, colorType, 0, 0, 0], 8);
  const raw = Uint8Array.from(rows.flatMap((r) => [0, ...r]));
  const parts = [
    Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    ...extra.map(([t, d]) => chunk(t, Uint8Array.from(d))),
    chunk("IDAT", zlibSync(raw)),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

Deno.test("PNG layouts: gray 1/8/16-bit, gray+alpha, indexed with tRNS, colour key", async () => {
  const px = async (bytes: Uint8Array) => [...(await decodeImage(bytes)).data];
  assert.deepEqual(await px(handPng(3, 1, 8, 0, [[0, 100, 255]])), [
    0,
    0,
    0,
    255,
    100,
    100,
    100,
    255,
    255,
    255,
    255,
    255,
  ]);
  assert.deepEqual(
    await px(handPng(10, 1, 1, 0, [[0b10110000, 0b01000000]])),
    [1, 0, 1, 1, 0, 0, 0, 0, 0, 1].flatMap((b) => [b * 255, b * 255, b * 255, 255]),
  );
  assert.deepEqual(await px(handPng(2, 1, 16, 0, [[0xff, 0xff, 0x12, 0x34]])), [
    255,
    255,
    255,
    255,
    18,
    18,
    18,
    255,
  ]);
  assert.deepEqual(await px(handPng(2, 1, 8, 4, [[10, 20, 30, 40]])), [10, 10, 10, 20, 30, 30, 30, 40]);
  const palette: [string, number[]][] = [["PLTE", [255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]], ["tRNS", [
    128,
  ]]];
  assert.deepEqual(
    await px(handPng(4, 1, 2, 3, [[0b00011011]], palette)),
    [255, 0, 0, 128, 0, 255, 0, 255, 0, 0, 255, 255, 9, 9, 9, 255],
  );
  assert.deepEqual(
    await px(handPng(4, 1, 8, 0, [[5, 6, 5, 7]], [["tRNS", [0, 5]]])),
    [5, 5, 5, 0, 6, 6, 6, 255, 5, 5, 5, 0, 7, 7, 7, 255],
  );
});

Deno.test("16-bit PNG: read at full depth (and rounded to 8 bits), written back 16-bit, exact", async () => {
  const gray = await decodeImage(handPng(2, 1, 16, 0, [[0xff, 0xff, 0x12, 0x34]]));
  assert.deepEqual([...gray.data16!], [65535, 65535, 65535, 65535, 0x1234, 0x1234, 0x1234, 65535]);
  for (const opaque of [false, true]) {
    const w = 13, h = 7;
    const data16 = Uint16Array.from(
      { length: w * h * 4 },
      (_, i) => i % 4 === 3 ? (opaque ? 65535 : (i * 977) % 65536) : (i * 7919 + 12345) % 65536,
    );
    const img: RgbaImage = { width: w, height: h, data: to8Bits(data16), data16 };
    const bytes = await encodeImage(img, { format: "png" });
    assert.deepEqual([bytes[24], bytes[25]], [16, opaque ? 2 : 6], "bit depth 16, RGB or RGBA");
    const back = await decodeImage(bytes);
    assert.deepEqual(back.data16, data16);
    assert.deepEqual(back.data, img.data);
    assert.equal(isOpaque(back), opaque);
    // JPEG takes the 8-bit pixels
    assert.equal((await decodeImage(await encodeImage(img, { format: "jpeg" }))).data16, undefined);
  }
});

Deno.test("opaque PNG is written as RGB and reads back opaque and exact", async () => {
  const img = testImage(20, 10, true);
  const bytes = await encodeImage(img, { format: "png" });
  assert.equal(bytes[25], 2, "colour type 2 (RGB)");
  const back = await decodeImage(bytes);
  assert.ok(isOpaque(back));
  assert.deepEqual(back.data, img.data);
});

// imagescript's native codec (FFI) and jSquash's wasm builds, which take over where FFI is not allowed
for (const encoder of ["native", "wasm"] as const) {
  Deno.test(`JPEG round trip (${encoder} encoder): header size, quality matters, decodes close`, async () => {
    const img = testImage(64, 48, true);
    const hi = await encodeImage(img, { encoder, format: "jpeg", quality: 95 });
    const lo = await encodeImage(img, { encoder, format: "jpeg", quality: 20 });
    assert.ok(lo.length < hi.length, `q20 ${lo.length} B vs q95 ${hi.length} B`);
    assert.deepEqual(readImageHeader(hi), { format: "jpeg", width: 64, height: 48 });
    const back = await decodeImage(hi);
    assert.equal(back.width, 64);
    assert.ok(isOpaque(back));
    const p = psnr(img.data, back.data);
    assert.ok(p > 35, `JPEG q95 PSNR ${p.toFixed(1)} dB`);
    await assert.rejects(encodeImage(img, { encoder, format: "jpeg", quality: 101 }), /quality/);
  });

  Deno.test(`WebP round trip (${encoder} encoder): lossless keeps every visible pixel (alpha too), lossy decodes close, damage named`, async () => {
    const img = testImage(30, 17);
    const lossless = await encodeImage(img, { encoder, format: "webp" });
    const lossy = await encodeImage(testImage(30, 17, true), { encoder, format: "webp", quality: 75 });
    assert.deepEqual(readImageHeader(lossless), { format: "webp", width: 30, height: 17 });
    assert.deepEqual(readImageHeader(lossy), { format: "webp", width: 30, height: 17 });
    // lossless, but the encoder drops the colour of fully transparent pixels (libwebp's default)
    const exact = await decodeImage(lossless);
    const visible = (im: RgbaImage) => im.data.map((v, i) => im.data[i - (i % 4) + 3] ? v : 0);
    assert.deepEqual(visible(exact), visible(img));
    assert.ok(img.data.some((v, i) => i % 4 === 3 && v === 0), "some pixels are transparent");
    const back = await decodeImage(lossy);
    assert.equal(back.width, 30);
    assert.ok(isOpaque(back));
    const p = psnr(testImage(30, 17, true).data, back.data);
    assert.ok(p > 30, `WebP q75 PSNR ${p.toFixed(1)} dB`);
    // an animation (VP8X with the animation flag): refused, saying so
    const anim = new Uint8Array(30);
    anim.set(new TextEncoder().encode("RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0"));
    anim.set([0x02, 0, 0, 0, 29, 0, 0, 16, 0, 0], 20); // flags, reserved, canvas 30x17
    assert.deepEqual(readImageHeader(anim), { format: "webp", width: 30, height: 17 });
    await assert.rejects(decodeImage(anim, { name: "a.webp" }), /a\.webp: animated WebP is not supported/);
    // the bitstream cut short past the header: libwebp refuses it
    await assert.rejects(
      decodeImage(lossless.subarray(0, lossless.length - 40), { name: "a.webp" }),
      /^Error: a\.webp: corrupt WebP \(/,
    );
  });
}

Deno.test("readImageHeader finds the JPEG frame header after other segments", async () => {
  const jpeg = await encodeImage(testImage(16, 8, true), { format: "jpeg" });
  // Insert a large APP1 segment (as EXIF would be) right after SOI.
  const app1 = new Uint8Array(4 + 5000);
  app1.set([0xff, 0xe1, (5002 >> 8) & 0xff, 5002 & 0xff]);
  const withExif = new Uint8Array(jpeg.length + app1.length);
  withExif.set(jpeg.subarray(0, 2));
  withExif.set(app1, 2);
  withExif.set(jpeg.subarray(2), 2 + app1.length);
  assert.deepEqual(readImageHeader(withExif), { format: "jpeg", width: 16, height: 8 });
  assert.equal((await decodeImage(withExif)).width, 16);
});

Deno.test("bad data: each case names its reason (and the file when given)", async () => {
  const png = await encodeImage(testImage(40, 30), { format: "png" });
  const jpeg = await encodeImage(testImage(40, 30, true), { format: "jpeg" });
  const text = new TextEncoder().encode("hello, this is not an image at all");
  const gif = new TextEncoder().encode("GIF89a\x01\x00\x01\x00");
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /^x\.png: empty file$/],
    [text, /^x\.png: not an image/],
    [gif, /^x\.png: unsupported image format GIF \(PNG, JPEG and WebP are supported\)/],
    [png.subarray(0, 20), /^x\.png: truncated PNG \(the file ends inside the header\)/],
    [png.subarray(0, png.length - 30), /^x\.png: truncated PNG/],
    [jpeg.subarray(0, 10), /^x\.png: truncated JPEG \(the file ends before the frame header\)/],
    [jpeg.subarray(0, jpeg.length - 100), /^x\.png: (truncated|corrupt) JPEG/],
  ];
  for (const [bytes, re] of cases) {
    await assert.rejects(decodeImage(bytes, { name: "x.png" }), (e: Error) => {
      assert.match(e.message, re);
      return true;
    });
  }
  assert.throws(() => readImageHeader(text), /^Error: not an image/);
});

Deno.test("maxPixels is enforced from the header, before decoding", async () => {
  // A PNG whose header claims 100000 x 100000 pixels and has no image data: refused for its size,
  // not reported as truncated, so no decoder ever saw it.
  const png = await encodeImage(testImage(4, 4), { format: "png" });
  const fake = png.slice(0, 33);
  new DataView(fake.buffer).setUint32(16, 100000);
  new DataView(fake.buffer).setUint32(20, 100000);
  assert.deepEqual(readImageHeader(fake), { format: "png", width: 100000, height: 100000 });
  await assert.rejects(
    decodeImage(fake, { name: "big.png", maxPixels: 16e6 }),
    /^Error: big\.png: too many pixels: 100000x100000 is 10000\.0 MP, over the limit of 16\.0 MP$/,
  );
  // Within the limit the same header goes on to the decoder, which finds it truncated.
  await assert.rejects(decodeImage(png.slice(0, 40), { maxPixels: 16 }), /truncated PNG/);
  await assert.rejects(decodeImage(png, { maxPixels: 15 }), /too many pixels/);
  assert.equal((await decodeImage(png, { maxPixels: 16 })).width, 4);
});

Deno.test("formatFromPath", () => {
  assert.equal(formatFromPath("a/b.PNG"), "png");
  assert.equal(formatFromPath("x.jpg"), "jpeg");
  assert.equal(formatFromPath("x.jpeg"), "jpeg");
  assert.equal(formatFromPath("x.webp"), "webp");
  assert.equal(formatFromPath("x.gif"), undefined);
  assert.equal(formatFromPath("png"), undefined);
});

/** `jpeg` with an EXIF block (APP1, big-endian TIFF) holding only Orientation = `o`. */
function withOrientation(jpeg: Uint8Array, o: number): Uint8Array {
  const tiff = [0x4d, 0x4d, 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, o, 0, 0, 0, 0, 0, 0];
  const payload = [...new TextEncoder().encode("Exif\0\0"), ...tiff];
  const app1 = [0xff, 0xe1, (payload.length + 2) >> 8, (payload.length + 2) & 0xff, ...payload];
  const out = new Uint8Array(jpeg.length + app1.length);
  out.set(jpeg.subarray(0, 2));
  out.set(app1, 2);
  out.set(jpeg.subarray(2), 2 + app1.length);
  return out;
}

Deno.test("applyOrientation: the eight EXIF orientations of a 3x2 image", () => {
  // pixels a..f as one byte each (R), row by row: a b c / d e f
  const img: RgbaImage = { width: 3, height: 2, data: new Uint8ClampedArray(24) };
  "abcdef".split("").forEach((ch, i) => img.data.set([ch.charCodeAt(0), 0, 0, 255], 4 * i));
  const read = (im: RgbaImage) =>
    Array.from(
      { length: im.height },
      (_, y) =>
        Array.from({ length: im.width }, (_, x) => String.fromCharCode(im.data[4 * (y * im.width + x)])).join(
          "",
        ),
    );
  const want: Record<number, string[]> = {
    1: ["abc", "def"],
    2: ["cba", "fed"],
    3: ["fed", "cba"],
    4: ["def", "abc"],
    5: ["ad", "be", "cf"],
    6: ["da", "eb", "fc"],
    7: ["fc", "eb", "da"],
    8: ["cf", "be", "ad"],
  };
  for (const [o, rows] of Object.entries(want)) {
    assert.deepEqual(read(applyOrientation(img, Number(o))), rows, `${o}`);
  }
});

Deno.test("a JPEG's EXIF orientation is applied when decoding (a phone's portrait photo comes upright)", async () => {
  // 32x16, the left half dark: turned 90° clockwise (orientation 6) the top half is dark
  const img: RgbaImage = { width: 32, height: 16, data: new Uint8ClampedArray(32 * 16 * 4) };
  for (let i = 0; i < 32 * 16; i++) {
    img.data.fill(i % 32 < 16 ? 20 : 230, 4 * i, 4 * i + 3), img.data[4 * i + 3] = 255;
  }
  const jpeg = await encodeImage(img, { format: "jpeg", quality: 95 });
  assert.deepEqual(readImageHeader(withOrientation(jpeg, 6)), { format: "jpeg", width: 32, height: 16 });
  const upright = await decodeImage(withOrientation(jpeg, 6));
  assert.deepEqual([upright.width, upright.height], [16, 32]);
  const mean = (im: RgbaImage, y0: number, y1: number) => {
    let s = 0;
    for (let i = y0 * im.width; i < y1 * im.width; i++) s += im.data[4 * i];
    return s / ((y1 - y0) * im.width);
  };
  assert.ok(mean(upright, 0, 16) < 60 && mean(upright, 16, 32) > 190, "dark on top, bright below");
  const plain = await decodeImage(withOrientation(jpeg, 1));
  assert.deepEqual([plain.width, plain.height], [32, 16]);
  assert.deepEqual(plain, await decodeImage(jpeg));
});
