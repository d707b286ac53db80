/**
 * The edge server's settings, read from environment variables so that a deployment changes them
 * without code. Every limit here is reported by `GET /healthz`.
 * @module
 */
import type { BackendName } from "../core/backend.ts";
import { DEFAULT_TILE, DEFAULT_TILE_PAD } from "../core/upscaler.ts";
import { resolveModel, SHIPPED_MODELS, shippedModelPath } from "../core/weights/shipped.ts";

/** Settings of one server instance. */
export interface EdgeConfig {
  /** Model file path (read once per instance): what `/v1/upscale` runs unless `?model=` names another. */
  model: string;
  /**
   * More model files to serve, each read once per instance and chosen by `?model=NAME`, NAME as
   * {@link modelName} gives it (a shipped model's name, else the file's name without extension).
   */
  moreModels: string[];
  /** Backend to force; absent: webgpu on a real GPU adapter, else wasm. */
  backend?: BackendName;
  /** Largest accepted request body, in bytes (413 above). */
  maxBodyBytes: number;
  /** Largest accepted input, width × height from the image header (413 above). */
  maxPixels: number;
  /** Largest `outscale` query value. */
  maxOutscale: number;
  /** Jobs that run at once. */
  maxConcurrent: number;
  /** Jobs that may wait for a slot; more get 503 with Retry-After. */
  maxQueue: number;
  /** Per-request time limit in milliseconds, queueing included (504 past it). */
  timeoutMs: number;
  /** Tile side for inference; 0 runs the whole image at once. Tiles bound memory and let a job stop early. */
  tile: number;
  /** Overlap of the tiles, in input pixels. */
  tilePad: number;
  /** Bearer token the upscale route requires; absent: open. */
  token?: string;
  /** Origins allowed by CORS: exact origins, or `*` for any. Empty: no CORS headers. */
  corsOrigins: string[];
  /**
   * On the CPU kernels, make each conv's Winograd filters before it, every tile, instead of keeping
   * them (Upscaler.cpuPackEachRun): x4plus's instance 200 MB smaller, a few percent slower.
   */
  lowMemory: boolean;
}

/** Environment variables the server reads, each with its meaning (README and `--allow-env` use this list). */
export const ENV_VARS = {
  EDGE_MODEL:
    "model file path or shipped model's name, or several, comma-separated, the first the default (default: the shipped int8 x4plus)",
  EDGE_BACKEND: "webgpu | wasm | cpu (default: webgpu on a real GPU adapter, else wasm)",
  EDGE_MAX_BODY_BYTES: "largest request body in bytes",
  EDGE_MAX_PIXELS: "largest input width × height",
  EDGE_MAX_OUTSCALE: "largest outscale query value",
  EDGE_MAX_CONCURRENT: "jobs running at once",
  EDGE_MAX_QUEUE: "jobs waiting for a slot",
  EDGE_TIMEOUT_MS: "per-request time limit, queueing included",
  EDGE_TILE: "tile side in input pixels (0: whole image)",
  EDGE_TILE_PAD: "tile overlap in input pixels",
  EDGE_TOKEN: "bearer token required by POST /v1/upscale",
  EDGE_CORS_ORIGINS: "comma-separated allowed origins, or *",
  EDGE_LOW_MEMORY:
    "1: the CPU kernels make each conv's Winograd filters per tile (200 MB less for x4plus); 0: kept",
} as const;

/** Defaults sized for a small CPU instance (Deno Deploy: wasm backend, no GPU). */
export const DEFAULTS = {
  maxBodyBytes: 8 * 1024 * 1024,
  // 128x128: the x4plus model takes about 4x a 64x64 image's time (13 s on 2 loaded cores here).
  maxPixels: 128 * 128,
  maxOutscale: 4,
  maxConcurrent: 1,
  maxQueue: 8,
  timeoutMs: 120_000,
  tile: DEFAULT_TILE,
  tilePad: DEFAULT_TILE_PAD,
  // x4plus fits a 512 MB instance this way (0.43 GB after a small upscale here, 0.62 GB with kept filters)
  lowMemory: true,
} as const;

/** Reads the settings from `env` (a getter such as `Deno.env.get`), falling back to {@link DEFAULTS}. */
export function configFromEnv(
  get: (name: string) => string | undefined,
  options: { defaultModel: string },
): EdgeConfig {
  const int = (name: keyof typeof ENV_VARS, fallback: number, min: number) => {
    const raw = get(name)?.trim();
    if (raw === undefined || raw === "") return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) throw new Error(`${name}=${raw}: expected an integer ≥ ${min}`);
    return n;
  };
  const backend = get("EDGE_BACKEND")?.trim() || undefined;
  if (backend && !["webgpu", "wasm", "cpu"].includes(backend)) {
    throw new Error(`EDGE_BACKEND=${backend}: expected webgpu, wasm or cpu`);
  }
  const models = (get("EDGE_MODEL")?.trim() || options.defaultModel).split(",").map((s) => s.trim());
  if (models.some((m) => !m)) throw new Error(`EDGE_MODEL=${get("EDGE_MODEL")}: an empty model in the list`);
  const files = models.map(resolveModel);
  const names = files.map(modelName);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new Error(`EDGE_MODEL=${get("EDGE_MODEL")}: two models named "${twice}"`);
  const low = get("EDGE_LOW_MEMORY")?.trim() || undefined;
  if (low !== undefined && low !== "0" && low !== "1") {
    throw new Error(`EDGE_LOW_MEMORY=${low}: expected 0 or 1`);
  }
  const maxOutscale = Number(get("EDGE_MAX_OUTSCALE")?.trim() || DEFAULTS.maxOutscale);
  if (!(maxOutscale > 0)) throw new Error(`EDGE_MAX_OUTSCALE=${get("EDGE_MAX_OUTSCALE")}: expected > 0`);
  return {
    model: files[0],
    moreModels: files.slice(1),
    backend: backend as BackendName | undefined,
    maxBodyBytes: int("EDGE_MAX_BODY_BYTES", DEFAULTS.maxBodyBytes, 1),
    maxPixels: int("EDGE_MAX_PIXELS", DEFAULTS.maxPixels, 1),
    maxOutscale,
    maxConcurrent: int("EDGE_MAX_CONCURRENT", DEFAULTS.maxConcurrent, 1),
    maxQueue: int("EDGE_MAX_QUEUE", DEFAULTS.maxQueue, 0),
    timeoutMs: int("EDGE_TIMEOUT_MS", DEFAULTS.timeoutMs, 1),
    tile: int("EDGE_TILE", DEFAULTS.tile, 0),
    tilePad: int("EDGE_TILE_PAD", DEFAULTS.tilePad, 0),
    token: get("EDGE_TOKEN") || undefined,
    corsOrigins: (get("EDGE_CORS_ORIGINS") ?? "").split(",").map((s) => s.trim()).filter(Boolean),
    lowMemory: low === undefined ? DEFAULTS.lowMemory : low === "1",
  };
}

/**
 * The name `?model=` takes for a model file: its shipped name, else its file name without
 * `.safetensors` (and a dtype before it: `.int8`, `.fp16`, `.fp32`).
 */
export function modelName(file: string): string {
  const shipped = Object.keys(SHIPPED_MODELS).find((name) => shippedModelPath(name) === file);
  return shipped ?? file.split(/[\\/]/).pop()!.replace(/(\.(int8|fp16|fp32))?\.safetensors$/, "");
}
