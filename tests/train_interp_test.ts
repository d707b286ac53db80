/**
 * Network interpolation: (1 − α)·A + α·B, α = 0 gives A and α = 1 gives B; layouts must agree; the
 * CLI's trade-off table.
 */
import assert from "node:assert/strict";
import { interpolateStateDicts } from "../core/interp.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import { decodeModelFile } from "../core/weights/model_file.ts";
import { rrdbnetShapes } from "../core/rrdbnet_arch.ts";
import type { StateDict } from "../core/state_dict.ts";
import { interpolateModelFiles } from "../train/interp.ts";
import { encodeImage } from "../core/image_io.ts";
import { initBackend } from "../core/backend.ts";
import { evaluateDataset, listDataset, upscalerModel } from "../core/eval.ts";
import { Upscaler } from "../core/upscaler.ts";

function net(seed: number): StateDict {
  const sd: StateDict = new Map();
  const shapes = rrdbnetShapes({ numInCh: 3, numOutCh: 3, scale: 4, numFeat: 4, numBlock: 1, numGrowCh: 2 });
  let k = seed;
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    sd.set(name, { shape, data: Float32Array.from({ length: n }, () => Math.sin(k++ * 12.9898) * 0.3) });
  }
  return sd;
}

Deno.test("alpha 0 and 1 return the inputs; 0.8 is (1 - 0.8)·A + 0.8·B (xinntao's net_interp)", () => {
  const a = net(1), b = net(1000);
  const at = (alpha: number) => interpolateStateDicts(a, b, { alpha });
  for (const [k, t] of a) {
    assert.deepEqual(at(0).get(k)!.data, t.data);
    assert.deepEqual(at(1).get(k)!.data, b.get(k)!.data);
  }
  const m = at(0.8).get("conv_first.weight")!.data,
    x = a.get("conv_first.weight")!.data,
    y = b.get("conv_first.weight")!.data;
  for (let i = 0; i < m.length; i++) assert.ok(Math.abs(m[i] - (0.2 * x[i] + 0.8 * y[i])) < 1e-7);
});

Deno.test("interpolating nets of different shapes fails naming the tensor", () => {
  const a = net(1), b = net(2);
  b.set("conv_last.weight", { shape: [3, 5, 3, 3], data: new Float32Array(135) });
  assert.throws(() => interpolateStateDicts(a, b, { alpha: 0.5 }), /conv_last.weight: shape/);
});

Deno.test("model files interpolate into a model file of A's precision", () => {
  const fa = { name: "a.safetensors", bytes: encodeModelFile(net(1), { dtype: "fp16" }) };
  const fb = { name: "b.safetensors", bytes: encodeModelFile(net(7), { dtype: "fp32" }) };
  const out = decodeModelFile(interpolateModelFiles(fa, fb, { alpha: 0 }));
  assert.equal(out.dtype, "fp16");
  assert.deepEqual(
    out.stateDict.get("conv_hr.weight")!.data,
    decodeModelFile(fa.bytes).stateDict.get("conv_hr.weight")!.data,
  );
});

Deno.test("interp --table: one row per alpha, its ends scoring as A and B themselves", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/set`);
    for (const k of [1, 2]) {
      const data = new Uint8ClampedArray(32 * 32 * 4).map((_, i) => i % 4 === 3 ? 255 : (i * 37 * k) % 251);
      await Deno.writeFile(
        `${dir}/set/img${k}.png`,
        await encodeImage({ width: 32, height: 32, data }, { format: "png" }),
      );
    }
    const files = [net(1), net(7)].map((sd, i) => ({ name: `${dir}/${"ab"[i]}.safetensors`, sd }));
    for (const f of files) await Deno.writeFile(f.name, encodeModelFile(f.sd, { dtype: "fp32" }));
    const cli = new URL("../cli/interp.ts", import.meta.url).pathname;
    const run = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, ...args],
        stdout: "piped",
        stderr: "piped",
      })
        .output();
    const out = await run(files[0].name, files[1].name, "--table", `${dir}/set`, "--alphas", "0,0.5,1");
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const rows = text.split("\n").filter((l) => /^\| (bicubic|[\d.]+) \|/.test(l)).map((l) =>
      l.split("|")[2].trim()
    );
    assert.equal(rows.length, 4, text);

    await initBackend("wasm");
    const ups = files.map((f) => Upscaler.fromBytes(encodeModelFile(f.sd, { dtype: "fp32" })));
    const result = await evaluateDataset(
      await listDataset(`${dir}/set`, { scale: 4 }),
      ups.map((u, i) => upscalerModel("ab"[i], u)),
      { scale: 4 },
    );
    ups.forEach((u) => u.dispose());
    assert.equal(rows[1], result.models.a.psnr.toFixed(2), "alpha 0 is A");
    assert.equal(rows[3], result.models.b.psnr.toFixed(2), "alpha 1 is B");

    // the shipped models by name
    const named = await run(
      "esrgan-psnr-x4",
      "esrgan-gan-x4",
      "--alpha",
      "0.5",
      "-o",
      `${dir}/half.safetensors`,
    );
    assert.equal(named.code, 0, new TextDecoder().decode(named.stderr));
    assert.equal(decodeModelFile(await Deno.readFile(`${dir}/half.safetensors`)).config.numBlock, 23);

    const bad = await run(files[0].name, files[1].name, "--table", `${dir}/set`, "--alphas", "0,x");
    assert.notEqual(bad.code, 0);
    assert.match(new TextDecoder().decode(bad.stderr), /--alphas must be a number, not "x"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
