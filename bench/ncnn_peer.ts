/**
 * realesrgan-ncnn-vulkan, the reference C++/Vulkan upscaler, timed on this machine's GPU beside the
 * bench's `upscale:` rows (bench/gpu_session.sh runs both in one call). It runs the peer's own net
 * file (`.param`) with random weights written here (fp16, as its releases ship them: timing only),
 * on PNG images alone and in folders of `--copies` copies, each way `--runs` times, alternating:
 * the single image is what one call costs (start-up: Vulkan, shader compilation, the model's load;
 * then decode, upscale, encode); the difference per extra copy is what an image costs once it is
 * running (its load, upscale and save threads overlap, as `-j 1:2:2` has them), to compare with the
 * bench's in-process upscales. Uses no npm package, so it runs from the tree with a bare Deno.
 *
 *     deno run -A bench/ncnn_peer.ts --peer BIN --param realesrgan-x4plus.param --image a.png
 *       [--image b.png ...] [--copies 4] [--runs 3] [--tile 0] [--json FILE]
 * @module
 */
import { parseArgs } from "node:util";

const TAG_FP16 = 0x01306b47;

/**
 * A `.bin` for `paramText` with random weights: for each Convolution (the only layers of
 * Real-ESRGAN's graphs that hold any) its fp16 tag, `6=` fp16 weights padded to 4 bytes, and
 * `0=` fp32 biases (zero) where `5=1`. Weights are uniform in ±0.5/√fan-in: activations stay
 * finite through 23 blocks in fp16, as trained weights' do.
 */
export function randomNcnnBin(paramText: string): Uint8Array {
  const convs = paramText.split("\n").filter((l) => l.startsWith("Convolution")).map((line) => {
    const kv = new Map(
      line.trim().split(/\s+/).filter((t) => /^-?\d+=/.test(t)).map((t) => {
        const [k, v] = t.split("=");
        return [Number(k), Number(v.split(",")[0])] as const;
      }),
    );
    return { out: kv.get(0) ?? 0, bias: kv.get(5) === 1, count: kv.get(6) ?? 0 };
  });
  if (!convs.length) throw new Error("ncnn param: no Convolution layers");
  const bytes = convs.reduce((n, c) => n + 4 + Math.ceil(c.count / 2) * 4 + (c.bias ? 4 * c.out : 0), 0);
  const bin = new Uint8Array(bytes), view = new DataView(bin.buffer);
  let at = 0, seed = 1;
  const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5;
  for (const c of convs) {
    view.setUint32(at, TAG_FP16, true);
    at += 4;
    const scale = 1 / Math.sqrt(c.count / c.out);
    for (let i = 0; i < c.count; i++) view.setFloat16(at + 2 * i, rand() * scale, true);
    at += Math.ceil(c.count / 2) * 4;
    if (c.bias) at += 4 * c.out;
  }
  return bin;
}

/** Width and height from a PNG's IHDR. */
function pngSize(bytes: Uint8Array): [number, number] {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  return [v.getUint32(16), v.getUint32(20)];
}

const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];

/** The peer with `name`'s net from `models`, at one tile setting. */
interface Peer {
  bin: string;
  models: string;
  name: string;
  tile: string;
}

/** Runs the peer on the images of folder `input` into `output`; its wall time in ms. */
async function upscale(peer: Peer, input: string, output: string): Promise<number> {
  const args = ["-i", input, "-o", output, "-n", peer.name, "-m", peer.models, "-t", peer.tile, "-f", "png"];
  const t0 = performance.now();
  const r = await new Deno.Command(peer.bin, { args, stdout: "piped", stderr: "piped" }).output();
  const ms = performance.now() - t0;
  if (!r.success) {
    const err = new TextDecoder().decode(r.stderr).slice(-2000);
    throw new Error(`${peer.bin} ${args.join(" ")}: exit ${r.code}\n${err}`);
  }
  return ms;
}

/** One image alone and `copies` of it in a folder, each `runs` times, alternating. */
async function timeImage(peer: Peer, image: string, work: string, counts: { copies: number; runs: number }) {
  const bytes = await Deno.readFile(image);
  const [w, h] = pngSize(bytes);
  const dirs = { one: `${work}/one_${w}x${h}`, many: `${work}/many_${w}x${h}` };
  for (const dir of Object.values(dirs)) {
    await Deno.mkdir(`${dir}/in`, { recursive: true });
    await Deno.mkdir(`${dir}/out`);
  }
  await Deno.writeFile(`${dirs.one}/in/0.png`, bytes);
  for (let k = 0; k < counts.copies; k++) await Deno.writeFile(`${dirs.many}/in/${k}.png`, bytes);
  const run = (dir: string) => upscale(peer, `${dir}/in`, `${dir}/out`);
  await run(dirs.one); // warm-up: the driver's shader cache, the page cache
  const [ow, oh] = pngSize(await Deno.readFile(`${dirs.one}/out/0.png`));
  if (ow !== 4 * w || oh !== 4 * h) {
    throw new Error(`${image}: the peer wrote ${ow}x${oh}, not ${4 * w}x${4 * h}`);
  }
  const single: number[] = [], folder: number[] = [];
  for (let r = 0; r < counts.runs; r++) {
    // which goes first alternates, so that a drift in the machine's load hits both
    if (r % 2) folder.push(await run(dirs.many));
    single.push(await run(dirs.one));
    if (!(r % 2)) folder.push(await run(dirs.many));
  }
  const perImage = (median(folder) - median(single)) / (counts.copies - 1);
  return {
    image: `${w}x${h}`,
    tile: Number(peer.tile),
    single_ms: median(single),
    folder_ms: median(folder),
    copies: counts.copies,
    per_image_ms: perImage,
    start_ms: median(single) - perImage,
    runs: { single, folder },
  };
}

async function main() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      peer: { type: "string" },
      param: { type: "string" },
      image: { type: "string", multiple: true },
      copies: { type: "string", default: "4" },
      runs: { type: "string", default: "3" },
      tile: { type: "string", default: "0" },
      json: { type: "string" },
    },
  });
  const images = values.image ?? [], copies = Number(values.copies), runs = Number(values.runs);
  if (!values.peer || !values.param || !images.length || !(copies >= 2) || !(runs >= 1)) {
    console.error(
      "usage: ncnn_peer.ts --peer BIN --param X.param --image A.png [--image ...] [--copies N>=2]",
    );
    Deno.exit(2);
  }
  const work = await Deno.makeTempDir({ prefix: "ncnn_peer_" });
  const peer: Peer = {
    bin: values.peer,
    models: `${work}/models`,
    name: values.param.split("/").pop()!.replace(/\.param$/, ""),
    tile: values.tile!,
  };
  await Deno.mkdir(peer.models);
  const paramText = await Deno.readTextFile(values.param);
  await Deno.writeTextFile(`${peer.models}/${peer.name}.param`, paramText);
  await Deno.writeFile(`${peer.models}/${peer.name}.bin`, randomNcnnBin(paramText));
  const rows = [];
  try {
    for (const image of images) {
      const row = await timeImage(peer, image, work, { copies, runs });
      rows.push(row);
      console.log(
        `realesrgan-ncnn-vulkan ${peer.name} (random weights) ${row.image}, tile ${peer.tile}: one image ` +
          `${row.single_ms.toFixed(0)} ms, ${copies} in a folder ${row.folder_ms.toFixed(0)} ms: ` +
          `${row.per_image_ms.toFixed(1)} ms per image once running, ${row.start_ms.toFixed(0)} ms to start`,
      );
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
  if (values.json) {
    const report = { peer: values.peer, model: peer.name, rows };
    await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2));
  }
}

if (import.meta.main) {
  await main().catch((e) => {
    console.error(`ncnn_peer: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  });
}
