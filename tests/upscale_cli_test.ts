/**
 * The upscale CLI, run as users run it: `deno run` with exactly the permission flags of the
 * `upscale` task in deno.json, on tiny models and images made in a temporary folder.
 */
import assert from "node:assert/strict";
import { initBackend, probeWebGPU } from "../core/backend.ts";
import { decodeImage, encodeImage, readImageHeader, type RgbaImage, to8Bits } from "../core/image_io.ts";
import { RRDBNet } from "../core/rrdbnet_arch.ts";
import { DEFAULT_MODEL, DEFAULT_TILE, DEFAULT_TILE_CPU_KERNELS, DEFAULT_TILE_PAD } from "../core/upscaler.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import {
  AUTO_LOW_MEMORY_BYTES,
  autoLowMemory,
  defaultTile,
  LARGE_TILE_BYTES,
  LARGE_TILE_CPU_KERNELS,
  parseUpscaleArgs,
} from "../cli/upscale.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TASK: string = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).tasks.upscale;
const FLAGS = TASK.split(/\s+/).filter((a) => a.startsWith("--"));

await initBackend("cpu");
const dir = await Deno.makeTempDir({ prefix: "upscale_cli_test_" });
const model = `${dir}/tiny.safetensors`;
{
  const net = new RRDBNet({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 }, {
    seed: 1,
  });
  await Deno.writeFile(model, encodeModelFile(await net.stateDict(), { dtype: "int8" }));
  net.dispose();
}

/** Runs the CLI; stdout and stderr as text. */
async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...FLAGS, `${ROOT}/cli/upscale.ts`, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code, out: dec.decode(stdout), err: dec.decode(stderr) };
}

function picture(width: number, height: number, f: (x: number, y: number) => number[]): RgbaImage {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data.set(f(x, y), 4 * (y * width + x));
  return { width, height, data };
}

const colour = picture(12, 8, (x, y) => [x * 20, y * 30, 128, x < 6 ? 0 : 255]);
const gray = picture(10, 6, (x, y) => Array(3).fill((x * 25 + y * 7) % 256).concat(255));

async function list(path: string): Promise<string[]> {
  const names = [];
  for await (const e of Deno.readDir(path)) names.push(e.name);
  return names.sort();
}

/** One `error: FILE: REASON` line per failure, and nothing that looks like a stack trace. */
function assertCleanErrors(err: string) {
  assert.doesNotMatch(err, /^\s+at /m, "no stack trace");
  assert.doesNotMatch(err, /Uncaught/);
}

Deno.test("parseUpscaleArgs: defaults, checks, --help", () => {
  const a = parseUpscaleArgs(["in.png", "-o", "out.png"])!;
  assert.equal(a.model, DEFAULT_MODEL);
  assert.equal(a.tile, undefined, "the Upscaler's default for the backend");
  assert.equal(a.tilePad, DEFAULT_TILE_PAD);
  assert.equal(a.maxPixels, 16e6);
  assert.equal(a.force, false);
  assert.equal(a.tta, false);
  assert.equal(parseUpscaleArgs(["in.png", "-o", "out.png", "-x"])!.tta, true);
  assert.equal(a.lowMemory, false);
  assert.equal(parseUpscaleArgs(["in.png", "-o", "out.png", "--low-memory"])!.lowMemory, true);
  assert.equal(a.alpha, "net");
  assert.equal(a.threads, undefined);
  assert.equal(parseUpscaleArgs(["in.png", "-o", "out.png", "-j", "1"])!.threads, 1);
  assert.throws(
    () => parseUpscaleArgs(["a", "-o", "b", "--threads", "0"]),
    /--threads must be a whole number/,
  );
  assert.equal(parseUpscaleArgs(["in.png", "-o", "out.png", "--alpha", "bicubic"])!.alpha, "bicubic");
  assert.throws(
    () => parseUpscaleArgs(["a", "-o", "b", "--alpha", "cubic"]),
    /--alpha must be net or bicubic/,
  );
  const b = parseUpscaleArgs([
    "d",
    "-o",
    "e",
    "--format",
    "jpg",
    "-q",
    "80",
    "--max-pixels",
    "2M",
    "--tile",
    "0",
  ])!;
  assert.deepEqual([b.format, b.quality, b.maxPixels, b.tile], ["jpeg", 80, 2e6, 0]);
  assert.equal(parseUpscaleArgs(["--help"]), null);
  assert.throws(() => parseUpscaleArgs(["in.png"]), /no OUTPUT/);
  assert.throws(() => parseUpscaleArgs(["-o", "x.png"]), /no INPUT/);
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "--tile=-3"]), /--tile must be/);
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "--tile", "-3"]), /ambiguous\. .* use '--tile=-XYZ'/);
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "--outscale", "0"]), /--outscale must be/);
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "--backend", "gl"]), /--backend must be/);
  assert.equal(a.precision, "f32");
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--precision", "f16-f32acc"])!.precision, "f16-f32acc");
  assert.throws(
    () => parseUpscaleArgs(["a", "-o", "b", "--precision", "f8"]),
    /--precision must be f32, f16/,
  );
  assert.equal(a.winograd, "auto");
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--winograd", "0"])!.winograd, 0);
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--winograd", "4"])!.winograd, 4);
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--winograd", "auto"])!.winograd, "auto");
  assert.throws(
    () => parseUpscaleArgs(["a", "-o", "b", "--winograd", "3"]),
    /--winograd must be 0, 2, 4 or auto/,
  );
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--winograd", "4", "--precision", "f16"])!.winograd, 4);
  assert.equal(parseUpscaleArgs(["a", "-o", "b", "--winograd", "2", "--precision", "f16"])!.winograd, 2);
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "--bogus"]), /bogus/);
  const anime = parseUpscaleArgs(["a", "-o", "b", "-n", "realesrgan-x4plus-anime"])!.model;
  assert.ok(anime.endsWith("/weights/realesrgan-x4plus-anime.int8.safetensors"), anime);
  assert.throws(
    () => parseUpscaleArgs(["a", "-o", "b", "-n", "x4plus"]),
    /--name: no shipped model "x4plus"; the shipped ones: realesrgan-x4plus, realesrgan-x4plus-anime, /,
  );
  assert.throws(() => parseUpscaleArgs(["a", "-o", "b", "-n", "esrgan-psnr-x4", "-m", "m"]), /not both/);
});

Deno.test("file to file: alpha kept, grayscale works, JPEG and WebP out, WebP in; exit 0", async () => {
  await Deno.writeFile(`${dir}/colour.png`, await encodeImage(colour, { format: "png" }));
  await Deno.writeFile(`${dir}/gray.png`, await encodeImage(gray, { format: "png" }));
  const colourArgs = ["--model", model, "--tile", "5"];
  let r = await cli(`${dir}/colour.png`, "-o", `${dir}/colour_x4.png`, ...colourArgs, "--alpha", "bicubic");
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /^backend: (wasm|webgpu|cpu)/m);
  assert.match(r.err, /colour\.png -> .*colour_x4\.png \(12x8 -> 48x32/);
  const out = await decodeImage(await Deno.readFile(`${dir}/colour_x4.png`));
  assert.deepEqual([out.width, out.height], [48, 32]);
  assert.equal(out.data[4 * (10 * 48 + 2) + 3], 0, "transparent half stays transparent");
  assert.equal(out.data[4 * (10 * 48 + 45) + 3], 255, "opaque half stays opaque");
  // by default the alpha goes through the (here random, tiny) model: other values, same colours
  r = await cli(`${dir}/colour.png`, "-o", `${dir}/colour_net.png`, ...colourArgs, "-j", "1");
  assert.equal(r.code, 0, r.err);
  if (/^backend: wasm/m.test(r.err)) assert.match(r.err, /^backend: wasm, 1 thread, /m);
  const net = await decodeImage(await Deno.readFile(`${dir}/colour_net.png`));
  const channel = (img: typeof net, c: number) => img.data.filter((_, i) => i % 4 === c);
  assert.notDeepEqual(channel(net, 3), channel(out, 3));
  assert.deepEqual(channel(net, 0), channel(out, 0));

  r = await cli(
    `${dir}/gray.png`,
    "-o",
    `${dir}/gray_x2.jpg`,
    "--model",
    model,
    "--outscale",
    "2",
    "-q",
    "85",
  );
  assert.equal(r.code, 0, r.err);
  assert.doesNotMatch(r.err, /wasm encoders/, "the task's permissions load the native codec");
  const g = await decodeImage(await Deno.readFile(`${dir}/gray_x2.jpg`));
  assert.deepEqual([g.width, g.height], [20, 12]);
  // without FFI (a platform without imagescript's binary alike), the wasm encoders write it, saying so
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...FLAGS.filter((f) => !f.startsWith("--allow-ffi")),
      `${ROOT}/cli/upscale.ts`,
      `${dir}/gray.png`,
    ]
      .concat(["-o", `${dir}/gray_wasm.jpg`, "--model", model]),
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stderr: "piped",
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  assert.match(
    new TextDecoder().decode(stderr),
    /^note: JPEG\/WebP from jSquash's wasm encoders \(slower\): /m,
  );
  assert.equal((await decodeImage(await Deno.readFile(`${dir}/gray_wasm.jpg`))).width, 40);

  r = await cli(`${dir}/gray.png`, "-o", `${dir}/gray_webp`, "--format", "webp", "--model", model);
  assert.equal(r.code, 0, r.err);
  const webp = await Deno.readFile(`${dir}/gray_webp`);
  assert.equal(new TextDecoder().decode(webp.subarray(8, 12)), "WEBP");
  // and WebP back in, with test-time augmentation
  r = await cli(`${dir}/gray_webp`, "-o", `${dir}/gray_webp_x4.png`, "--model", model, "--tta");
  assert.equal(r.code, 0, r.err);
  assert.equal((await decodeImage(await Deno.readFile(`${dir}/gray_webp_x4.png`))).width, 160);
});

Deno.test("the CPU kernels' default tile is 512 where 3 GB are free, else theirs; other backends keep theirs", () => {
  const cpu = { defaultTile: DEFAULT_TILE_CPU_KERNELS };
  assert.equal(defaultTile(cpu, LARGE_TILE_BYTES), LARGE_TILE_CPU_KERNELS);
  assert.equal(LARGE_TILE_CPU_KERNELS, 512);
  assert.equal(defaultTile(cpu, LARGE_TILE_BYTES - 1), DEFAULT_TILE_CPU_KERNELS);
  assert.equal(defaultTile(cpu, undefined), DEFAULT_TILE_CPU_KERNELS, "unknown: the smaller");
  assert.equal(defaultTile({ defaultTile: DEFAULT_TILE }, 64e9), DEFAULT_TILE, "webgpu's and cpu's stay");
});

Deno.test("under 1.5 GB of free memory the CPU kernels run as with --low-memory, and say so", async () => {
  assert.equal(autoLowMemory(undefined), undefined, "unknown: kept");
  assert.equal(autoLowMemory(AUTO_LOW_MEMORY_BYTES), undefined);
  assert.match(autoLowMemory(0.9e9)!, /^0\.90 GB free: .*as --low-memory/);
  // the CLI with the system's memory made to read 0.9 GB free (a script preloaded before it)
  const stub = `${dir}/low_memory_stub.ts`;
  await Deno.writeTextFile(
    stub,
    `const real = Deno.systemMemoryInfo;
Object.defineProperty(Deno, "systemMemoryInfo", { value: () => ({ ...real(), available: 0.9e9 }) });`,
  );
  await Deno.writeFile(`${dir}/mem.png`, await encodeImage(colour, { format: "png" }));
  const args = [`${dir}/mem.png`, "--model", model, "--backend", "wasm", "--force", "-o"];
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...FLAGS, `--preload=${stub}`, `${ROOT}/cli/upscale.ts`, ...args, `${dir}/mem_low.png`],
    env: { NO_COLOR: "1" },
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(stderr);
  assert.equal(code, 0, err);
  assert.match(err, /^memory: 0\.90 GB free: the CPU kernels make each conv's filters per tile/m);
  // as this machine's memory is: with GBs free nothing is said; the same output either way
  const kept = await cli(...args, `${dir}/mem_kept.png`);
  assert.equal(kept.code, 0, kept.err);
  if (Deno.systemMemoryInfo().available >= AUTO_LOW_MEMORY_BYTES) assert.doesNotMatch(kept.err, /^memory:/m);
  assert.deepEqual(await Deno.readFile(`${dir}/mem_low.png`), await Deno.readFile(`${dir}/mem_kept.png`));
});

Deno.test("16-bit PNG in, 16-bit PNG out (8-bit for JPEG)", async () => {
  const data16 = Uint16Array.from({ length: 12 * 8 * 4 }, (_, i) => i % 4 === 3 ? 65535 : (i * 4099) % 65536);
  await Deno.writeFile(
    `${dir}/deep.png`,
    await encodeImage({ width: 12, height: 8, data: to8Bits(data16), data16 }, { format: "png" }),
  );
  let r = await cli(`${dir}/deep.png`, "-o", `${dir}/deep_x4.png`, "--model", model);
  assert.equal(r.code, 0, r.err);
  const png = await Deno.readFile(`${dir}/deep_x4.png`);
  assert.equal(png[24], 16, "bit depth 16");
  const out = await decodeImage(png);
  assert.deepEqual([out.width, out.height], [48, 32]);
  assert.ok(out.data16!.some((v) => v % 257), "values between 8-bit steps");
  r = await cli(`${dir}/deep.png`, "-o", `${dir}/deep_x4.jpg`, "--model", model);
  assert.equal(r.code, 0, r.err);
  assert.equal((await decodeImage(await Deno.readFile(`${dir}/deep_x4.jpg`))).width, 48);
});

Deno.test("bad inputs: one line each, exit 1, no partial output, the rest of the folder still done", async () => {
  const src = `${dir}/mixed`, dst = `${dir}/mixed_out`;
  await Deno.mkdir(src);
  const good = await encodeImage(colour, { format: "png" });
  await Deno.writeFile(`${src}/a_good.png`, good);
  await Deno.writeFile(`${src}/b_empty.png`, new Uint8Array(0));
  await Deno.writeFile(`${src}/c_truncated.png`, good.subarray(0, good.length - 40));
  await Deno.writeFile(`${src}/d_text.jpg`, new TextEncoder().encode("not an image, just text"));
  await Deno.writeFile(
    `${src}/e_big.png`,
    await encodeImage(picture(30, 30, () => [1, 2, 3, 255]), { format: "png" }),
  );
  await Deno.writeFile(`${src}/f_good.jpg`, await encodeImage(gray, { format: "jpeg" }));
  await Deno.writeFile(`${src}/notes.txt`, new TextEncoder().encode("ignored"));
  const r = await cli(src, "-o", dst, "--model", model, "--max-pixels", "500");
  assert.equal(r.code, 1, r.err);
  assertCleanErrors(r.err);
  const errors = r.err.split("\n").filter((l) => l.startsWith("error:"));
  assert.deepEqual(errors, [
    `error: ${src}/b_empty.png: empty file`,
    `error: ${src}/c_truncated.png: truncated PNG (the file ends inside the IDAT chunk)`,
    `error: ${src}/d_text.jpg: not an image (no PNG, JPEG or WebP signature)`,
    `error: ${src}/e_big.png: too many pixels: 30x30 is 900 pixels, over the limit of 500 pixels`,
  ]);
  assert.match(r.err, /^2 of 6 files done$/m);
  assert.deepEqual(
    await list(dst),
    ["a_good.png", "f_good.png"],
    "no output, temporary or partial, for bad files",
  );

  const missing = await cli(`${dir}/nope.png`, "-o", `${dir}/nope_x4.png`, "--model", model);
  assert.equal(missing.code, 1);
  assertCleanErrors(missing.err);
  assert.match(missing.err, new RegExp(`^error: ${dir}/nope\\.png: no such file$`, "m"));
  assert.equal(await Deno.stat(`${dir}/nope_x4.png`).catch(() => null), null);

  // an output folder that does not exist fails the file before its input is even decoded
  const noFolder = await cli(`${src}/d_text.jpg`, "-o", `${dir}/no_such_folder/x.png`, "--model", model);
  assert.equal(noFolder.code, 1);
  assertCleanErrors(noFolder.err);
  assert.match(
    noFolder.err,
    new RegExp(`^error: ${src}/d_text\\.jpg: ${dir}/no_such_folder/x\\.png: its folder does not exist$`, "m"),
  );

  const badModel = await cli(`${src}/a_good.png`, "-o", `${dir}/m.png`, "--model", `${dir}/none.safetensors`);
  assert.equal(badModel.code, 1);
  assert.match(badModel.err, /^error: .*none\.safetensors: model file not found$/m);
  assertCleanErrors(badModel.err);
});

Deno.test("several inputs (files and folders) into one folder; OUTPUT a file is refused", async () => {
  const src = `${dir}/multi_src`, out = `${dir}/multi_out`;
  await Deno.mkdir(`${src}/sub`, { recursive: true });
  await Deno.writeFile(`${src}/a.png`, await encodeImage(colour, { format: "png" }));
  await Deno.writeFile(`${src}/b.jpg`, await encodeImage(gray, { format: "jpeg" }));
  await Deno.writeFile(`${src}/sub/c.png`, await encodeImage(gray, { format: "png" }));
  const r = await cli(
    `${src}/a.png`,
    `${src}/b.jpg`,
    `${src}/sub`,
    "-o",
    out,
    "--model",
    model,
    "-f",
    "webp",
  );
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /^3 of 3 files done$/m);
  assert.deepEqual(await list(out), ["a.webp", "b.webp", "c.webp"]);
  assert.equal((await decodeImage(await Deno.readFile(`${out}/c.webp`))).width, 40);
  // -f auto: each output in its input's format (--quality for the JPEGs)
  const runs: [string[], string, string[]][] = [
    [["a.png", "b.jpg"], "multi_auto", []],
    [["sub", "b.jpg"], "multi_auto2", ["-q", "70"]],
  ];
  for (const [ins, out, q] of runs) {
    const auto = await cli(
      ...ins.map((f) => `${src}/${f}`),
      "-o",
      `${dir}/${out}`,
      "--model",
      model,
      "-f",
      "auto",
      ...q,
    );
    assert.equal(auto.code, 0, auto.err);
  }
  assert.deepEqual(await list(`${dir}/multi_auto`), ["a.png", "b.jpg"]);
  assert.deepEqual(await list(`${dir}/multi_auto2`), ["b.jpg", "c.png"]);
  assert.equal(readImageHeader(await Deno.readFile(`${dir}/multi_auto/b.jpg`)).format, "jpeg");
  // the same name from two inputs: the second is refused, the first kept
  const twice = await cli(`${src}/a.png`, `${src}/a.png`, "-o", `${dir}/multi_twice`, "--model", model);
  assert.equal(twice.code, 1);
  assert.match(twice.err, /a\.png is already an output of this run/);
  const file = await cli(`${src}/a.png`, `${src}/b.jpg`, "-o", `${src}/a.png`, "--model", model);
  assert.equal(file.code, 2);
  assert.match(file.err, /a\.png is a file: with several inputs, OUTPUT is a folder/);
});

Deno.test("a published model as it comes (.pth) runs without an import step; a broken one is one line", async () => {
  const pth = new URL("fixtures/esrgan_x2.pth", import.meta.url).pathname;
  await Deno.writeFile(`${dir}/pub.png`, await encodeImage(colour, { format: "png" }));
  const r = await cli(`${dir}/pub.png`, "-o", `${dir}/pub_x2.png`, "-m", pth);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /model: \S+esrgan_x2\.pth \(x2, 2 blocks, fp32\)/);
  assert.equal((await decodeImage(await Deno.readFile(`${dir}/pub_x2.png`))).width, 24);
  await Deno.writeTextFile(`${dir}/broken.pth`, "not a checkpoint");
  const bad = await cli(`${dir}/pub.png`, "-o", `${dir}/pub_bad.png`, "-m", `${dir}/broken.pth`);
  assert.equal(bad.code, 1);
  assertCleanErrors(bad.err);
  assert.match(bad.err, /^error: \S+broken\.pth: unknown weight format/m);
});

Deno.test("never overwrites without --force", async () => {
  await Deno.writeFile(`${dir}/in.png`, await encodeImage(colour, { format: "png" }));
  await Deno.writeTextFile(`${dir}/taken.png`, "precious");
  const r = await cli(`${dir}/in.png`, "-o", `${dir}/taken.png`, "--model", model);
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    new RegExp(`^error: ${dir}/in\\.png: ${dir}/taken\\.png exists \\(use --force to overwrite\\)$`, "m"),
  );
  assert.equal(await Deno.readTextFile(`${dir}/taken.png`), "precious");
  const f = await cli(`${dir}/in.png`, "-o", `${dir}/taken.png`, "--model", model, "--force");
  assert.equal(f.code, 0, f.err);
  assert.equal((await decodeImage(await Deno.readFile(`${dir}/taken.png`))).width, 48);
  assert.deepEqual((await list(dir)).filter((n) => n.endsWith(".tmp")), []);
});

Deno.test("usage errors exit 2 with one line; --help exits 0", async () => {
  const r = await cli("--tile", "x", "a.png", "-o", "b.png");
  assert.equal(r.code, 2);
  assert.match(r.err, /^error: --tile must be a whole number ≥ 0, not "x"$/m);
  // f16 on a backend without it: said before any work, nothing written
  const f = await cli(
    "--backend",
    "wasm",
    "--precision",
    "f16",
    "samples/spaniel.png",
    "-o",
    `${dir}/never.png`,
  );
  assert.equal(f.code, 2);
  assert.match(
    f.err,
    /^error: --precision f16 needs the webgpu backend on an adapter with shader-f16; this run uses wasm$/m,
  );
  assert.ok(!(await list(dir)).includes("never.png"));
  const wg = await cli(
    "--backend",
    "wasm",
    "--winograd",
    "4",
    "samples/spaniel.png",
    "-o",
    `${dir}/never.png`,
  );
  assert.equal(wg.code, 2);
  assert.match(wg.err, /^error: --winograd 4 needs the webgpu backend; this run uses wasm$/m);
  assert.ok(!(await list(dir)).includes("never.png"));
  // an OUTPUT of no known format: said before the backend and the model are even set up
  const gif = await cli("samples/spaniel.png", "-o", `${dir}/x.gif`, "--model", model);
  assert.equal(gif.code, 2);
  assert.equal(
    gif.err.trim(),
    `error: cannot tell the format from "${dir}/x.gif": give .png/.jpg/.webp or --format`,
  );
  const h = await cli("--help");
  assert.equal(h.code, 0);
  assert.match(h.out, /^usage: deno task upscale INPUT... -o OUTPUT/);
});

const hasDefault = await Deno.stat(DEFAULT_MODEL).then(() => true, () => false);
const webgpu = await probeWebGPU();
Deno.test({
  name: "--winograd auto on webgpu: says what it chose, and the forward times it chose by",
  ignore: !webgpu.adapter && (console.warn(`skipping the webgpu CLI run: ${webgpu.why}`), true),
  fn: async () => {
    await Deno.writeFile(`${dir}/auto_in.png`, await encodeImage(colour, { format: "png" }));
    const r = await cli(
      ...["--backend", "webgpu", "--winograd", "auto", "--model", model],
      ...[`${dir}/auto_in.png`, "-o", `${dir}/auto_out.png`],
    );
    assertCleanErrors(r.err);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /convolutions direct or Winograd, as timed/);
    assert.match(
      r.err,
      /^convolutions: (direct|Winograd F\(4x4\)) \(timed on a 12x8 patch: direct [\d.]+ ms, Winograd F\(4x4\) [\d.]+ ms\)$/m,
    );
    const out = await decodeImage(await Deno.readFile(`${dir}/auto_out.png`));
    assert.deepEqual([out.width, out.height], [48, 32]);
  },
});

Deno.test({
  name: "end to end: the default model on the sample image (as the README says)",
  ignore: !hasDefault && (console.warn(`skipping the end-to-end run: ${DEFAULT_MODEL} is absent`), true),
  fn: async () => {
    const out = `${dir}/spaniel_x4.png`;
    const t0 = performance.now();
    const r = await cli("samples/spaniel.png", "-o", out);
    const ms = performance.now() - t0;
    assert.equal(r.code, 0, r.err);
    console.log(
      `default model, samples/spaniel.png (96x64) -> 384x256: ${(ms / 1000).toFixed(1)} s; ${r.err.trim()}`,
    );
    const img = await decodeImage(await Deno.readFile(out));
    assert.deepEqual([img.width, img.height], [384, 256]);
  },
});

Deno.test("cleanup", async () => {
  await Deno.remove(dir, { recursive: true });
});
