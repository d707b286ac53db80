/**
 * Runs WGSL compute shaders of our own through tfjs's WebGPU backend (4.22), so that they share its
 * command encoder, buffer pool, submit batching and profiling timers with the stock kernels.
 *
 * tfjs's `runWebGPUProgram` generates a shader prelude that binds every input read-only; our
 * kernels need more (a buffer read and written by one dispatch, in-place optimizer state), so we
 * write whole shaders and hand a compiled pipeline to the backend's `recordAndSubmit`, which binds
 * `[output, ...inputs, uniforms]` in that order. The uniform buffer it fills always starts with
 * NaN, Infinity and the shape and strides of every input and of the output; {@link uniformStruct}
 * declares the same fields so that our own uniforms follow at the offsets tfjs computes.
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";

/** The parts of tfjs-backend-webgpu 4.22's `WebGPUBackend` we rely on (not public API). */
export interface WebGPUBackendLike {
  device: GPUDevice;
  tensorMap: { get(dataId: object): { resource?: unknown; refCount: number } | undefined };
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  uploadToGPU(dataId: object): void;
  disposeData(dataId: object, force?: boolean): boolean;
  recordAndSubmit(program: object, output: tf.TensorInfo, inputs: tf.TensorInfo[], uniforms: Uniform[]): void;
}

/** One uniform value as tfjs's `makeUniforms` takes it. */
export interface Uniform {
  type: "int32" | "uint32" | "float32";
  data: number[];
}

/** A compute shader of ours: its source and how to launch it. */
export interface CustomProgram {
  /** Shows in tfjs's profiler (`tf.profile`, timestamp queries) as this program's name. */
  name: string;
  /** Identifies the WGSL source; equal keys must mean equal sources. */
  key: string;
  /** The full WGSL, given the shapes of inputs and output (for the uniform prelude). */
  source: (uniformPrelude: string) => string;
  dispatch: [number, number, number];
}

const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();
const namedPrograms = new Map<string, object>();

/** The class tfjs's timers read the name off (`program.constructor.name`). */
function programObject(name: string, pipeline: GPUComputePipeline, dispatch: number[]): object {
  let proto = namedPrograms.get(name);
  if (!proto) {
    // A class per kernel name, so profiles say which of our kernels ran.
    const cls = { [name]: class {} }[name];
    proto = cls.prototype;
    namedPrograms.set(name, proto);
  }
  return Object.assign(Object.create(proto), { pipeline, dispatch });
}

const coordType = (n: number) => (n <= 1 ? "i32" : `vec${n}<i32>`);

/**
 * The `Uniforms` struct tfjs's `recordAndSubmit` fills: NaN, Infinity, each input's and the
 * output's shape and strides, then `own` (WGSL members, e.g. `"cin : i32, alpha : f32,"`).
 */
export function uniformStruct(shapes: number[][], own: string): string {
  const fields = ["NAN : f32", "INFINITY : f32"];
  shapes.forEach((s, i) => {
    if (s.length > 4) throw new Error(`webgpu_program: rank ${s.length} is not supported`);
    fields.push(`shape${i} : ${coordType(s.length)}`, `strides${i} : ${coordType(s.length - 1)}`);
  });
  return `struct Uniforms { ${fields.join(", ")}, ${own} };`;
}

/** The compiled pipeline of `program` for inputs and output of these shapes (cached per device). */
export function getPipeline(
  backend: WebGPUBackendLike,
  program: CustomProgram & { uniforms: string },
  shapes: number[][],
) {
  const key = `${program.key}|${shapes.map((s) => s.length).join("")}`;
  let cache = pipelines.get(backend.device);
  if (!cache) pipelines.set(backend.device, cache = new Map());
  let pipeline = cache.get(key);
  if (!pipeline) {
    const code = program.source(uniformStruct(shapes, program.uniforms));
    const module = backend.device.createShaderModule({ code, label: program.name });
    // Pipeline creation fails silently (the dispatch is then dropped): say so loudly.
    module.getCompilationInfo().then((info) => {
      for (const m of info.messages) {
        if (m.type === "error") console.error(`core/kernels: WGSL error in ${program.name}: ${m.message}`);
      }
    });
    pipeline = backend.device.createComputePipeline({
      compute: { module, entryPoint: "main" },
      layout: "auto",
      label: program.name,
    });
    cache.set(key, pipeline);
  }
  return pipeline;
}

/**
 * The uniform block `recordAndSubmit` would write for these shapes and `params`, laid out as
 * tfjs's `makeUniforms` lays it out (WGSL alignment of i32 / vecN<i32> / f32 members).
 */
export function packUniforms(shapes: number[][], params: Uniform[]): ArrayBuffer {
  const entries: Uniform[] = [{ type: "float32", data: [NaN] }, { type: "float32", data: [Infinity] }];
  for (const s of shapes) {
    const strides = s.map((_, i) => s.slice(i + 1).reduce((a, b) => a * b, 1)).slice(0, -1);
    entries.push({ type: "int32", data: s.length ? s : [1] }, {
      type: "int32",
      data: strides.length ? strides : [1],
    });
  }
  entries.push(...params);
  let offset = 0, maxAlign = 4;
  const offsets = entries.map((e) => {
    const align = e.data.length === 1 ? 4 : e.data.length === 2 ? 8 : 16;
    maxAlign = Math.max(maxAlign, align);
    const at = Math.ceil(offset / align) * align;
    offset = at + 4 * e.data.length;
    return at;
  });
  const buf = new ArrayBuffer(Math.ceil(offset / maxAlign) * maxAlign);
  entries.forEach((e, i) => {
    const View = e.type === "float32" ? Float32Array : e.type === "uint32" ? Uint32Array : Int32Array;
    new View(buf, offsets[i], e.data.length).set(e.data);
  });
  return buf;
}

/**
 * Records one dispatch of `program` on the backend's queue. `output` is written by binding 0;
 * `inputs` take bindings 1.., the uniform buffer the binding after them.
 */
export function runCustomProgram(
  backend: WebGPUBackendLike,
  program: CustomProgram & { uniforms: string; params: Uniform[] },
  io: { inputs: tf.TensorInfo[]; output: tf.TensorInfo },
): tf.TensorInfo {
  const { inputs, output } = io;
  for (const t of [...inputs, output]) backend.uploadToGPU(t.dataId);
  const shapes = [...inputs, output].map((t) => (t.shape.length === 0 ? [1] : t.shape));
  const pipeline = getPipeline(backend, program, shapes);
  const max = backend.device.limits.maxComputeWorkgroupsPerDimension;
  if (program.dispatch.some((d) => d > max)) {
    throw new Error(`${program.name}: dispatch [${program.dispatch}] exceeds the device limit ${max}`);
  }
  if (program.dispatch.some((d) => d === 0)) return output;
  backend.recordAndSubmit(
    programObject(program.name, pipeline, program.dispatch),
    output,
    inputs,
    program.params,
  );
  return output;
}

/** Whether `dataId` holds a GPU buffer already (as opposed to values still on the CPU). */
export function onGPU(backend: WebGPUBackendLike, t: tf.TensorInfo): boolean {
  return backend.tensorMap.get(t.dataId)?.resource != null;
}

/**
 * `body` once per value of `v` in 0..n-1, each in a block of its own. Loops are written out here
 * because naga turns WGSL loops into `while` loops that drivers do not unroll, which leaves
 * arrays indexed by the loop variable in local memory (on an H200 a planned 1x256x256 forward took
 * 2.3x longer with the loops).
 */
export const unroll = (n: number, v: string, body: string): string =>
  Array.from({ length: n }, (_, k) => `{ let ${v} = ${k};${body}\n    }`).join("\n    ");
