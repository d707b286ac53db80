/**
 * The prepared WebGPU forwards an {@link Upscaler} keeps (core/kernels/webgpu_plan.ts): one per
 * recent patch shape, made again when the net's weights change, sharing their large buffers per
 * number format and algorithm (PassArena), with winograd "auto"'s timed choice per number format
 * and the errors WebGPU reported while a plan was made, which the patch run on it must await.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { RRDBNet } from "./rrdbnet_arch.ts";
import { type ConvChoice, fastestPlan, RRDBNetPlanWebGPU } from "./kernels/webgpu_plan.ts";
import { BufferLimitError, PassArena, underErrorScopes } from "./kernels/webgpu_pass.ts";
import type { WebGPUBackendLike } from "./kernels/webgpu_program.ts";
import type { ConvPrecision } from "./kernels/webgpu_conv3x3.ts";

/**
 * Patch shapes whose prepared forward a cache keeps: a tiled image has up to four, eight with tta's
 * transposes. Plans of one number format and algorithm share their large buffers (PassArena), so
 * each holds little more than its bind groups.
 */
export const MAX_PLANS = 8;

/**
 * How plans are to be made: read by {@link PlanCache} at each use, so that changes apply (an
 * Upscaler is one; `net` is read only where a plan is made or checked).
 */
export interface PlanSettings {
  /** The net; a plan reads its weights once, so weight tensors that change make new plans. */
  net: RRDBNet;
  precision: ConvPrecision;
  /** 0: direct; 2 or 4: Winograd F(m x m); "auto": whichever {@link PlanCache.choose} timed faster. */
  winograd: 0 | 2 | 4 | "auto";
}

/** The identities of a net's weight tensors: a plan made from them is stale once they differ. */
export function weightIds(net: RRDBNet): object[] {
  return [...net.params.values()].map((v) => v.dataId);
}

/** Whether two lists of {@link weightIds} are the same tensors. */
export function sameIds(a: object[], b: object[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

/** Prepared forwards by patch shape, on the webgpu backend. Dispose it to free their GPU memory. */
export class PlanCache {
  /** Most recently used last. */
  private readonly plans = new Map<
    string,
    { plan: RRDBNetPlanWebGPU; weights: object[]; arena: PassArena }
  >();
  /**
   * The GPU memory the plans of one number format and algorithm share (see PassArena: a tiled
   * image's four patch shapes in Winograd F(4x4) at the default tile took 2.9 GiB as plans of their
   * own), with the weight tensors its kept filters were made from.
   */
  private readonly arenas = new Map<string, { arena: PassArena; weights: object[] }>();
  /** What "auto" chose per number format (each timed once: switching back reuses the choice). */
  private readonly choices = new Map<ConvPrecision, ConvChoice>();
  /** WebGPU's errors while the last plans were made, not yet taken (see {@link takeCheck}). */
  private check?: Promise<void>;

  /** `settings` is read at each use. */
  constructor(private readonly settings: PlanSettings) {}

  /** What "auto" chose and measured in the current precision; undefined until it timed one. */
  get choice(): ConvChoice | undefined {
    return this.choices.get(this.settings.precision);
  }

  /** The kept plans, least recently used first. */
  get kept(): RRDBNetPlanWebGPU[] {
    return [...this.plans.values()].map((e) => e.plan);
  }

  /**
   * With `winograd: "auto"` on webgpu (elsewhere: nothing), once per number format: times direct and Winograd plans for patches of
   * `shape` (the input as the plan gets it) and keeps the faster one's plan for them.
   */
  async choose(shape: number[]): Promise<void> {
    if (this.settings.winograd !== "auto" || this.choice || tf.getBackend() !== "webgpu") return;
    const { net, precision } = this.settings;
    let made;
    try {
      made = await fastestPlan(net, shape, { precision, arena: (convs) => this.arenaFor(convs) });
    } catch (e) {
      // the chosen plan's arena, if that plan failed (see make)
      for (const [key, { arena }] of this.arenas) if (key.startsWith(`${precision} `)) this.dropArena(arena);
      throw planFailure(e, shape);
    }
    const { winograd, timings } = made;
    this.choices.set(precision, { winograd, shape, precision, timings });
    this.plans.set(this.key(shape), {
      plan: made.plan,
      weights: weightIds(net),
      arena: this.arenaFor(winograd),
    });
  }

  /** The plan for patches of `shape`, made if needed (and again if the net's weights changed). */
  get(shape: number[]): RRDBNetPlanWebGPU {
    const key = this.key(shape);
    const weights = weightIds(this.settings.net);
    let entry = this.plans.get(key);
    if (entry && !sameIds(entry.weights, weights)) {
      entry.plan.dispose();
      this.plans.delete(key);
      entry = undefined;
    }
    if (!entry) {
      // keep only the latest shapes, and the arenas some plan still uses (a whole-image plan's
      // arena holds several full-resolution maps)
      for (const [k, old] of [...this.plans].slice(0, Math.max(0, this.plans.size - MAX_PLANS + 1))) {
        old.plan.dispose();
        this.plans.delete(k);
        if (![...this.plans.values()].some((e) => e.arena === old.arena)) this.dropArena(old.arena);
      }
      const arena = this.arenaFor(this.convs);
      entry = { plan: this.make(shape, arena), weights, arena };
    }
    this.plans.delete(key);
    this.plans.set(key, entry);
    return entry.plan;
  }

  /**
   * What the plans made since the last call left to check, once: resolves when WebGPU reported no
   * error while they were made, else rejects (and the failed plan is gone). The patch run on a new
   * plan must await it before its output is trusted.
   */
  takeCheck(): Promise<void> | undefined {
    const check = this.check;
    this.check = undefined;
    return check;
  }

  /**
   * GPU ms of the largest of these patches (NHWC shapes) from what "auto" timed, scaled by area;
   * undefined where the plans were not chosen by timing.
   */
  timedMs(shapes: number[][]): number | undefined {
    const choice = this.settings.winograd === "auto" ? this.choice : undefined;
    const ms = choice?.timings.find((t) => t.winograd === choice.winograd)?.ms;
    if (!choice || ms === undefined) return undefined;
    const area = (s: number[]) => s[0] * s[1] * s[2];
    return (ms * Math.max(...shapes.map(area))) / area(choice.shape);
  }

  /** Frees every plan and arena (work already submitted still completes); the choices stay. */
  dispose(): void {
    for (const { plan } of this.plans.values()) plan.dispose();
    this.plans.clear();
    for (const { arena } of this.arenas.values()) arena.dispose();
    this.arenas.clear();
  }

  /** The convolutions' algorithm plans use now: `winograd`, or what "auto" chose (direct until then). */
  private get convs(): 0 | 2 | 4 {
    const { winograd } = this.settings;
    return winograd === "auto" ? this.choice?.winograd ?? 0 : winograd;
  }

  private key(shape: number[]): string {
    return `${shape.join("x")} ${this.settings.precision} ${this.convs}`;
  }

  /**
   * A prepared forward for patches of `shape`. Its errors say what to do: a patch whose buffers
   * exceed the device's limits names the largest that fits; what WebGPU reports while the plan is
   * made (out of memory, say) comes through {@link takeCheck}.
   */
  private make(shape: number[], arena: PassArena): RRDBNetPlanWebGPU {
    const { net, precision } = this.settings;
    const device = (tf.backend() as unknown as WebGPUBackendLike).device;
    let made;
    try {
      made = underErrorScopes(
        device,
        () => new RRDBNetPlanWebGPU(net, shape, { precision, winograd: this.convs || undefined, arena }),
      );
    } catch (e) {
      // buffers it made in the arena before it failed (larger than the others bind, perhaps) go too
      this.dropArena(arena);
      throw planFailure(e, shape);
    }
    const plan = made.value;
    // a check not taken yet (the largest patch's plan, made first) stays: a later plan's joins it
    const earlier = this.check;
    const check = made.error.then((error) => {
      if (!error) return;
      for (const [k, e] of this.plans) if (e.plan === plan) this.plans.delete(k);
      plan.dispose();
      // what it made in the arena may be what failed: the arena goes, with the plans sharing it
      this.dropArena(arena);
      throw planFailure(error, shape);
    });
    this.check = earlier ? Promise.all([earlier, check]).then(() => {}) : check;
    this.check.catch(() => {}); // awaited where the patch is read back
    return plan;
  }

  /** The arena of the plans running the convolutions as `convs` in this precision, for the net's weights now. */
  private arenaFor(convs: 0 | 2 | 4): PassArena {
    const { net, precision } = this.settings;
    const key = `${precision} ${convs}`, weights = weightIds(net);
    const have = this.arenas.get(key);
    if (have && sameIds(have.weights, weights)) return have.arena;
    if (have) this.dropArena(have.arena);
    const arena = new PassArena((tf.backend() as unknown as WebGPUBackendLike).device);
    this.arenas.set(key, { arena, weights });
    return arena;
  }

  /** Frees `arena` and the plans made with it (work already submitted still completes). */
  private dropArena(arena: PassArena): void {
    for (const [k, e] of this.plans) {
      if (e.arena !== arena) continue;
      e.plan.dispose();
      this.plans.delete(k);
    }
    for (const [k, e] of this.arenas) if (e.arena === arena) this.arenas.delete(k);
    arena.dispose();
  }
}

/**
 * Why a plan for a patch of `shape` could not be made, said so the user knows what to do: a buffer
 * over the device's limits names the largest patch that fits; what WebGPU reported (out of memory,
 * say) is passed on.
 */
function planFailure(e: unknown, shape: number[]): Error {
  const [, h, w] = shape;
  if (e instanceof BufferLimitError) {
    // the largest buffers grow with the patch's area
    const side = Math.floor(Math.sqrt((h * w * e.limit) / e.bytes));
    return new Error(
      `a ${w}x${h} patch is too large for this GPU (${e.message}): use smaller tiles ` +
        `(a tile plus twice its pad at most ${side} pixels)`,
    );
  }
  if (e instanceof GPUError) {
    const oom = e instanceof GPUOutOfMemoryError;
    return new Error(
      `${oom ? "out of GPU memory" : "WebGPU rejected the work"} preparing the forward of a ${w}x${h} ` +
        `patch (${e.message})${oom ? ": use smaller tiles" : ""}`,
    );
  }
  return e as Error;
}
