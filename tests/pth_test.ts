/**
 * `.pth` import: PyTorch's own checkpoints in both formats, the BasicSR and original ESRGAN
 * layouts, and the forward pass of the imported nets against PyTorch's output on every backend.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import npyjs from "npyjs";
import { type BackendName, initBackend, probeWebGPU } from "../core/backend.ts";
import { importWeights, readPth } from "../core/import/mod.ts";
import { inferRRDBNetConfig, RRDBNet } from "../core/rrdbnet_arch.ts";
import { RRDBNetPlanWasm } from "../core/kernels/wasm_plan.ts";
import { RRDBNetPlanWebGPU } from "../core/kernels/webgpu_plan.ts";
import { decodeFloat, parseSafetensors } from "../core/weights/safetensors.ts";
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

/** tests/fixtures/esrgan_scales_ref.safetensors (make_esrgan_scales_fixture.py): input and outputs, NHWC. */
async function scalesReference(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const bytes = await Deno.readFile(new URL("fixtures/esrgan_scales_ref.safetensors", import.meta.url));
  return new Map(
    [...parseSafetensors(bytes, "esrgan_scales_ref").tensors].map((
      [k, t],
    ) => [k, { shape: t.shape, data: decodeFloat(t) }]),
  );
}

Deno.test("original ESRGAN layout at x1, x2 and x8 (0, 1, 3 upsamplings): PyTorch's output on cpu, our CPU kernels and webgpu plans", async (t) => {
  const ref = await scalesReference();
  const input = ref.get("input")!;
  for (const scale of [1, 2, 8] as const) {
    const sd = await importWeights(new URL(`fixtures/esrgan_x${scale}.pth`, import.meta.url).pathname);
    const config = inferRRDBNetConfig(sd);
    assert.deepEqual(config, {
      numInCh: 3,
      numOutCh: 3,
      scale,
      numFeat: 8,
      numBlock: 2,
      numGrowCh: 4,
      numUpsample: Math.log2(scale),
    });
    const expected = ref.get(`out_x${scale}`)!;
    const [n, h, w] = input.shape;
    const outShape = [n, h * scale, w * scale, 3];
    assert.deepEqual(expected.shape, outShape);
    const engines: [string, BackendName, (net: RRDBNet, x: tf.Tensor4D) => Promise<Float32Array>][] = [
      ["tfjs cpu ops", "cpu", async (net, x) => (await net.apply(x).data()) as Float32Array],
      ["our CPU kernels", "wasm", (net) => {
        const plan = new RRDBNetPlanWasm(net, { threads: 2 });
        return plan.run(input.data, input.shape).finally(() => plan.dispose());
      }],
      ["our webgpu plan", "webgpu", async (net, x) => {
        const plan = new RRDBNetPlanWebGPU(net, x.shape);
        try {
          return (await plan.run(x).data()) as Float32Array;
        } finally {
          plan.dispose();
        }
      }],
    ];
    for (const [label, backend, run] of engines) {
      await t.step({
        name: `x${scale}, ${label}`,
        ignore: backend === "webgpu" && !webgpu.adapter,
        fn: async () => {
          await initBackend(backend);
          const net = new RRDBNet(config, { weights: sd });
          const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
          const got = await run(net, x);
          x.dispose();
          net.dispose();
          let maxErr = 0;
          for (let i = 0; i < got.length; i++) maxErr = Math.max(maxErr, Math.abs(got[i] - expected.data[i]));
          assert.equal(got.length, expected.data.length);
          assert.ok(maxErr < 1e-4, `max abs error ${maxErr}`);
        },
      });
    }
  }
  // more than 3 upsamplings is no layout this importer knows
  const sd = await importWeights(new URL("fixtures/esrgan_x8.pth", import.meta.url).pathname);
  assert.throws(
    () => new RRDBNet({ ...inferRRDBNetConfig(sd), scale: 1 }),
    /scale 1 does not go with 3 upsamplings/,
  );
  // and an x8 net's weights do not go into an x4 net, losing conv_up3 on the way (PyTorch's strict load)
  const { numUpsample: _, ...x4 } = { ...inferRRDBNetConfig(sd), scale: 4 as const };
  assert.throws(
    () => new RRDBNet(x4, { weights: sd }),
    /the weights have conv_up3\.weight, conv_up3\.bias, which this net \(x4, 2 blocks, 2 upsamplings\) has not/,
  );
});

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
