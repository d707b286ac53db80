/**
 * Training checkpoints: one safetensors file holding G, its EMA, D, both Adam states, the step,
 * the RNG state, the config, in mixed precision the loss scaling, and what `winograd: "auto"` chose
 * (in the metadata). G, EMA and D are stored as state dicts in PyTorch layout under BasicSR names,
 * prefixed `net_g.`, `net_g_ema.`, `net_d.`; Adam moments in the variables' own (TF) layout under
 * `optimizer_g.exp_avg.NAME` and `optimizer_g.exp_avg_sq.NAME`.
 * All float32, so a resumed run continues bit for bit.
 *
 * Writes go to a temp file that is fsynced and then renamed over the old checkpoint: a crash or
 * `kill -9` at any moment leaves either the old or the new file, never a torn one.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  decodeFloat,
  encodeFloat,
  parseSafetensors,
  type RawTensor,
  serializeSafetensors,
} from "../core/weights/safetensors.ts";
import type { StateDict } from "../core/state_dict.ts";
import type { Adam } from "./adam.ts";
import type { GradScalerState } from "../core/kernels/webgpu_train_plan.ts";
import type { ConvChoice } from "../core/kernels/webgpu_plan.ts";

/** Format tag in the metadata. */
export const CHECKPOINT_FORMAT = "esrgan-ts-checkpoint";

/** An Adam state as stored. */
export interface AdamState {
  t: number;
  expAvg: Map<string, Float32Array>;
  expAvgSq: Map<string, Float32Array>;
}

/** Everything a checkpoint holds, decoded. */
export interface Checkpoint {
  step: number;
  /** The training config (JSON object). */
  config: Record<string, unknown>;
  /** RNG state: the seed the per-step streams derive from. */
  rng: { seed: number };
  netG: StateDict;
  netGEma: StateDict;
  netD?: StateDict;
  optimizerG: AdamState;
  optimizerD?: AdamState;
  /** Mixed precision: G's loss scaling (absent from f32 runs). */
  gradScalerG?: GradScalerState;
  /** What `winograd: "auto"` chose for G's planned step (absent until it chose). */
  convChoice?: ConvChoice;
  /** All metadata strings. */
  metadata: Record<string, string>;
}

/** What {@link encodeCheckpoint} reads from the live training state. */
export interface CheckpointSource {
  step: number;
  config: object;
  rng: { seed: number };
  netG: StateDict;
  netGEma: StateDict;
  netD?: StateDict;
  optimizerG: Adam;
  optimizerD?: Adam;
  gradScalerG?: GradScalerState;
  convChoice?: ConvChoice;
  metadata?: Record<string, string>;
}

async function adamTensors(prefix: string, adam: Adam, out: Map<string, RawTensor>): Promise<void> {
  for (const [kind, map] of [["exp_avg", adam.m], ["exp_avg_sq", adam.v]] as const) {
    for (const [name, v] of map) {
      const data = (await v.data()) as Float32Array;
      out.set(`${prefix}.${kind}.${name}`, { dtype: "F32", shape: v.shape, bytes: encodeFloat(data, "F32") });
    }
  }
}

/** Serialises the training state. */
export async function encodeCheckpoint(src: CheckpointSource): Promise<Uint8Array> {
  const tensors = new Map<string, RawTensor>();
  const addSd = (prefix: string, sd: StateDict) => {
    for (const [k, t] of sd) {
      tensors.set(`${prefix}.${k}`, { dtype: "F32", shape: t.shape, bytes: encodeFloat(t.data, "F32") });
    }
  };
  addSd("net_g", src.netG);
  addSd("net_g_ema", src.netGEma);
  if (src.netD) addSd("net_d", src.netD);
  await adamTensors("optimizer_g", src.optimizerG, tensors);
  if (src.optimizerD) await adamTensors("optimizer_d", src.optimizerD, tensors);
  const metadata: Record<string, string> = {
    ...src.metadata,
    format: CHECKPOINT_FORMAT,
    version: "1",
    step: String(src.step),
    config: JSON.stringify(src.config),
    rng: JSON.stringify(src.rng),
    optimizer_g_step: String(src.optimizerG.t),
    ...(src.optimizerD ? { optimizer_d_step: String(src.optimizerD.t) } : {}),
    ...(src.gradScalerG ? { grad_scaler_g: JSON.stringify(src.gradScalerG) } : {}),
    ...(src.convChoice ? { conv_choice: JSON.stringify(src.convChoice) } : {}),
  };
  return serializeSafetensors({ tensors, metadata });
}

/** Parses a checkpoint; throws naming `name` when it is not one or is damaged. */
export function decodeCheckpoint(bytes: Uint8Array, name = "checkpoint"): Checkpoint {
  const { tensors, metadata } = parseSafetensors(bytes, name);
  if (metadata.format !== CHECKPOINT_FORMAT) {
    throw new Error(`${name}: not a training checkpoint (format ${metadata.format ?? "missing"})`);
  }
  const sd = (prefix: string): StateDict => {
    const out: StateDict = new Map();
    for (const [k, t] of tensors) {
      if (k.startsWith(prefix + ".")) {
        out.set(k.slice(prefix.length + 1), { shape: t.shape, data: decodeFloat(t) });
      }
    }
    return out;
  };
  const adam = (prefix: string, tKey: string): AdamState | undefined => {
    if (metadata[tKey] === undefined) return undefined;
    const expAvg = new Map<string, Float32Array>(), expAvgSq = new Map<string, Float32Array>();
    for (const [k, t] of sd(`${prefix}.exp_avg`)) expAvg.set(k, t.data);
    for (const [k, t] of sd(`${prefix}.exp_avg_sq`)) expAvgSq.set(k, t.data);
    return { t: Number(metadata[tKey]), expAvg, expAvgSq };
  };
  const netD = sd("net_d");
  const ckpt: Checkpoint = {
    step: Number(metadata.step),
    config: JSON.parse(metadata.config),
    rng: JSON.parse(metadata.rng),
    netG: sd("net_g"),
    netGEma: sd("net_g_ema"),
    netD: netD.size ? netD : undefined,
    optimizerG: adam("optimizer_g", "optimizer_g_step")!,
    optimizerD: adam("optimizer_d", "optimizer_d_step"),
    ...(metadata.grad_scaler_g ? { gradScalerG: JSON.parse(metadata.grad_scaler_g) } : {}),
    ...(metadata.conv_choice ? { convChoice: JSON.parse(metadata.conv_choice) } : {}),
    metadata,
  };
  if (!ckpt.netG.size || !ckpt.netGEma.size || !ckpt.optimizerG) {
    throw new Error(`${name}: checkpoint lacks G, its EMA or its optimizer`);
  }
  return ckpt;
}

/** Reads and decodes a checkpoint file. */
export async function readCheckpoint(path: string): Promise<Checkpoint> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read the checkpoint (${(e as Error).message})`);
  }
  return decodeCheckpoint(bytes, path);
}

/** Puts a stored Adam state into a live optimiser (same parameter names and shapes). */
export function restoreAdam(adam: Adam, state: AdamState, name = "optimizer"): void {
  for (
    const [kind, live, saved] of [["exp_avg", adam.m, state.expAvg], [
      "exp_avg_sq",
      adam.v,
      state.expAvgSq,
    ]] as const
  ) {
    if (saved.size !== live.size) {
      throw new Error(`${name}: ${kind} has ${saved.size} tensors, the net ${live.size}`);
    }
    for (const [k, v] of live) {
      const data = saved.get(k);
      if (!data || data.length !== v.size) {
        throw new Error(`${name}: ${kind}.${k} is missing or has the wrong size`);
      }
      v.assign(tf.tensor(data, v.shape));
    }
  }
  adam.t = state.t;
}

/**
 * Writes `bytes` to `path` so that a crash leaves either the old file or the new one: write a
 * temp file beside it, fsync it, rename it over `path`, fsync the folder (so the rename survives
 * a power cut too).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${Deno.pid}.tmp`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    let off = 0;
    while (off < bytes.length) off += await file.write(bytes.subarray(off, off + (1 << 24)));
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.rename(tmp, path);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  const d = await Deno.open(dir, { read: true });
  try {
    await d.sync();
  } finally {
    d.close();
  }
}

/** Removes temp files a killed writer left beside `path`; returns their names. */
export async function removeStaleTemps(path: string): Promise<string[]> {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  const base = path.slice(path.lastIndexOf("/") + 1);
  const removed: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.startsWith(base + ".") && e.name.endsWith(".tmp")) {
        await Deno.remove(`${dir}/${e.name}`);
        removed.push(e.name);
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return removed;
}
