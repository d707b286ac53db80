/**
 * The training CLI end to end as subprocesses on synthetic images: the smoke preset (shrunk) trains,
 * validates, checkpoints and exports a model the Upscaler loads; a run stopped and resumed ends
 * bit-identical to an uninterrupted one; SIGINT saves and exits; `export` and `interp` write
 * loadable model files.
 */
import assert from "node:assert/strict";
import { decodeImage, encodeImage } from "../core/image_io.ts";
import { imresize } from "../core/imresize.ts";
import { Upscaler } from "../core/upscaler.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { initBackend } from "../core/backend.ts";
import { readCheckpoint } from "../train/checkpoint.ts";

await initBackend("cpu");
const ROOT = new URL("..", import.meta.url).pathname;
const SHRINK = [
  "--gt-size",
  "16",
  "--batch-size",
  "2",
  "--checkpoint-every",
  "3",
  "--val-every",
  "3",
  "--log-every",
  "1",
  "--val-crop",
  "32",
];

async function run(script: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/${script}`, ...args],
    cwd: ROOT,
    env: { XDG_RUNTIME_DIR: "/tmp" },
  }).output();
  return { code: r.code, out: new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr) };
}

async function syntheticFolder(dir: string, n: number): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (let k = 0; k < n; k++) {
    const width = 48 + 8 * k, height = 40;
    const data = new Uint8ClampedArray(width * height * 4);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = (y * width + x) * 4;
        data.set([
          128 + 100 * Math.sin((x + k) / 3) * Math.cos(y / 4),
          (x * 5 + y * 3) % 256,
          (x >> 2) + (y >> 2) & 1 ? 220 : 30,
          255,
        ], i);
      }
    }
    await Deno.writeFile(`${dir}/img${k}.png`, await encodeImage({ width, height, data }, { format: "png" }));
  }
}

const tmp = await Deno.makeTempDir();
await syntheticFolder(`${tmp}/data`, 3);
await syntheticFolder(`${tmp}/val`, 1);

Deno.test({
  name: "--pretrain-g takes a shipped model's name",
  sanitizeResources: false,
  fn: async () => {
    const r = await run("train.ts", [
      ...["--config", "smoke", "--data", `${tmp}/data`, "--out", `${tmp}/pre`, "--total-steps", "1"],
      ...[
        "--pretrain-g",
        "realesrgan-x4plus-anime",
        "--num-block",
        "6",
        "--num-feat",
        "64",
        "--num-grow-ch",
        "32",
      ],
      ...SHRINK,
      "--no-export",
    ]);
    assert.equal(r.code, 0, r.out);
    assert.match(
      r.out,
      /generator initialised from \S+\/weights\/realesrgan-x4plus-anime\.int8\.safetensors/,
    );
  },
});

Deno.test({
  name: "paired data: --data-lr and --val-lr train and validate on the given LR images",
  sanitizeResources: false,
  fn: async () => {
    // LR files: the HR's MATLAB bicubic, darkened, so that the validation baseline shows which LR was used
    for (const d of ["data", "val"]) {
      await Deno.mkdir(`${tmp}/${d}_lr`, { recursive: true });
      for await (const e of Deno.readDir(`${tmp}/${d}`)) {
        const hr = await decodeImage(await Deno.readFile(`${tmp}/${d}/${e.name}`));
        const lr = imresize(hr, { scale: 1 / 4 });
        lr.data.forEach((v, i) => lr.data[i] = i % 4 === 3 ? v : v * 0.8);
        await Deno.writeFile(`${tmp}/${d}_lr/${e.name}`, await encodeImage(lr, { format: "png" }));
      }
    }
    const args = ["--config", "smoke", "--data", `${tmp}/data`, "--val", `${tmp}/val`, "--total-steps", "1"];
    const plain = await run("train.ts", [...args, "--out", `${tmp}/p0`, ...SHRINK, "--no-export"]);
    const paired = await run("train.ts", [
      ...args,
      ...["--data-lr", `${tmp}/data_lr`, "--val-lr", `${tmp}/val_lr`, "--out", `${tmp}/p1`],
      ...SHRINK,
      "--no-export",
    ]);
    assert.equal(plain.code, 0, plain.out);
    assert.equal(paired.code, 0, paired.out);
    assert.match(plain.out, /3 training images from \S+ \(LR: MATLAB bicubic\)/);
    assert.match(
      paired.out,
      /3 training images from \S+ \(LR from \S+data_lr\), 1 validation images \(LR from /,
    );
    const baseline = (out: string) => Number(/bicubic x4 of the LR: PSNR ([\d.]+) dB/.exec(out)![1]);
    assert.ok(
      baseline(paired.out) < baseline(plain.out) - 1,
      `${baseline(paired.out)} vs ${baseline(plain.out)}`,
    );
    // resuming without the LR folder says what changes
    const resumed = await run("train.ts", [...args, "--resume", "--out", `${tmp}/p1`, "--total-steps", "2"]);
    assert.equal(resumed.code, 0, resumed.out);
    assert.match(
      resumed.out,
      /WARNING: the checkpoint trained on LR images from \S+data_lr; this run goes on with bicubic LR \(give --data-lr again/,
    );
    const bad = await run("train.ts", [
      ...args,
      "--data-lr",
      `${tmp}/val_lr`,
      "--out",
      `${tmp}/p2`,
      ...SHRINK,
    ]);
    assert.equal(bad.code, 1);
    assert.match(bad.out, /val_lr: no LR image for img1\.png \(looked for img1, img1x4\)/);
  },
});

Deno.test({
  name: "smoke preset end to end: trains, validates, checkpoints, exports a model the Upscaler loads",
  sanitizeResources: false,
  fn: async () => {
    const r = await run("train.ts", [
      "--config",
      "smoke",
      "--data",
      `${tmp}/data`,
      "--val",
      `${tmp}/val`,
      "--out",
      `${tmp}/a`,
      "--total-steps",
      "6",
      ...SHRINK,
    ]);
    assert.equal(r.code, 0, r.out);
    // without a GPU plannable configs train on the CPU kernels (CI's Mesa adapter is software)
    assert.match(r.out, /BACKEND: wasm, no real GPU found: G's step on the CPU kernels/);
    for (
      const f of [
        "checkpoint.safetensors",
        "model.fp32.safetensors",
        "train_log.jsonl",
        "curves.png",
        "curves.svg",
        "config.json",
        "val/img0_6.png",
      ]
    ) {
      await Deno.stat(`${tmp}/a/${f}`);
    }
    const log = (await Deno.readTextFile(`${tmp}/a/train_log.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(log.filter((r) => r.type === "train").length, 6);
    assert.ok(log.some((r) => r.type === "val" && r.step === 6 && Number.isFinite(r.psnr)));
    const up = await Upscaler.load(`${tmp}/a/model.fp32.safetensors`);
    assert.equal(up.scale, 4);
    const img = await up.upscale({ width: 5, height: 4, data: new Uint8ClampedArray(80).fill(100) });
    assert.deepEqual([img.width, img.height], [20, 16]);
    up.dispose();
  },
});

Deno.test({
  name: "stopped at step 3 and resumed, a run ends bit-identical to the uninterrupted one",
  sanitizeResources: false,
  fn: async () => {
    const common = ["--data", `${tmp}/data`, "--out", `${tmp}/b`, ...SHRINK];
    let r = await run("train.ts", ["--config", "smoke", ...common, "--total-steps", "3", "--no-export"]);
    assert.equal(r.code, 0, r.out);
    r = await run("train.ts", ["--resume", ...common, "--total-steps", "6"]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /resumed at step 3/);
    const [a, b] = [
      await readCheckpoint(`${tmp}/a/checkpoint.safetensors`),
      await readCheckpoint(`${tmp}/b/checkpoint.safetensors`),
    ];
    assert.equal(b.step, 6);
    for (const [k, t] of a.netG) assert.deepEqual(b.netG.get(k)!.data, t.data, `G ${k}`);
    for (const [k, t] of a.netGEma) assert.deepEqual(b.netGEma.get(k)!.data, t.data, `EMA ${k}`);
    for (const [k, t] of a.optimizerG.expAvgSq) {
      assert.deepEqual(b.optimizerG.expAvgSq.get(k), t, `Adam v ${k}`);
    }
  },
});

Deno.test({
  name: "SIGINT saves a checkpoint and exits with 130",
  sanitizeResources: false,
  fn: async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}cli/train.ts`,
        "--config",
        "smoke",
        "--data",
        `${tmp}/data`,
        "--out",
        `${tmp}/c`,
        ...SHRINK,
        "--total-steps",
        "100000",
        "--checkpoint-every",
        "100000",
      ],
      cwd: ROOT,
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const reader = child.stderr.getReader();
    let text = "";
    while (!/step \d+\//.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const status = await child.status;
    assert.equal(status.code, 130, text);
    assert.match(text, /interrupted at step \d+/);
    assert.ok((await readCheckpoint(`${tmp}/c/checkpoint.safetensors`)).step >= 1);
  },
});

Deno.test({
  name: "export (int8) and interp (alpha 0 and 1) write model files with the expected weights",
  sanitizeResources: false,
  fn: async () => {
    let r = await run("export.ts", [
      `${tmp}/a/checkpoint.safetensors`,
      "-o",
      `${tmp}/a8.safetensors`,
      "--dtype",
      "int8",
    ]);
    assert.equal(r.code, 0, r.out);
    const m = decodeModelFile(await Deno.readFile(`${tmp}/a8.safetensors`));
    assert.equal(m.dtype, "int8");
    assert.equal(m.metadata.step, "6");
    (await Upscaler.load(`${tmp}/a8.safetensors`)).dispose();
    const ckptA = `${tmp}/a/checkpoint.safetensors`, ckptC = `${tmp}/c/checkpoint.safetensors`;
    for (const alpha of ["0", "1"]) {
      r = await run("interp.ts", [ckptA, ckptC, "--alpha", alpha, "-o", `${tmp}/i${alpha}.safetensors`]);
      assert.equal(r.code, 0, r.out);
    }
    const [ea, ec] = [(await readCheckpoint(ckptA)).netGEma, (await readCheckpoint(ckptC)).netGEma];
    const i0 = decodeModelFile(await Deno.readFile(`${tmp}/i0.safetensors`)).stateDict;
    const i1 = decodeModelFile(await Deno.readFile(`${tmp}/i1.safetensors`)).stateDict;
    for (const [k, t] of ea) {
      assert.deepEqual(i0.get(k)!.data, t.data);
      assert.deepEqual(i1.get(k)!.data, ec.get(k)!.data);
    }
    r = await run("interp.ts", [ckptA, "--alpha", "0.5", "-o", `${tmp}/x.safetensors`]);
    assert.equal(r.code, 2);
  },
});

Deno.test({
  name: "a diverged run (non-finite loss) stops with an error and keeps the last good checkpoint",
  sanitizeResources: false,
  fn: async () => {
    const r = await run("train.ts", [
      "--config",
      "smoke",
      "--data",
      `${tmp}/data`,
      "--out",
      `${tmp}/d`,
      ...SHRINK,
      "--total-steps",
      "5",
      "--checkpoint-every",
      "1",
      "--lr-g",
      "1e30",
    ]);
    assert.equal(r.code, 1, r.out);
    const m = r.out.match(/l_pix became \S+ at step (\d+); the last good state is .* \(step (\d+)\)/);
    assert.ok(m, r.out);
    assert.equal((await readCheckpoint(`${tmp}/d/checkpoint.safetensors`)).step, Number(m[2]));
  },
});

Deno.test({
  name: "cleanup",
  fn: async () => await Deno.remove(tmp, { recursive: true }),
});
