/** Presets, flags over presets, JSON files and the BasicSR learning-rate schedules. */
import assert from "node:assert/strict";
import { applyFlags, configFlags, loadConfig, PRESETS, scheduleOf, validateConfig } from "../train/config.ts";
import { lrAt } from "../train/schedule.ts";
import { parseArgs } from "node:util";

Deno.test("presets follow BasicSR's train_RRDBNet_PSNR_x4 and train_ESRGAN_x4", () => {
  const p = PRESETS.psnr, g = PRESETS.gan;
  assert.deepEqual([p.stage, p.lrG, p.beta1, p.beta2, p.gtSize, p.batchSize, p.numBlock], [
    "psnr",
    2e-4,
    0.9,
    0.99,
    128,
    16,
    23,
  ]);
  assert.deepEqual([p.periods, p.etaMin, p.emaDecay, p.totalSteps], [
    [250000, 250000, 250000, 250000],
    1e-7,
    0.999,
    1e6,
  ]);
  assert.deepEqual([g.stage, g.lrG, g.lrD, g.milestones, g.gamma], ["gan", 1e-4, 1e-4, [
    50000,
    100000,
    200000,
    300000,
  ], 0.5]);
  assert.deepEqual([g.pixelWeight, g.perceptualWeight, g.ganWeight, g.perceptualLayer], [
    1e-2,
    1,
    5e-3,
    "conv5_4",
  ]);
  for (const [name, c] of Object.entries(PRESETS)) validateConfig({ ...c }, name);
});

Deno.test("every option is a flag; flags override the preset; bad values name the option", () => {
  const { values } = parseArgs({
    args: ["--total-steps", "7", "--no-rot", "--milestones", "1,2", "--stage", "gan"],
    options: configFlags(),
  });
  const c = applyFlags(PRESETS.smoke, values);
  assert.deepEqual([c.totalSteps, c.rot, c.milestones, c.stage, c.hflip], [7, false, [1, 2], "gan", true]);
  assert.throws(() => applyFlags(PRESETS.smoke, { "lr-g": "fast" }), /--lr-g: not a number/);
  assert.throws(
    () => validateConfig({ gtSize: 30, scale: 4 }, "x.json"),
    /x.json: gtSize 30 is not a multiple/,
  );
  assert.throws(() => validateConfig({ nope: 1 }, "x.json"), /unknown option "nope"/);
  assert.throws(() => validateConfig({ backend: "tpu" }, "x.json"), /backend must be webgpu, wasm or cpu/);
  assert.throws(
    () => validateConfig({ backend: "wasm", plannedStep: false }, "x.json"),
    /wasm trains with the planned step only/,
  );
  assert.equal(validateConfig({ backend: "wasm" }, "x.json").backend, "wasm");
  assert.equal(validateConfig({ backend: "wasm", stage: "gan" }, "x.json").stage, "gan");
});

Deno.test("winograd: auto by default; 2 or 4, f32, for the planned step on webgpu only; or 0 (off)", () => {
  for (const preset of Object.values(PRESETS)) assert.equal(preset.winograd, "auto");
  assert.equal(validateConfig({ winograd: 0 }, "x").winograd, 0);
  assert.equal(validateConfig({ winograd: 4 }, "x").winograd, 4);
  assert.throws(() => validateConfig({ winograd: 3 }, "x"), /winograd must be 0 \(off\), 2, 4 or auto/);
  assert.throws(() => validateConfig({ winograd: "fast" }, "x"), /"winograd" must be a number or auto/);
  // auto chooses where there is a choice (webgpu, f32) and is direct elsewhere
  for (const other of [{}, { precision: "f16" }, { backend: "wasm" }]) {
    assert.equal(validateConfig({ winograd: "auto", ...other }, "x").winograd, "auto");
  }
  assert.equal(applyFlags(PRESETS.psnr, { winograd: "auto" }).winograd, "auto");
  assert.equal(applyFlags(PRESETS.psnr, { winograd: "4" }).winograd, 4);
  assert.throws(() => applyFlags(PRESETS.psnr, { winograd: "fast" }), /--winograd: not a number: fast/);
  assert.throws(() => validateConfig({ winograd: 2, precision: "f16" }, "x"), /webgpu in f32 only/);
  assert.throws(() => validateConfig({ winograd: 4, backend: "wasm" }, "x"), /webgpu in f32 only/);
});

Deno.test("precision: f32 by default; half precision only for the planned step on webgpu", () => {
  assert.equal(PRESETS.psnr.precision, "f32");
  assert.equal(validateConfig({ precision: "f16" }, "x").precision, "f16");
  assert.throws(() => validateConfig({ precision: "f8" }, "x"), /precision must be f32, f16 or f16-f32acc/);
  assert.throws(
    () => validateConfig({ precision: "f16", backend: "wasm" }, "x"),
    /planned step on webgpu only/,
  );
  assert.throws(
    () => validateConfig({ precision: "f16", plannedStep: false }, "x"),
    /planned step on webgpu only/,
  );
});

Deno.test("a JSON config file lays its options over the preset it names", async () => {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(path, JSON.stringify({ preset: "gan", batchSize: 4 }));
  const c = await loadConfig(path);
  assert.deepEqual([c.stage, c.batchSize, c.lrG], ["gan", 4, 1e-4]);
  await Deno.writeTextFile(path, "{oops");
  await assert.rejects(loadConfig(path), /not valid JSON/);
  await Deno.remove(path);
  await assert.rejects(loadConfig("no-such-preset"), /neither a preset/);
});

Deno.test("CosineAnnealingRestartLR and MultiStepLR give BasicSR's rates", () => {
  const cos = scheduleOf(PRESETS.psnr);
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-15, `${a} vs ${b}`);
  // values from BasicSR's formula (Python, float64)
  close(lrAt(cos, 2e-4, 0), 2e-4);
  close(lrAt(cos, 2e-4, 1), 0.00019999999999210826);
  close(lrAt(cos, 2e-4, 125000), 0.00010005);
  close(lrAt(cos, 2e-4, 250000), 1e-7);
  close(lrAt(cos, 2e-4, 250001), 0.00019999999999210826);
  close(lrAt(cos, 2e-4, 1000000), 1e-7);
  assert.throws(() => lrAt(cos, 2e-4, 1000001), /past the schedule/);
  const ms = scheduleOf(PRESETS.gan);
  assert.deepEqual([0, 49999, 50000, 100000, 199999, 200000, 300000, 399999].map((s) => lrAt(ms, 1e-4, s)), [
    1e-4,
    1e-4,
    5e-5,
    2.5e-5,
    2.5e-5,
    1.25e-5,
    6.25e-6,
    6.25e-6,
  ]);
});
