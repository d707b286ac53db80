/**
 * `.pth` import: PyTorch's own checkpoints in both formats, the BasicSR and original ESRGAN
 * layouts, and the forward pass of the imported nets against PyTorch's output on every backend.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import npyjs from "npyjs";
import { type BackendName, initBackend, probeWebGPU } from "../core/backend.ts";
import { importWeights, readPth } from "../core/import/mod.ts";
import { toBasicSR } from "../core/import/esrgan_keys.ts";
import { inferRRDBNetConfig, RRDBNet } from "../core/rrdbnet_arch.ts";
import { RRDBNetPlanWasm } from "../core/kernels/wasm_plan.ts";
import type { StateDict } from "../core/state_dict.ts";
import { needsShared, SHARED } from "./shared.ts";

/*
 * The two checkpoints below were made with:
 *   base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8
 *   sd = OrderedDict(half=torch.tensor([0.5, -1.25, 3.0, 65504.0, 1e-7], dtype=torch.float16),
 *                    view=base.view(-1)[5:11].view(2, 3), t=base.t(),
 *                    nested={"a": [torch.ones(2, dtype=torch.float64)], "step": 7, "name": "x"},
 *                    bf16=torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
 *   torch.save(sd, f)  # and torch.save(sd, f, _use_new_zipfile_serialization=False)
 */
const SMALL_ZIP_B64 =
  "UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAQABIAYXJjaGl2ZS9kYXRhLnBrbEZCDgBaWlpaWlpaWlpaWlpaWoACY2NvbGxlY3Rp" +
  "b25zCk9yZGVyZWREaWN0CnEAKVJxAShYBAAAAGhhbGZxAmN0b3JjaC5fdXRpbHMKX3JlYnVpbGRfdGVuc29yX3YyCnEDKChYBwAA" +
  "AHN0b3JhZ2VxBGN0b3JjaApIYWxmU3RvcmFnZQpxBVgBAAAAMHEGWAMAAABjcHVxB0sFdHEIUUsASwWFcQlLAYVxColoAClScQt0" +
  "cQxScQ1YBAAAAHZpZXdxDmgDKChoBGN0b3JjaApGbG9hdFN0b3JhZ2UKcQ9YAQAAADFxEGgHSxh0cRFRSwVLAksDhnESSwNLAYZx" +
  "E4loAClScRR0cRVScRZYAQAAAHRxF2gDKChoBGgPaBBoB0sYdHEYUUsASwZLBIZxGUsBSwaGcRqJaAApUnEbdHEcUnEdWAYAAABu" +
  "ZXN0ZWRxHn1xHyhYAQAAAGFxIF1xIWgDKChoBGN0b3JjaApEb3VibGVTdG9yYWdlCnEiWAEAAAAycSNoB0sCdHEkUUsASwKFcSVL" +
  "AYVxJoloAClScSd0cShScSlhWAQAAABzdGVwcSpLB1gEAAAAbmFtZXErWAEAAAB4cSx1WAQAAABiZjE2cS1oAygoaARjdG9yY2gK" +
  "QkZsb2F0MTZTdG9yYWdlCnEuWAEAAAAzcS9oB0sCdHEwUUsASwKFcTFLAYVxMoloAClScTN0cTRScTV1LlBLBwhTpDJwCgIAAAoC" +
  "AABQSwMEAAAICAAAAAAAAAAAAAAAAAAAAAAAAA4AOgBhcmNoaXZlL2RhdGEvMEZCNgBaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpa" +
  "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWloAOAC9AEL/ewIAUEsHCDfMZaEKAAAACgAAAFBLAwQAAAgIAAAAAAAAAAAAAAAA" +
  "AAAAAAAADgA6AGFyY2hpdmUvZGF0YS8xRkI2AFpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpa" +
  "WlpaWlpaWgAAAAAAAAA+AACAPgAAwD4AAAA/AAAgPwAAQD8AAGA/AACAPwAAkD8AAKA/AACwPwAAwD8AANA/AADgPwAA8D8AAABA" +
  "AAAIQAAAEEAAABhAAAAgQAAAKEAAADBAAAA4QFBLBwhHPeIiYAAAAGAAAABQSwMEAAAICAAAAAAAAAAAAAAAAAAAAAAAAA4AJABh" +
  "cmNoaXZlL2RhdGEvMkZCIABaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWgAAAAAAAPA/AAAAAAAA8D9QSwcITwSlrxAA" +
  "AAAQAAAAUEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAOADQAYXJjaGl2ZS9kYXRhLzNGQjAAWlpaWlpaWlpaWlpaWlpaWlpaWlpa" +
  "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpawD8AwFBLBwgHUVrjBAAAAAQAAABQSwMEAAAICAAAAAAAAAAAAAAAAAAAAAAAAA8A" +
  "PwBhcmNoaXZlL3ZlcnNpb25GQjsAWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpa" +
  "WlpaWlozClBLBwjRnmdVAgAAAAIAAABQSwECAAAAAAgIAAAAAAAAU6QycAoCAAAKAgAAEAAAAAAAAAAAAAAAAAAAAAAAYXJjaGl2" +
  "ZS9kYXRhLnBrbFBLAQIAAAAACAgAAAAAAAA3zGWhCgAAAAoAAAAOAAAAAAAAAAAAAAAAAFoCAABhcmNoaXZlL2RhdGEvMFBLAQIA" +
  "AAAACAgAAAAAAABHPeIiYAAAAGAAAAAOAAAAAAAAAAAAAAAAANoCAABhcmNoaXZlL2RhdGEvMVBLAQIAAAAACAgAAAAAAABPBKWv" +
  "EAAAABAAAAAOAAAAAAAAAAAAAAAAALADAABhcmNoaXZlL2RhdGEvMlBLAQIAAAAACAgAAAAAAAAHUVrjBAAAAAQAAAAOAAAAAAAA" +
  "AAAAAAAAACAEAABhcmNoaXZlL2RhdGEvM1BLAQIAAAAACAgAAAAAAADRnmdVAgAAAAIAAAAPAAAAAAAAAAAAAAAAAJQEAABhcmNo" +
  "aXZlL3ZlcnNpb25QSwYGLAAAAAAAAAAeAy0AAAAAAAAAAAAGAAAAAAAAAAYAAAAAAAAAawEAAAAAAAASBQAAAAAAAFBLBgcAAAAA" +
  "fQYAAAAAAAABAAAAUEsFBgAAAAAGAAYAawEAABIFAAAAAA==";
const SMALL_LEGACY_B64 =
  "gAKKCmz8nEb5IGqoUBkugAJN6QMugAJ9cQAoWBAAAABwcm90b2NvbF92ZXJzaW9ucQFN6QNYDQAAAGxpdHRsZV9lbmRpYW5xAohY" +
  "CgAAAHR5cGVfc2l6ZXNxA31xBChYBQAAAHNob3J0cQVLAlgDAAAAaW50cQZLBFgEAAAAbG9uZ3EHSwR1dS6AAmNjb2xsZWN0aW9u" +
  "cwpPcmRlcmVkRGljdApxAClScQEoWAQAAABoYWxmcQJjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3RlbnNvcl92MgpxAygoWAcAAABz" +
  "dG9yYWdlcQRjdG9yY2gKSGFsZlN0b3JhZ2UKcQVYCQAAADkyOTIwNTEyMHEGWAMAAABjcHVxB0sFTnRxCFFLAEsFhXEJSwGFcQqJ" +
  "aAApUnELdHEMUnENWAQAAAB2aWV3cQ5oAygoaARjdG9yY2gKRmxvYXRTdG9yYWdlCnEPWAkAAAA5Mjk2ODE5MDRxEGgHSxhOdHER" +
  "UUsFSwJLA4ZxEksDSwGGcROJaAApUnEUdHEVUnEWWAEAAAB0cRdoAygoaARoD1gJAAAAOTI5NjgxOTA0cRhoB0sYTnRxGVFLAEsG" +
  "SwSGcRpLAUsGhnEbiWgAKVJxHHRxHVJxHlgGAAAAbmVzdGVkcR99cSAoWAEAAABhcSFdcSJoAygoaARjdG9yY2gKRG91YmxlU3Rv" +
  "cmFnZQpxI1gJAAAAOTI5MjE0MzM2cSRoB0sCTnRxJVFLAEsChXEmSwGFcSeJaAApUnEodHEpUnEqYVgEAAAAc3RlcHErSwdYBAAA" +
  "AG5hbWVxLFgBAAAAeHEtdVgEAAAAYmYxNnEuaAMoKGgEY3RvcmNoCkJGbG9hdDE2U3RvcmFnZQpxL1gJAAAAOTI5NjgxMjMycTBo" +
  "B0sCTnRxMVFLAEsChXEySwGFcTOJaAApUnE0dHE1UnE2dS6AAl1xAChYCQAAADkyOTIwNTEyMHEBWAkAAAA5MjkyMTQzMzZxAlgJ" +
  "AAAAOTI5NjgxMjMycQNYCQAAADkyOTY4MTkwNHEEZS4FAAAAAAAAAAA4AL0AQv97AgACAAAAAAAAAAAAAAAAAPA/AAAAAAAA8D8C" +
  "AAAAAAAAAMA/AMAYAAAAAAAAAAAAAAAAAAA+AACAPgAAwD4AAAA/AAAgPwAAQD8AAGA/AACAPwAAkD8AAKA/AACwPwAAwD8AANA/" +
  "AADgPwAA8D8AAABAAAAIQAAAEEAAABhAAAAgQAAAKEAAADBAAAA4QA==";

const bytesOf = (b64: string) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));

const BASE = Array.from({ length: 24 }, (_, i) => i / 8);
const EXPECTED: Record<string, { shape: number[]; data: number[] }> = {
  half: { shape: [5], data: [0.5, -1.25, 3, 65504, 1.1920928955078125e-7] },
  view: { shape: [2, 3], data: BASE.slice(5, 11) },
  t: { shape: [6, 4], data: Array.from({ length: 24 }, (_, i) => BASE[(i % 4) * 6 + Math.floor(i / 4)]) },
  "nested.a.0": { shape: [2], data: [1, 1] },
  bf16: { shape: [2], data: [1.5, -2] },
};

for (const [format, b64] of [["zip", SMALL_ZIP_B64], ["legacy", SMALL_LEGACY_B64]]) {
  Deno.test(`readPth (${format}): dtypes, storage offsets, strides and nesting`, async () => {
    const sd = await readPth(bytesOf(b64), `small.${format}.pth`);
    assert.deepEqual([...sd.keys()], Object.keys(EXPECTED));
    for (const [k, e] of Object.entries(EXPECTED)) {
      assert.deepEqual(sd.get(k)!.shape, e.shape, k);
      assert.deepEqual(Array.from(sd.get(k)!.data), e.data, k);
    }
  });

  Deno.test(`readPth (${format}): truncated files fail with the file's name`, async () => {
    const bytes = bytesOf(b64);
    for (const cut of [bytes.length - 5, Math.floor(bytes.length / 2), 40]) {
      await assert.rejects(() => readPth(bytes.subarray(0, cut), "cut.pth"), /^Error: cut\.pth: /);
    }
  });
}

Deno.test("original ESRGAN layout with other than 2 upsampling convs: refused, naming the scale", () => {
  const t = { shape: [1], data: new Float32Array(1) };
  for (const [ups, scale] of [[1, 2], [3, 8]]) {
    // model.0, the trunk (model.1.sub.N), then per upsampling: nearest, conv, LeakyReLU; HR conv, last conv
    const tops = Array.from({ length: ups }, (_, i) => 3 + 3 * i).concat([2 + 3 * ups, 4 + 3 * ups]);
    const keys = ["model.0", "model.1.sub.0.RDB1.conv1.0", "model.1.sub.1", ...tops.map((i) => `model.${i}`)];
    const sd: StateDict = new Map(keys.flatMap((k) => [[`${k}.weight`, t], [`${k}.bias`, t]]));
    assert.throws(
      () => toBasicSR(sd, "2x_model.pth"),
      new RegExp(`^Error: 2x_model\\.pth: an ESRGAN-layout x${scale} model \\(${ups} upsampling convs: `),
    );
  }
});

Deno.test("readPth: bytes that are no checkpoint are refused", async () => {
  await assert.rejects(
    () => readPth(new TextEncoder().encode("hello world, no pickle"), "x.pth"),
    /x\.pth: not a/,
  );
});

interface FixtureNet {
  scale: number;
  num_feat: number;
  num_block: number;
  num_grow_ch: number;
  input_shape: number[];
  output_shape: number[];
}

const FIXTURES = SHARED ? `${SHARED}/fixtures/pytorch` : "";
const NETS: Record<string, FixtureNet> = SHARED
  ? JSON.parse(Deno.readTextFileSync(`${FIXTURES}/fixtures.json`))
  : {};

function readNpy(path: string): { shape: number[]; data: Float32Array } {
  const bytes = Deno.readFileSync(path);
  const { shape, data } = new npyjs().parse(bytes.buffer);
  assert.ok(data instanceof Float32Array, `${path}: expected float32`);
  return { shape, data };
}

function assertSameWeights(a: StateDict, b: StateDict): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [k, t] of a) {
    assert.deepEqual(b.get(k)!.shape, t.shape, k);
    assert.ok(t.data.every((v, i) => Object.is(v, b.get(k)!.data[i])), `${k}: values differ`);
  }
}

const webgpu = await probeWebGPU().catch(() => ({ adapter: undefined }));
if (!webgpu.adapter) console.warn("pth_test: no WebGPU adapter here; the webgpu forward pass is skipped");

Deno.test({
  name: "fixture nets: BasicSR zip and ESRGAN legacy checkpoints import to identical weights",
  ignore: needsShared("fixture .pth import"),
  fn: async () => {
    assert.ok(Object.keys(NETS).length >= 3);
    for (const [net, spec] of Object.entries(NETS)) {
      const basicsr = await importWeights(`${FIXTURES}/${net}.basicsr.pth`);
      const legacy = await importWeights(`${FIXTURES}/${net}.esrgan-legacy.pth`);
      assertSameWeights(basicsr, legacy);
      assert.deepEqual(inferRRDBNetConfig(basicsr), {
        numInCh: 3,
        numOutCh: 3,
        scale: spec.scale,
        numFeat: spec.num_feat,
        numBlock: spec.num_block,
        numGrowCh: spec.num_grow_ch,
      });
    }
  },
});

Deno.test({
  name: "fixture nets: forward pass matches PyTorch within 1e-4 on cpu, wasm, our CPU kernels and webgpu",
  ignore: needsShared("fixture forward pass"),
  fn: async (t) => {
    const backends: (BackendName | "wasm-kernels")[] = ["cpu", "wasm", "wasm-kernels", "webgpu"];
    for (const backend of backends) {
      await t.step({
        name: backend,
        ignore: backend === "webgpu" && !webgpu.adapter,
        fn: async () => {
          await initBackend(backend === "wasm-kernels" ? "wasm" : backend);
          for (const net of Object.keys(NETS)) {
            const sd = await importWeights(`${FIXTURES}/${net}.esrgan-legacy.pth`);
            const input = readNpy(`${FIXTURES}/${net}.input.npy`);
            const expected = readNpy(`${FIXTURES}/${net}.output.npy`);
            const before = tf.memory().numTensors;
            const model = new RRDBNet(inferRRDBNetConfig(sd), { weights: sd });
            const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
            let y: tf.Tensor;
            if (backend === "wasm-kernels") {
              // our CPU kernels (core/kernels/wasm_plan.ts), as the Upscaler runs them on wasm
              const plan = new RRDBNetPlanWasm(model, { threads: 2 });
              const [n, h, w] = x.shape, s = model.config.scale;
              y = tf.tensor4d(await plan.run(input.data as Float32Array, x.shape), [n, h * s, w * s, 3]);
              plan.dispose();
            } else {
              y = model.apply(x);
            }
            assert.deepEqual(y.shape, expected.shape, `${net} on ${backend}`);
            const got = await y.data();
            let maxErr = 0;
            for (let i = 0; i < got.length; i++) {
              maxErr = Math.max(maxErr, Math.abs(got[i] - expected.data[i]));
            }
            tf.dispose([x, y]);
            model.dispose();
            assert.equal(tf.memory().numTensors, before, `${net} on ${backend}: tensors leaked`);
            console.log(`${net} on ${backend}: max abs error ${maxErr.toExponential(2)}`);
            assert.ok(maxErr < 1e-4, `${net} on ${backend}: max abs error ${maxErr}`);
          }
        },
      });
    }
  },
});
