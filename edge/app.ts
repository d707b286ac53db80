/**
 * The edge upscaling service as a plain `fetch` handler: routes, limits, the job queue and the
 * once-per-instance models. `main.ts` wires it to the environment; tests build it with their own
 * settings. It never writes to disk and never opens a path that came from a request (`?model=`
 * names one of the configured models): the only files it reads are those models.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type BackendInfo, type BackendName, initBackend } from "../core/backend.ts";
import {
  decodeImage,
  encodeImage,
  jpegWebpEncoder,
  readImageHeader,
  type RgbaImage,
} from "../core/image_io.ts";
import { type AlphaUpsampler, Upscaler } from "../core/upscaler.ts";
import { type EdgeConfig, modelName } from "./config.ts";
import {
  checkBearer,
  corsHeaders,
  errorResponse,
  HttpError,
  json,
  preflight,
  readBodyCapped,
} from "./http.ts";
import { JobLimiter, QueueFullError } from "./limiter.ts";
import { PAGE_HTML } from "./page.ts";

/** Output formats of `POST /v1/upscale`. */
export const OUTPUT_TYPES = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" } as const;
type OutputFormat = keyof typeof OUTPUT_TYPES;

/** Raw-body content types accepted besides `multipart/form-data`. */
export const INPUT_TYPES = ["image/png", "image/jpeg", "image/webp"] as const;

/** What `GET /healthz` answers. */
export interface HealthReport {
  status: "loading" | "ready" | "failed";
  ready: boolean;
  error?: string;
  /**
   * The default model (`file` is its file name only: a public instance need not show its directory
   * layout); `models`, every model served, the default first, by the name `?model=` takes.
   */
  model: ModelReport;
  models: (ModelReport & { name: string })[];
  backend?: BackendInfo;
  /** The settings of {@link EdgeConfig} a client may see: the token only as whether one is required. */
  limits: Omit<EdgeConfig, "model" | "moreModels" | "backend" | "token"> & {
    auth: boolean;
    inputTypes: string[];
    /** Each output format: "available", "untested" (tried on first use) or why it is unavailable. */
    outputFormats: Record<string, string>;
  };
  jobs: { active: number; queued: number; served: number };
  memory: { rssBytes: number; tensors: number; tensorBytes: number };
  uptimeS: number;
}

/** One model of {@link HealthReport}. */
export interface ModelReport {
  file: string;
  dtype?: string;
  scale?: number;
  config?: unknown;
  loadMs?: number;
}

/** A running service instance. */
export interface EdgeApp {
  /** The request handler (Deno Deploy / `deno serve` shape). */
  fetch(request: Request): Promise<Response>;
  /** Settles when the model is loaded (rejects if it cannot be). */
  ready: Promise<void>;
  /** The `/healthz` report. */
  health(): HealthReport;
  /** Frees the model once running jobs are done with it. */
  close(): Promise<void>;
}

/** Options for {@link createApp}. */
export interface CreateAppOptions {
  /** Loads a model; the default reads the file with `Upscaler.load`. */
  loadModel?: (path: string) => Promise<Upscaler>;
}

const backends = new Map<string, Promise<BackendInfo>>();
/**
 * Starts the tfjs backend once per process (`name` absent: webgpu on a real GPU adapter, else wasm);
 * instances built in the same process, as in tests, share it.
 */
export function startBackend(name?: BackendName): Promise<BackendInfo> {
  const key = name ?? "auto";
  let p = backends.get(key);
  if (!p) {
    // the net runs on our CPU kernels (wasm): tfjs's own ops need no thread pool of their own
    p = initBackend(name, { opsThreads: 1 });
    backends.set(key, p);
    p.catch(() => backends.delete(key));
  }
  return p;
}

/** Builds the service and starts loading its model at once (requests wait for it). */
export function createApp(config: EdgeConfig, options: CreateAppOptions = {}): EdgeApp {
  const started = performance.now();
  const limiter = new JobLimiter({ maxConcurrent: config.maxConcurrent, maxQueue: config.maxQueue });
  // every model served, by name, the default first
  const files = new Map([config.model, ...config.moreModels].map((f) => [modelName(f), f]));
  const state: {
    status: HealthReport["status"];
    error?: string;
    upscalers: Map<string, { upscaler: Upscaler; loadMs: number }>;
    backend?: BackendInfo;
    served: number;
  } = { status: "loading", upscalers: new Map(), served: 0 };

  const ready = (async () => {
    let file = config.model;
    try {
      state.backend = await startBackend(config.backend);
      // one at a time: each holds its file for the instance's life, and from its first request on its
      // weights where it runs (the CPU kernels' memory, or tfjs's)
      for (const [name, f] of files) {
        file = f;
        const upscaler = await (options.loadModel ?? ((p) => Upscaler.load(p)))(f);
        upscaler.cpuPackEachRun = config.lowMemory;
        state.upscalers.set(name, { upscaler, loadMs: Math.round(performance.now() - started) });
      }
      state.status = "ready";
    } catch (err) {
      state.status = "failed";
      state.error = `cannot load model ${file}: ${err instanceof Error ? err.message : err}`;
      console.error(`edge: ${state.error}`);
      for (const { upscaler } of state.upscalers.values()) upscaler.dispose();
      state.upscalers.clear();
      throw err;
    }
  })();
  ready.catch(() => {}); // reported through /healthz and each request; not an unhandled rejection

  // JPEG and WebP: imagescript's native codec where FFI is allowed, else the wasm encoders (Deno Deploy
  // has no FFI). Probe at start only where the answer cannot be a permission prompt; else on first use.
  const formats: Record<OutputFormat, string> = { png: "available", jpeg: "untested", webp: "untested" };
  const ffi = ffiPermission();
  if (ffi === "granted" || ffi === "denied") {
    for (const f of ["jpeg", "webp"] as const) void encodeFormat(f).catch(() => {});
  }

  /** Encodes with `format`, recording whether (and with what) the format works here; 501 when not. */
  async function encodeFormat(format: OutputFormat, img?: RgbaImage, quality?: number): Promise<Uint8Array> {
    if (formats[format].startsWith("unavailable")) {
      throw new HttpError(501, `format ${format} is ${formats[format]}`);
    }
    const probe = { width: 1, height: 1, data: new Uint8ClampedArray([128, 128, 128, 255]) };
    try {
      const bytes = await encodeImage(img ?? probe, { format, quality });
      formats[format] = format === "png" ? "available" : await describeEncoder(format);
      return bytes;
    } catch (err) {
      // the codec works: this failure is something else
      if (formats[format].startsWith("available")) throw err;
      formats[format] = `unavailable: ${err instanceof Error ? err.message : err}`;
      throw new HttpError(501, `format ${format} is ${formats[format]}`);
    }
  }

  const { model: _model, moreModels: _more, backend: _backend, token: _token, ...publicLimits } = config;
  const modelReport = (name: string): ModelReport => {
    const loaded = state.upscalers.get(name);
    return {
      file: files.get(name)!.split(/[\\/]/).pop()!,
      dtype: loaded?.upscaler.info.dtype,
      scale: loaded?.upscaler.scale,
      config: loaded?.upscaler.config,
      loadMs: loaded?.loadMs,
    };
  };
  function health(): HealthReport {
    // tf.memory() throws until a backend is up (a failed start leaves none).
    const mem = state.backend ? tf.memory() : { numTensors: 0, numBytes: 0 };
    return {
      status: state.status,
      ready: state.status === "ready",
      ...(state.error ? { error: state.error } : {}),
      model: modelReport(modelName(config.model)),
      models: [...files.keys()].map((name) => ({ name, ...modelReport(name) })),
      backend: state.backend,
      limits: {
        ...publicLimits,
        auth: Boolean(config.token),
        inputTypes: [...INPUT_TYPES, "multipart/form-data (field: image)"],
        outputFormats: { ...formats },
      },
      jobs: { active: limiter.active, queued: limiter.queued, served: state.served },
      memory: { rssBytes: Deno.memoryUsage().rss, tensors: mem.numTensors, tensorBytes: mem.numBytes },
      uptimeS: Math.round((performance.now() - started) / 1000),
    };
  }

  async function upscale(request: Request): Promise<Response> {
    const arrived = performance.now();
    if (config.token) checkBearer(request, config.token);
    const params = parseParams(new URL(request.url).searchParams, config.maxOutscale, [...files.keys()]);
    const bytes = await readImageBody(request, config.maxBodyBytes);
    let header;
    try {
      header = readImageHeader(bytes);
    } catch (err) {
      throw new HttpError(400, `unsupported or corrupt image: ${err instanceof Error ? err.message : err}`);
    }
    const pixels = header.width * header.height;
    if (pixels > config.maxPixels) {
      throw new HttpError(
        413,
        `image is ${header.width}x${header.height} = ${pixels} pixels; the limit is ${config.maxPixels} pixels`,
      );
    }

    // One signal for everything that should stop the job: the client leaving or the deadline.
    const stop = new AbortController();
    const timer = setTimeout(
      () => stop.abort(new HttpError(504, `time limit of ${config.timeoutMs} ms exceeded`)),
      config.timeoutMs - (performance.now() - arrived),
    );
    // Linked by hand rather than with AbortSignal.any so the link can be cut once the answer is out:
    // Deno also aborts request.signal after a successful response.
    const clientGone = () => stop.abort(new HttpError(499, "client closed the request"));
    if (request.signal.aborted) clientGone();
    else request.signal.addEventListener("abort", clientGone, { once: true });
    const signal = stop.signal;
    const aborted = new Promise<never>((_, reject) => {
      signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
    aborted.catch(() => {});
    try {
      const job = runJob(bytes, params, signal);
      job.catch(() => {}); // if the race below is lost to `aborted`, the job's own end is not an error
      // Answer as soon as the deadline passes or the client leaves; the job stops at its next tile and
      // only then frees its slot, so the slot count never undercounts the work in flight.
      const out = await Promise.race([job, aborted]);
      state.served++;
      return new Response(out.data as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": OUTPUT_TYPES[params.format],
          "x-upscale-ms": String(Math.round(out.ms)),
          "x-output-size": `${out.width}x${out.height}`,
        },
      });
    } catch (err) {
      // Past the deadline or after the client left, the job ends in an AbortError: say which.
      if (signal.aborted && !(err instanceof HttpError && err.status !== 504 && err.status !== 499)) {
        throw signal.reason;
      }
      throw err;
    } finally {
      clearTimeout(timer);
      request.signal.removeEventListener("abort", clientGone);
    }
  }

  async function runJob(bytes: Uint8Array, params: Params, signal: AbortSignal) {
    await Promise.race([ready.catch(() => {}), new Promise((r) => signal.addEventListener("abort", r))]);
    signal.throwIfAborted();
    const upscaler = state.upscalers.get(params.model)?.upscaler;
    if (!upscaler) throw new HttpError(503, `model unavailable: ${state.error}`);
    let release;
    try {
      release = await limiter.acquire(signal);
    } catch (err) {
      if (err instanceof QueueFullError) {
        throw new HttpError(503, err.message, { "retry-after": String(err.retryAfter) });
      }
      throw err;
    }
    try {
      const t0 = performance.now();
      let img;
      try {
        img = await decodeImage(bytes, { name: "uploaded image", maxPixels: config.maxPixels });
      } catch (err) {
        throw new HttpError(400, `cannot decode image: ${err instanceof Error ? err.message : err}`);
      }
      signal.throwIfAborted();
      const out = await upscaler.upscale(img, {
        outscale: params.outscale,
        alpha: params.alpha,
        tile: config.tile,
        tilePad: config.tilePad,
        signal,
      });
      const data = await encodeFormat(params.format, out, params.quality);
      return { data, width: out.width, height: out.height, ms: performance.now() - t0 };
    } finally {
      release();
    }
  }

  async function route(request: Request): Promise<Response> {
    const { pathname } = new URL(request.url);
    if (request.method === "OPTIONS") return preflight(request, config.corsOrigins);
    if (pathname === "/v1/upscale") {
      if (request.method !== "POST") throw methodNotAllowed("POST, OPTIONS");
      return await upscale(request);
    }
    if (pathname === "/healthz") {
      if (request.method !== "GET" && request.method !== "HEAD") throw methodNotAllowed("GET, HEAD");
      const report = health();
      return json(report, { status: report.status === "failed" ? 503 : 200 });
    }
    if (pathname === "/") {
      if (request.method !== "GET" && request.method !== "HEAD") throw methodNotAllowed("GET, HEAD");
      return new Response(PAGE_HTML, {
        headers: {
          "content-type": "text/html; charset=utf-8",
          // The page only talks to this origin and shows blob: images it made itself.
          "content-security-policy":
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'",
        },
      });
    }
    throw new HttpError(404, `no route for ${request.method} ${pathname}`);
  }

  return {
    ready,
    health,
    async fetch(request: Request): Promise<Response> {
      let response: Response;
      try {
        response = await route(request);
      } catch (err) {
        response = errorResponse(err);
      }
      for (const [k, v] of Object.entries(corsHeaders(request, config.corsOrigins))) {
        response.headers.set(k, v);
      }
      return response;
    },
    async close() {
      await ready.catch(() => {});
      while (limiter.active || limiter.queued) await new Promise((r) => setTimeout(r, 20));
      for (const { upscaler } of state.upscalers.values()) upscaler.dispose();
      state.upscalers.clear();
    },
  };
}

interface Params {
  /** The model's name (the default's when the query names none). */
  model: string;
  outscale?: number;
  alpha?: AlphaUpsampler;
  format: OutputFormat;
  quality?: number;
}

/** The query of `/v1/upscale`, checked; `models`: the names served, the default first. */
function parseParams(q: URLSearchParams, maxOutscale: number, models: string[]): Params {
  const params: Params = { model: models[0], format: "png" };
  const model = q.get("model");
  if (model !== null) {
    if (!models.includes(model)) {
      throw new HttpError(400, `model=${model}: expected one of ${models.join(", ")}`);
    }
    params.model = model;
  }
  const outscale = q.get("outscale");
  if (outscale !== null) {
    const v = Number(outscale);
    if (!(v > 0 && v <= maxOutscale)) {
      throw new HttpError(400, `outscale=${outscale}: expected a number in (0, ${maxOutscale}]`);
    }
    params.outscale = v;
  }
  const alpha = q.get("alpha");
  if (alpha !== null) {
    if (alpha !== "net" && alpha !== "bicubic") {
      throw new HttpError(400, `alpha=${alpha}: expected net or bicubic`);
    }
    params.alpha = alpha;
  }
  const format = q.get("format");
  if (format !== null) {
    const f = format.toLowerCase() === "jpg" ? "jpeg" : format.toLowerCase();
    if (!(f in OUTPUT_TYPES)) throw new HttpError(400, `format=${format}: expected png, jpeg or webp`);
    params.format = f as OutputFormat;
  }
  const quality = q.get("quality");
  if (quality !== null) {
    const v = Number(quality);
    if (!Number.isInteger(v) || v < 1 || v > 100) {
      throw new HttpError(400, `quality=${quality}: expected an integer from 1 to 100`);
    }
    params.quality = v;
  }
  return params;
}

/** The image bytes of a raw-body or multipart upload (checks the content type before reading). */
async function readImageBody(request: Request, maxBytes: number): Promise<Uint8Array> {
  const type = (request.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
  const multipart = type === "multipart/form-data";
  if (!multipart && !(INPUT_TYPES as readonly string[]).includes(type)) {
    throw new HttpError(
      415,
      `unsupported content type ${JSON.stringify(type || "(none)")}: send ${
        INPUT_TYPES.join(" or ")
      } as the body, or multipart/form-data with an "image" field`,
    );
  }
  const body = await readBodyCapped(request, maxBytes);
  if (body.byteLength === 0) throw new HttpError(400, "empty request body: no image");
  if (!multipart) return body;
  let form: FormData;
  try {
    // Parsed from the capped bytes, never from the live stream, so the size limit holds.
    form = await new Response(body as Uint8Array<ArrayBuffer>, {
      headers: { "content-type": request.headers.get("content-type")! },
    })
      .formData();
  } catch (err) {
    throw new HttpError(400, `malformed multipart body: ${err instanceof Error ? err.message : err}`);
  }
  const file = form.get("image");
  if (!(file instanceof File)) throw new HttpError(400, 'multipart body has no file field named "image"');
  return new Uint8Array(await file.arrayBuffer());
}

function methodNotAllowed(allow: string): HttpError {
  return new HttpError(405, `method not allowed; use ${allow}`, { allow });
}

/** "available (ENCODER)", saying why where the wasm encoder stands in for the native one. */
async function describeEncoder(format: "jpeg" | "webp"): Promise<string> {
  const { encoder, why } = await jpegWebpEncoder();
  if (encoder === "native") return "available (imagescript's native codec)";
  return `available (${
    format === "jpeg" ? "MozJPEG" : "libwebp"
  } in wasm; the native codec did not load: ${why})`;
}

function ffiPermission(): Deno.PermissionState | "unknown" {
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state;
  } catch {
    return "unknown"; // a runtime without the permissions API
  }
}
