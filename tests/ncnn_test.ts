/**
 * ncnn import: Real-ESRGAN's shipped models give the published architectures, and a small
 * ncnn model written here (fp16 and fp32 weight records) reads back exactly; broken pairs fail.
 */
import assert from "node:assert/strict";
import { importWeights, parseNcnnParam, readNcnn } from "../core/import/mod.ts";
import { ESRGAN_X4, inferRRDBNetConfig, type RRDBNetConfig, rrdbnetShapes } from "../core/rrdbnet_arch.ts";
import type { StateDict } from "../core/state_dict.ts";
import { needsShared, SHARED } from "./shared.ts";

Deno.test({
  name: "realesrgan-x4plus (ncnn) imports as RRDBNet x4, 23 blocks, nf 64, gc 32",
  ignore: needsShared("ncnn x4plus import"),
  fn: async () => {
    const sd = await importWeights(`${SHARED}/models/realesrgan-x4plus.param`);
    assert.deepEqual(inferRRDBNetConfig(sd), ESRGAN_X4);
    assert.equal(sd.size, 702);
    // ncnn stores the weights as fp16: each value must survive a round trip through fp16
    const w = sd.get("body.22.rdb3.conv5.weight")!.data;
    assert.ok(w.some((v) => v !== 0));
    assert.deepEqual(Float32Array.from(new Float16Array(w)), w);
    // the same pair reached through its .bin
    const viaBin = await importWeights(`${SHARED}/models/realesrgan-x4plus.bin`);
    assert.deepEqual(viaBin.get("conv_last.bias")!.data, sd.get("conv_last.bias")!.data);
  },
});

Deno.test({
  name: "realesrgan-x4plus-anime (ncnn) imports with 6 blocks",
  ignore: needsShared("ncnn anime import"),
  fn: async () => {
    const sd = await importWeights(`${SHARED}/models/realesrgan-x4plus-anime.param`);
    assert.deepEqual(inferRRDBNetConfig(sd), { ...ESRGAN_X4, numBlock: 6 });
  },
});

const SMALL: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 2, numGrowCh: 4 };

/** Random weights for `config` (values that fp16 holds exactly where `fp16` is set). */
function randomWeights(config: RRDBNetConfig): StateDict {
  const sd: StateDict = new Map();
  let seed = 1;
  const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5) * 0.2;
  for (const [k, shape] of rrdbnetShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    sd.set(k, { shape, data: Float32Array.from(new Float16Array(Array.from({ length: n }, rand))) });
  }
  return sd;
}

/**
 * Writes an RRDBNet as ncnn would: the convs in forward order with their activations, weight
 * records tagged fp16 (0x01306B47) or fp32 (0) in turn, fp32 biases without a tag.
 */
function writeNcnn(sd: StateDict, config: RRDBNetConfig): { param: string; bin: Uint8Array } {
  const lines: string[] = [];
  const chunks: Uint8Array[] = [];
  let blob = "data";
  lines.push(`Input in 0 1 data 0=0`);
  let i = 0;
  for (const [k, t] of sd) {
    if (!k.endsWith(".weight")) continue;
    const conv = k.slice(0, -7);
    const [out, , kh, kw] = t.shape;
    const leaky = /conv[1-4]$/.test(conv) || /conv_(up1|up2|hr)$/.test(conv);
    const act = leaky ? " 9=2 -23310=1,2.000000e-01" : "";
    lines.push(
      `Convolution conv${i} 1 1 ${blob} b${i} 0=${out} 1=${kw} 11=${kh} 4=1 5=1 6=${t.data.length}${act}`,
    );
    blob = `b${i}`;
    const fp16 = i % 2 === 0;
    const tag = new Uint8Array(4);
    new DataView(tag.buffer).setUint32(0, fp16 ? 0x01306b47 : 0, true);
    chunks.push(tag);
    if (fp16) {
      const half = new Uint8Array(Float16Array.from(t.data).buffer);
      chunks.push(half, new Uint8Array((4 - (half.length % 4)) % 4));
    } else {
      chunks.push(new Uint8Array(t.data.slice().buffer));
    }
    chunks.push(new Uint8Array(sd.get(`${conv}.bias`)!.data.slice().buffer));
    i++;
  }
  assert.equal(i, 6 + 15 * config.numBlock);
  const param = `7767517\n${lines.length} ${lines.length + 1}\n${lines.join("\n")}\n`;
  const bin = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    bin.set(c, at);
    at += c.length;
  }
  return { param, bin };
}

Deno.test("readNcnn reads fp16 and fp32 weight records back exactly", () => {
  const sd = randomWeights(SMALL);
  const { param, bin } = writeNcnn(sd, SMALL);
  const got = readNcnn(param, bin, "small");
  assert.deepEqual(inferRRDBNetConfig(got), SMALL);
  assert.deepEqual([...got.keys()], [...sd.keys()]);
  for (const [k, t] of sd) {
    assert.deepEqual(got.get(k)!.shape, t.shape, k);
    assert.deepEqual(got.get(k)!.data, t.data, k);
  }
});

Deno.test("readNcnn refuses truncated, oversized and mismatched pairs", () => {
  const { param, bin } = writeNcnn(randomWeights(SMALL), SMALL);
  assert.throws(() => readNcnn(param, bin.subarray(0, bin.length - 8), "small"), /small\.bin: truncated/);
  const padded = new Uint8Array(bin.length + 4);
  padded.set(bin);
  assert.throws(() => readNcnn(param, padded, "small"), /small\.bin: 4 bytes left over/);
  // a weight count that disagrees with the .bin
  const wrongCount = param.replace(/6=(\d+)/, (_, n) => `6=${Number(n) + 3 * 9}`);
  assert.throws(() => readNcnn(wrongCount, bin, "small"), /small/);
  // one conv missing: no longer 1 + 15·blocks + 5
  const lines = param.trim().split("\n");
  const dropped = ["7767517", `${lines.length - 3} 0`, ...lines.slice(2, -1)].join("\n");
  assert.throws(() => readNcnn(dropped, bin, "small"), /do not form an RRDBNet/);
  // activations out of place: not an RRDBNet graph
  const noAct = param.replace(" 9=2 -23310=1,2.000000e-01", "");
  assert.throws(() => readNcnn(noAct, bin, "small"), /LeakyReLU/);
  assert.throws(() => parseNcnnParam("7767518\n1 1\n", "bad.param"), /bad\.param: not a text ncnn/);
  assert.throws(() => parseNcnnParam(param.split("\n").slice(0, 6).join("\n"), "cut.param"), /truncated/);
});
