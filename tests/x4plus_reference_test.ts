/**
 * The x4plus port against PyTorch: Real-ESRGAN x4plus imported from ncnn (on tfjs's ops), and the
 * shipped int8 model (on our CPU kernels), run whole (untiled, zero padding) on the official x4 LR
 * images of Set5 and Set14 on the wasm backend, compared with PyTorch fp32 outputs of the same weights (RGB PSNR, 0-255, whole
 * image), and with realesrgan-ncnn-vulkan's outputs as a second opinion. Slow: a 23-block net on every
 * image, twice.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../core/backend.ts";
import { decodeImage, type RgbaImage } from "../core/image_io.ts";
import { importWeights } from "../core/import/mod.ts";
import { psnr } from "../core/metrics.ts";
import { ESRGAN_X4, RRDBNet } from "../core/rrdbnet_arch.ts";
import { RRDBNetPlanWasm } from "../core/kernels/wasm_plan.ts";
import type { StateDict } from "../core/state_dict.ts";
import { decodeModelFile, encodeModelFile } from "../core/weights/model_file.ts";
import { shippedModelPath } from "../core/weights/shipped.ts";
import { needsShared, SHARED } from "./shared.ts";

const SHIPPED = shippedModelPath("realesrgan-x4plus");

/** `[set, stem]` of every official x4 LR image of Set5 and Set14. */
const IMAGES: [string, string][] = SHARED
  ? ["Set5", "Set14"].flatMap((set) =>
    [...Deno.readDirSync(`${SHARED}/data/bench/${set}/x4`)]
      .map((e) => e.name)
      .filter((n) => n.endsWith("_LR.png"))
      .sort()
      .map((n): [string, string] => [set, n.slice(0, -"_LR.png".length)])
  )
  : [];

/** The net's RGB output (0..1, NHWC) as an opaque RGBA image: clamped, ×255, rounded. */
async function toImage(y: tf.Tensor4D): Promise<RgbaImage> {
  const [, height, width] = y.shape;
  const q = tf.tidy(() => tf.round(tf.mul(tf.clipByValue(y, 0, 1), 255)));
  const rgb = await q.data();
  q.dispose();
  const data = new Uint8ClampedArray(width * height * 4).fill(255);
  for (let i = 0; i < width * height; i++) for (let c = 0; c < 3; c++) data[4 * i + c] = rgb[3 * i + c];
  return { width, height, data };
}

/** HR pixels left out at each side when comparing with realesrgan-ncnn-vulkan (its tiles' pre-padding). */
const NCNN_BORDER = 40;

/**
 * Upscales every image with `weights` and returns PSNR per image against PyTorch (whole image) and
 * against realesrgan-ncnn-vulkan's outputs (inside a {@link NCNN_BORDER} border): with tfjs's ops
 * (XNNPACK), or with our CPU kernels (core/kernels/wasm_plan.ts, what the Upscaler runs on wasm).
 */
async function psnrPerImage(
  weights: StateDict,
  label: string,
  engine: "tfjs" | "kernels",
): Promise<{ pytorch: Map<string, number>; ncnn: Map<string, number> }> {
  await initBackend("wasm");
  const before = tf.memory().numTensors;
  const net = new RRDBNet(ESRGAN_X4, { weights });
  const plan = engine === "kernels" ? new RRDBNetPlanWasm(net) : undefined;
  const out = new Map<string, number>(), ncnn = new Map<string, number>();
  const start = performance.now();
  try {
    for (const [set, stem] of IMAGES) {
      const lrPath = `${SHARED}/data/bench/${set}/x4/${stem}_LR.png`;
      const refPath = `${SHARED}/fixtures/pytorch-x4plus/${set}/${stem}_x4plus.png`;
      const lr = await decodeImage(await Deno.readFile(lrPath), { name: lrPath });
      const ref = await decodeImage(await Deno.readFile(refPath), { name: refPath });
      assert.deepEqual([ref.width, ref.height], [lr.width * 4, lr.height * 4], `${set}/${stem}`);
      // RGB/255 in (a grey PNG decodes with R = G = B), zero padding, the whole image at once
      const rgb = new Float32Array(lr.width * lr.height * 3);
      for (let i = 0; i < lr.width * lr.height; i++) {
        for (let c = 0; c < 3; c++) rgb[3 * i + c] = lr.data[4 * i + c] / 255;
      }
      const shape: [number, number, number, number] = [1, lr.height, lr.width, 3];
      const x = tf.tensor4d(rgb, shape);
      const y = plan
        ? tf.tensor4d(await plan.run(rgb, shape), [1, 4 * lr.height, 4 * lr.width, 3])
        : net.apply(x);
      const sr = await toImage(y);
      tf.dispose([x, y]);
      out.set(`${set}/${stem}`, psnr(sr, ref, { yChannel: false, cropBorder: 0 }));
      ncnn.set(
        `${set}/${stem}`,
        psnr(sr, await ncnnOutput(set, stem), { yChannel: false, cropBorder: NCNN_BORDER }),
      );
    }
  } finally {
    plan?.dispose();
    net.dispose();
  }
  const secs = (performance.now() - start) / 1000;
  console.log(`${label}: ${IMAGES.length} images in ${secs.toFixed(0)} s (wasm, ${engine}, untiled)`);
  for (const [k, v] of out) {
    console.log(`  ${k}  ${v.toFixed(2)} dB; vs ncnn-vulkan inside ${ncnn.get(k)!.toFixed(2)} dB`);
  }
  assert.equal(tf.memory().numTensors, before, "tensors leaked");
  return { pytorch: out, ncnn };
}

async function ncnnOutput(set: string, stem: string): Promise<RgbaImage> {
  const path = `${SHARED}/fixtures/ncnn-h200/${set}/${stem}_x4plus.png`;
  return await decodeImage(await Deno.readFile(path), { name: path });
}

/**
 * A second opinion, independent of the PyTorch fixtures: realesrgan-ncnn-vulkan's outputs (fp16
 * arithmetic, tiles with replicate pre-padding) are 33-50 dB from PyTorch's inside the border, so a
 * faithful port lands above 30 dB there on every image, and a broken one far below.
 */
const NCNN_FLOOR = 30;

function assertAllAbove(psnrs: Map<string, number>, floor: number, label: string): void {
  assert.equal(psnrs.size, 19, "Set5 + Set14 are 19 images");
  const low = [...psnrs].filter(([, v]) => !(v >= floor));
  assert.deepEqual(low, [], `${label}: images under ${floor} dB`);
}

Deno.test({
  name:
    "x4plus: fp16 model file on tfjs's ops matches PyTorch at ≥ 50 dB on every Set5 and Set14 image, ncnn-vulkan at ≥ 30",
  ignore: needsShared("x4plus fp16 reference"),
  fn: async () => {
    const ncnn = await importWeights(`${SHARED}/models/realesrgan-x4plus.param`);
    const fp16 = decodeModelFile(encodeModelFile(ncnn, { dtype: "fp16" }), "fp16").stateDict;
    const result = await psnrPerImage(fp16, "x4plus fp16", "tfjs");
    assertAllAbove(result.pytorch, 50, "fp16");
    assertAllAbove(result.ncnn, NCNN_FLOOR, "fp16 vs realesrgan-ncnn-vulkan");
  },
});

Deno.test({
  name:
    "x4plus: shipped int8 model on our CPU kernels matches PyTorch at ≥ 38 dB on every Set5 and Set14 image, ncnn-vulkan at ≥ 30",
  ignore: needsShared("x4plus int8 reference"),
  fn: async () => {
    const shipped = decodeModelFile(await Deno.readFile(SHIPPED), "shipped");
    const { pytorch, ncnn } = await psnrPerImage(shipped.stateDict, "x4plus int8 (shipped)", "kernels");
    assertAllAbove(pytorch, 38, "int8");
    assertAllAbove(ncnn, NCNN_FLOOR, "int8 vs realesrgan-ncnn-vulkan");
  },
});
