/**
 * Prepared passes (core/kernels/webgpu_pass.ts): recording a range of dispatches, and timing them on
 * the GPU's clock (timestamp queries at the ends of the compute pass), which the bench's profiles
 * and bench/kernel_sweep.ts rely on.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import assert from "node:assert/strict";
import { conv3x3Program } from "../core/kernels/webgpu_conv3x3.ts";
import {
  PassArena,
  type PassBackend,
  PlannedPass,
  ReadBack,
  setFirstSubmit,
} from "../core/kernels/webgpu_pass.ts";
import { setUpWebGPU } from "./webgpu_setup.ts";

const { opts, gpuErrors } = await setUpWebGPU("webgpu pass tests");
const backend = () => tf.backend() as unknown as PassBackend;

/** A pass of `reps` copies of one 3x3 convolution (16 -> 16 channels on 1x16x16) labelled "conv", then one "other". */
function convPass(reps: number): PlannedPass {
  const pass = new PlannedPass(backend());
  const spec = { n: 1, h: 16, w: 16, c0: 16, x0Stride: 16, cout: 16 };
  const x = { buffer: pass.buffer(16 * 16 * 16 * 4) }, w = { buffer: pass.buffer(9 * 16 * 16 * 4) };
  const out = { buffer: pass.buffer(16 * 16 * 16 * 4) };
  for (let r = 0; r < reps; r++) pass.add(conv3x3Program(spec), out, [x, w], "conv");
  pass.add(conv3x3Program({ ...spec, cout: 8 }), out, [x, w], "other");
  return pass;
}

Deno.test(
  "pass timing: the GPU clock grows with the dispatches timed; the profile names its clock",
  opts,
  async () => {
    const gpu = backend().device.features.has("timestamp-query");
    if (!gpu) console.warn("pass timing: this device has no timestamp-query; timing submit to completion");
    const pass = convPass(8);
    try {
      const median = async (to: number) => {
        const t: number[] = [];
        for (let r = 0; r < 5; r++) t.push(await pass.time({ to }, gpu));
        return t.sort((a, b) => a - b)[2];
      };
      await median(1); // pipelines warm up
      const one = await median(1), eight = await median(8);
      assert.ok(one > 0, `one dispatch: ${one} ms`);
      // eight times the work in one pass: well over twice the time of one (launch costs aside)
      assert.ok(eight > 2 * one, `8 dispatches ${eight} ms vs 1: ${one} ms`);
      const profile = await pass.profile(3);
      assert.equal(profile.clock, gpu ? "gpu" : "wall");
      assert.deepEqual(profile.kernels.map((k) => [k.name, k.count]).sort(), [["conv", 8], ["other", 1]]);
      // the whole pass (9 dispatches) against one: timings on a loaded machine vary, the order does not
      assert.ok(profile.all_ms > 2 * one, `all ${profile.all_ms} ms vs one dispatch ${one} ms`);
    } finally {
      pass.dispose();
    }
    assert.deepEqual(gpuErrors, []);
  },
);

Deno.test("pass submit: pieces doubling from the first, every dispatch once and in order", opts, async () => {
  const be = backend();
  const pass = new PlannedPass(be);
  const state = pass.buffer(64 * 4);
  // each dispatch folds its number into every word (r = r·31 + k, wrapping): the result spells the order
  const fold = (k: number) => ({
    name: "FoldProgram",
    key: "fold",
    source: (prelude: string) =>
      `${prelude}
@group(0) @binding(0) var<storage, read_write> r: array<u32>;
@group(0) @binding(1) var<uniform> u: Uniforms;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  r[g.x] = r[g.x] * 31u + u32(u.k);
}`,
    dispatch: [1, 1, 1] as [number, number, number],
    uniforms: "k : i32,",
    params: [{ type: "int32" as const, data: [k] }],
  });
  for (let k = 1; k <= 100; k++) pass.add(fold(k), { buffer: state }, []);
  let want = 0;
  for (let k = 1; k <= 100; k++) want = (Math.imul(want, 31) + k) >>> 0;
  const queue = be.device.queue, submit = queue.submit;
  let submits = 0;
  queue.submit = (buffers) => (submits++, submit.call(queue, buffers));
  const read = async () => {
    const staging = be.device.createBuffer({
      size: 64 * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    pass.submitWithTfjs((encoder) => encoder.copyBufferToBuffer(state, 0, staging, 0, 64 * 4));
    await staging.mapAsync(GPUMapMode.READ);
    const words = new Uint32Array(staging.getMappedRange().slice(0));
    staging.destroy();
    return words;
  };
  const previous = setFirstSubmit(32);
  try {
    let marks = 0;
    pass.submit({ before: () => marks++, after: () => marks++ });
    assert.equal(submits, 3, "100 dispatches in pieces of 32, 64, 4");
    assert.equal(marks, 2);
    assert.deepEqual([...new Set(await read())], [want]);
    // in one piece, from 0 again; then a range in pieces
    submits = 0;
    setFirstSubmit(0);
    be.device.queue.writeBuffer(state, 0, new Uint32Array(64));
    pass.submit();
    assert.equal(submits, 1);
    assert.deepEqual([...new Set(await read())], [want]);
    submits = 0;
    setFirstSubmit(8);
    be.device.queue.writeBuffer(state, 0, new Uint32Array(64));
    pass.submit({ from: 10, to: 40 });
    assert.equal(submits, 3, "30 dispatches in pieces of 8, 16, 6");
    let part = 0;
    for (let k = 11; k <= 40; k++) part = (Math.imul(part, 31) + k) >>> 0;
    assert.deepEqual([...new Set(await read())], [part]);
    assert.throws(() => setFirstSubmit(-1), /whole number/);
  } finally {
    setFirstSubmit(previous);
    queue.submit = submit;
    pass.dispose();
  }
  assert.deepEqual(gpuErrors, []);
});

Deno.test(
  "pass arena: slots by number, grown where needed (the old buffer kept), made-once contents by key",
  opts,
  () => {
    const device = backend().device;
    const arena = new PassArena(device);
    try {
      const a = new PlannedPass(backend(), arena), b = new PlannedPass(backend(), arena);
      const [a0, a1] = [a.buffer(1024), a.buffer(64)];
      assert.notEqual(a0, a1);
      // the second pass gets the same slots where they are large enough, a larger one where not
      const [b0, b1] = [b.buffer(512), b.buffer(128)];
      assert.equal(b0, a0);
      assert.notEqual(b1, a1);
      assert.ok(b1.size >= 128);
      assert.equal(arena.bytes, 1024 + 64 + 128, "the outgrown buffer stays for the pass bound to it");
      // a buffer with extra usage is the pass's own
      assert.ok(![a0, a1, b1].includes(a.buffer(16, GPUBufferUsage.INDIRECT)));
      const owner = a.buffer(16, GPUBufferUsage.INDIRECT);
      const first = a.kept(owner, "u", 256), again = b.kept(owner, "u", 256), other = b.kept(owner, "v", 256);
      assert.deepEqual([first.made, again.made, other.made], [true, false, true]);
      assert.equal(again.buffer, first.buffer);
      assert.notEqual(other.buffer, first.buffer);
      // without an arena every buffer is the pass's own, and kept contents are made each time
      const own = new PlannedPass(backend());
      assert.equal(own.kept(owner, "u", 256).made, true);
      assert.notEqual(own.buffer(1024), a0);
      own.dispose();
      a.dispose(), b.dispose();
      assert.equal(arena.bytes, 1024 + 64 + 128 + 512, "disposing the passes leaves the arena's buffers");
    } finally {
      arena.dispose();
    }
    assert.equal(arena.bytes, 0);
    assert.deepEqual(gpuErrors, []);
  },
);

Deno.test(
  "read back: one kept staging buffer, grown when needed; a read meanwhile gets its own",
  opts,
  async () => {
    const be = backend();
    const reader = new ReadBack(be);
    const pass = new PlannedPass(be);
    try {
      const values = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7);
      const source = pass.buffer(4000);
      be.device.queue.writeBuffer(source, 0, values);
      assert.deepEqual(await reader.read(source, 10), values.slice(0, 10));
      assert.deepEqual(await reader.read(source, 1000), values);
      // two at once; then one whose recorded work runs first (a copy into the buffer read)
      const [a, b] = await Promise.all([reader.read(source, 3), reader.read(source, 999)]);
      assert.deepEqual([a, b], [values.slice(0, 3), values.slice(0, 999)]);
      const other = pass.buffer(16);
      const moved = await reader.read(
        other,
        4,
        (encoder) => encoder.copyBufferToBuffer(source, 400, other, 0, 16),
      );
      assert.deepEqual(moved, values.slice(100, 104));
    } finally {
      reader.dispose();
      pass.dispose();
    }
    assert.deepEqual(gpuErrors, []);
  },
);
