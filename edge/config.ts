/**
 * The edge server's settings, read from environment variables so that a deployment changes them
 * without code. Every limit here is reported by `GET /healthz`.
 * @module
 */
import type { BackendName } from "../core/backend.ts";
import { DEFAULT_TILE, DEFAULT_TILE_PAD } from "../core/upscaler.ts";
import { resolveModel } from "../core/weights/shipped.ts";

/** Settings of one server instance. */
export interface EdgeConfig {
  /** Model file path (read once per instance). */
  model: string;
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
}

/** Environment variables the server reads, each with its meaning (README and `--allow-env` use this list). */
export const ENV_VARS = {
  EDGE_MODEL: "model file path, or a shipped model's name (default: the shipped int8 x4plus)",
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
  const maxOutscale = Number(get("EDGE_MAX_OUTSCALE")?.trim() || DEFAULTS.maxOutscale);
  if (!(maxOutscale > 0)) throw new Error(`EDGE_MAX_OUTSCALE=${get("EDGE_MAX_OUTSCALE")}: expected > 0`);
  return {
    model: resolveModel(get("EDGE_MODEL")?.trim() || options.defaultModel),
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
  };
}
