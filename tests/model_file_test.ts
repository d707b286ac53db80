/**
 * The model file format: round trips at each precision, the int8 fp16-layer exceptions, reading
 * model files and plain BasicSR safetensors through `importWeights`, and the shipped model file.
 */
import assert from "node:assert/strict";
import { importWeights } from "../core/import/mod.ts";
import { ESRGAN_X4, type RRDBNetConfig, rrdbnetShapes } from "../core/rrdbnet_arch.ts";
import type { StateDict } from "../core/state_dict.ts";
import {
  decodeModelFile,
  DEFAULT_FP16_LAYERS,
  encodeModelFile,
  type LazyTensorData,
} from "../core/weights/model_file.ts";
import {
  decodeFloat,
  decodeFloatInto,
  encodeFloat,
  parseSafetensors,
  serializeSafetensors,
} from "../core/weights/safetensors.ts";

const CONFIG: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 2, numFeat: 8, numBlock: 2, numGrowCh: 4 };

/** Weights spread over several magnitudes, with an all-zero channel and a lone outlier. */
function weights(config: RRDBNetConfig): StateDict {
  const sd: StateDict = new Map();
  let seed = 7;
  const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5;
  for (const [k, shape] of rrdbnetShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({ length: n }, () => rand() * 10 ** (rand() * 4 - 2));
    if (shape.length === 4) {
      data.fill(0, 0, n / shape[0]); // channel 0 all zero
      data[n - 1] = 3.5; // an outlier in the last channel
    }
    sd.set(k, { shape, data });
  }
  return sd;
}

const SD = weights(CONFIG);

Deno.test("fp32 model files round-trip exactly, with the architecture and metadata", () => {
  const bytes = encodeModelFile(SD, { dtype: "fp32", metadata: { source: "test" } });
  const file = decodeModelFile(bytes, "t.safetensors");
  assert.deepEqual(file.config, CONFIG);
  assert.equal(file.dtype, "fp32");
  assert.equal(file.metadata.source, "test");
  assert.deepEqual([...file.stateDict.keys()], [...SD.keys()]);
  for (const [k, t] of SD) assert.deepEqual(file.stateDict.get(k), t, k);
});

Deno.test("fp16 model files hold each value rounded to the nearest fp16", () => {
  const file = decodeModelFile(encodeModelFile(SD, { dtype: "fp16" }), "t.safetensors");
  for (const [k, t] of SD) {
    const got = file.stateDict.get(k)!.data;
    for (let i = 0; i < t.data.length; i++) {
      const v = t.data[i];
      // fp16 keeps 11 significant bits: relative error ≤ 2^-11, or 2^-25 absolute below the normals
      const tol = Math.max(Math.abs(v) * 2 ** -11, 2 ** -25);
      assert.ok(Math.abs(got[i] - v) <= tol, `${k}[${i}]: ${got[i]} vs ${v}`);
    }
  }
});

Deno.test("int8 model files stay within half a step of each channel's scale", () => {
  const bytes = encodeModelFile(SD, { dtype: "int8" });
  const raw = parseSafetensors(bytes).tensors;
  const file = decodeModelFile(bytes, "t.safetensors");
  assert.equal(file.dtype, "int8");
  for (const [k, t] of SD) {
    const got = file.stateDict.get(k)!.data;
    const layer = k.replace(/\.(weight|bias)$/, "");
    if (t.shape.length === 1) {
      assert.equal(raw.get(k)!.dtype, "F32", `${k}: biases stay fp32`);
      assert.deepEqual(got, t.data, k);
    } else if (DEFAULT_FP16_LAYERS.includes(layer)) {
      assert.equal(raw.get(k)!.dtype, "F16", `${k}: default fp16 layer`);
    } else {
      assert.equal(raw.get(k)!.dtype, "I8", k);
      const per = t.data.length / t.shape[0];
      for (let c = 0; c < t.shape[0]; c++) {
        let max = 0;
        for (let i = c * per; i < (c + 1) * per; i++) max = Math.max(max, Math.abs(t.data[i]));
        const half = max / 127 / 2;
        for (let i = c * per; i < (c + 1) * per; i++) {
          // plus float32 rounding of the scale and of the dequantised product
          const tol = half + Math.abs(t.data[i]) * 2 ** -22;
          assert.ok(Math.abs(got[i] - t.data[i]) <= tol, `${k}[${i}]: ${got[i]} vs ${t.data[i]}`);
        }
      }
    }
  }
});

Deno.test("int8 fp16Layers keeps the named layers in fp16 and nothing else", () => {
  const bytes = encodeModelFile(SD, { dtype: "int8", fp16Layers: ["body.1", "conv_hr"] });
  const { tensors, metadata } = parseSafetensors(bytes);
  assert.equal(metadata.fp16_layers, "body.1,conv_hr");
  for (const [k, t] of tensors) {
    if (k.endsWith(".scale") || t.shape.length === 1) continue;
    const fp16 = k.startsWith("body.1.") || k.startsWith("conv_hr.");
    assert.equal(t.dtype, fp16 ? "F16" : "I8", k);
  }
});

Deno.test("lazy decoding: each read decodes the tensor anew, to the eager values, at every precision", () => {
  for (const dtype of ["fp32", "fp16", "int8"] as const) {
    const bytes = encodeModelFile(SD, { dtype });
    const eager = decodeModelFile(bytes);
    const lazy = decodeModelFile(bytes, "lazy", { lazy: true });
    assert.deepEqual(lazy.config, eager.config);
    assert.deepEqual([...lazy.stateDict.keys()], [...eager.stateDict.keys()]);
    for (const [k, t] of eager.stateDict) {
      const l = lazy.stateDict.get(k)!;
      assert.deepEqual(l.shape, t.shape);
      const first = l.data;
      assert.deepEqual(first, t.data, `${dtype} ${k}`);
      assert.notEqual(l.data, first, "a new array per read: nothing is kept");
      const into = new Float32Array(first.length).fill(NaN);
      (l as LazyTensorData).decodeInto(into);
      assert.deepEqual(into, t.data, `${dtype} ${k} decoded into an array`);
    }
  }
  // what a lazy read could trip on is refused when the file is read
  const { tensors, metadata } = parseSafetensors(encodeModelFile(SD, { dtype: "int8" }));
  const scale = tensors.get("body.0.rdb1.conv1.weight.scale")!;
  tensors.set("body.0.rdb1.conv1.weight.scale", {
    ...scale,
    shape: [scale.shape[0] - 1],
    bytes: scale.bytes.subarray(4),
  });
  assert.throws(
    () => decodeModelFile(serializeSafetensors({ tensors, metadata }), "bad", { lazy: true }),
    /bad: body\.0\.rdb1\.conv1\.weight\.scale must be 4 floats, one per output channel/,
  );
});

Deno.test("decodeFloatInto: F32 and F16 (aligned or not) into a given array; other types refused", () => {
  const values = Float32Array.from([0.5, -2, 1e-3, 65504, 3.25]);
  for (const dtype of ["F32", "F16"] as const) {
    const bytes = encodeFloat(values, dtype);
    for (const shift of [0, 1]) {
      // a tensor at an odd offset of its file, as a writer without padding may leave it
      const file = new Uint8Array(bytes.length + shift);
      file.set(bytes, shift);
      const t = { dtype, shape: [5], bytes: file.subarray(shift) };
      const out = new Float32Array(5);
      decodeFloatInto(t, out);
      assert.deepEqual(out, decodeFloat({ dtype, shape: [5], bytes }), `${dtype} at offset ${shift}`);
      assert.ok(Math.abs(out[2] - 1e-3) < (dtype === "F16" ? 1e-6 : 1e-10));
    }
    assert.throws(() => decodeFloatInto({ dtype, shape: [5], bytes }, new Float32Array(4)), /4 floats for 5/);
  }
  assert.throws(
    () => decodeFloat({ dtype: "I8", shape: [2], bytes: new Uint8Array(2) }),
    /cannot decode I8 as float/,
  );
});

Deno.test("importWeights reads model files and plain BasicSR safetensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ours = `${dir}/ours.safetensors`;
    await Deno.writeFile(ours, encodeModelFile(SD, { dtype: "fp32" }));
    const back = await importWeights(ours);
    for (const [k, t] of SD) assert.deepEqual(back.get(k)!.data, t.data, k);
    // a plain safetensors as BasicSR users export it: EMA weights under DataParallel's prefix
    const tensors = new Map(
      [...SD].map(([k, t]) => [`params_ema.module.${k}`, {
        dtype: "F32" as const,
        shape: t.shape,
        bytes: encodeFloat(t.data, "F32"),
      }]),
    );
    const plain = `${dir}/plain.safetensors`;
    await Deno.writeFile(plain, serializeSafetensors({ tensors, metadata: {} }));
    const fromPlain = await importWeights(plain);
    assert.deepEqual([...fromPlain.keys()], [...SD.keys()]);
    for (const [k, t] of SD) assert.deepEqual(fromPlain.get(k)!.data, t.data, k);
    // a missing tensor is named in the error
    tensors.delete("params_ema.module.conv_hr.bias");
    await Deno.writeFile(plain, serializeSafetensors({ tensors, metadata: {} }));
    await assert.rejects(() => importWeights(plain), /plain\.safetensors: .*conv_hr\.bias/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const SHIPPED = new URL("../weights/realesrgan-x4plus.int8.safetensors", import.meta.url);

Deno.test("the shipped model is Real-ESRGAN x4plus in int8 with its licence", async () => {
  const bytes = await Deno.readFile(SHIPPED);
  assert.ok(bytes.byteLength > 16e6 && bytes.byteLength < 30e6, `size ${bytes.byteLength}`);
  const file = decodeModelFile(bytes, "shipped");
  assert.deepEqual(file.config, ESRGAN_X4);
  assert.equal(file.dtype, "int8");
  assert.match(file.metadata.license ?? "", /BSD-3-Clause/);
  assert.match(file.metadata.license ?? "", /Xintao Wang/);
});
