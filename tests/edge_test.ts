/**
 * The edge endpoint over real HTTP on random loopback ports: output equal to the library's (and the
 * CLI's, when it exists), every error status with a JSON body, the queue under 30 concurrent
 * requests, a client abort freeing its slot, and a subprocess under the `serve` task's permissions.
 *
 * The model is a tiny random RRDBNet written to a temp file, so each test runs in seconds.
 * @module
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { type RRDBNetConfig, rrdbnetShapes } from "../core/rrdbnet_arch.ts";
import type { StateDict } from "../core/state_dict.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import { decodeImage, encodeImage, type RgbaImage } from "../core/image_io.ts";
import { DEFAULT_MODEL, Upscaler } from "../core/upscaler.ts";
import { createApp, type EdgeApp, startBackend } from "../edge/app.ts";
import { configFromEnv, type EdgeConfig, modelName } from "../edge/config.ts";
import { shippedModelPath } from "../core/weights/shipped.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const TINY: RRDBNetConfig = { numInCh: 3, numOutCh: 3, scale: 4, numFeat: 8, numBlock: 1, numGrowCh: 4 };

/** A random RRDBNet state dict (small weights, output centred on grey so pixels are not all clamped). */
function tinyStateDict(seed: number): StateDict {
  let s = seed >>> 0;
  const rand = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const sd: StateDict = new Map();
  for (const [name, shape] of rrdbnetShapes(TINY)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const fanIn = shape.length > 1 ? shape[1] * 9 : 1;
    const amp = shape.length > 1 ? Math.sqrt(3 / fanIn) : 0.05;
    for (let i = 0; i < n; i++) data[i] = (2 * rand() - 1) * amp;
    if (name === "conv_last.bias") data.fill(0.5);
    sd.set(name, { shape, data });
  }
  return sd;
}

await startBackend(); // the reference Upscaler below runs in this process too
const modelBytes = encodeModelFile(tinyStateDict(7), { dtype: "fp32" });
const modelPath = await Deno.makeTempFile({ prefix: "edge_tiny_", suffix: ".safetensors" });
await Deno.writeFile(modelPath, modelBytes);
globalThis.addEventListener("unload", () => Deno.removeSync(modelPath));

/** A deterministic test picture: gradients plus a few hard edges. */
function picture(width: number, height: number, alpha = false): RgbaImage {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      data[i] = (x * 255) / width;
      data[i + 1] = (y * 255) / height;
      data[i + 2] = ((x >> 2) + (y >> 2)) % 2 ? 230 : 20;
      data[i + 3] = alpha ? 128 + ((x * 127) / width) : 255;
    }
  }
  return { width, height, data };
}

const png = async (img: RgbaImage) => (await encodeImage(img, { format: "png" })) as Uint8Array<ArrayBuffer>;

function config(over: Partial<EdgeConfig> = {}): EdgeConfig {
  return { ...configFromEnv(() => undefined, { defaultModel: modelPath }), ...over };
}

interface Running {
  app: EdgeApp;
  url: string;
  close(): Promise<void>;
}

/** Serves an app on a random loopback port. */
async function serve(over: Partial<EdgeConfig> = {}): Promise<Running> {
  const app = createApp(config(over));
  await app.ready.catch(() => {});
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  return {
    app,
    url: `http://127.0.0.1:${server.addr.port}`,
    async close() {
      await server.shutdown();
      await app.close();
    },
  };
}

function post(
  url: string,
  body: BodyInit | Uint8Array,
  init: { type?: string; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { ...init.headers };
  if (init.type) headers["content-type"] = init.type;
  return fetch(url, { method: "POST", body: body as BodyInit, headers });
}

/** Asserts an error status with a JSON `{"error": "..."}` body and returns the message. */
async function expectError(res: Response, status: number, pattern?: RegExp): Promise<string> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  const body = JSON.parse(text);
  assert.equal(typeof body.error, "string");
  assert.ok(body.error.length > 0);
  if (pattern) assert.match(body.error, pattern);
  return body.error;
}

async function health(url: string) {
  return await (await fetch(`${url}/healthz`)).json();
}

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test("configFromEnv: EDGE_MODEL is a file or a shipped model's name", () => {
  const model = (v?: string) =>
    configFromEnv((k) => (k === "EDGE_MODEL" ? v : undefined), { defaultModel: "d.safetensors" }).model;
  assert.equal(model(), "d.safetensors");
  assert.equal(model(" my/model.safetensors "), "my/model.safetensors");
  assert.equal(model("realesrgan-x4plus-anime"), shippedModelPath("realesrgan-x4plus-anime"));
  // several, comma-separated: the first is the default, the others are chosen by name
  const env = (v: string) =>
    configFromEnv((k) => (k === "EDGE_MODEL" ? v : undefined), { defaultModel: "d" });
  const two = env("realesrgan-x4plus, realesrgan-x4plus-anime");
  assert.equal(two.model, shippedModelPath("realesrgan-x4plus"));
  assert.deepEqual(two.moreModels, [shippedModelPath("realesrgan-x4plus-anime")]);
  assert.deepEqual([two.model, ...two.moreModels].map(modelName), [
    "realesrgan-x4plus",
    "realesrgan-x4plus-anime",
  ]);
  assert.deepEqual(env("a/x.safetensors,b/y.fp16.safetensors").moreModels, ["b/y.fp16.safetensors"]);
  assert.equal(modelName("b/y.fp16.safetensors"), "y");
  assert.deepEqual(env("m.safetensors").moreModels, []);
  assert.throws(() => env("a.safetensors,,b.safetensors"), /EDGE_MODEL=.*an empty model in the list/);
  assert.throws(() => env("a/m.safetensors,b/m.int8.safetensors"), /two models named "m"/);
});

Deno.test("configFromEnv: EDGE_LOW_MEMORY packs the CPU kernels' filters per tile unless 0", () => {
  const low = (v?: string) =>
    configFromEnv((k) => (k === "EDGE_LOW_MEMORY" ? v : undefined), { defaultModel: "d" }).lowMemory;
  assert.equal(low(), true);
  assert.equal(low("0"), false);
  assert.equal(low(" 1 "), true);
  assert.throws(() => low("yes"), /EDGE_LOW_MEMORY=yes: expected 0 or 1/);
});

Deno.test("edge: several models, one chosen per request by ?model=; /healthz lists them", opts, async () => {
  const secondPath = await Deno.makeTempFile({ prefix: "edge_second_", suffix: ".fp32.safetensors" });
  const secondBytes = encodeModelFile(tinyStateDict(11), { dtype: "fp32" });
  await Deno.writeFile(secondPath, secondBytes);
  const second = modelName(secondPath);
  const srv = await serve({ moreModels: [secondPath] });
  try {
    const h = await health(srv.url);
    assert.equal(h.ready, true);
    assert.deepEqual(h.models.map((m: { name: string }) => m.name), [modelName(modelPath), second]);
    assert.equal(h.models[1].file, secondPath.split("/").pop());
    assert.deepEqual(h.models[1].config, TINY);
    assert.equal(h.model.file, modelPath.split("/").pop(), "model: the default");
    assert.equal(h.limits.moreModels, undefined, "files stay private");
    const body = await png(picture(21, 17));
    const outputs = [];
    for (const [q, bytes] of [["", modelBytes], [`?model=${second}`, secondBytes]] as const) {
      const res = await post(`${srv.url}/v1/upscale${q}`, body, { type: "image/png" });
      assert.equal(res.status, 200, await res.clone().text());
      const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      const ref = Upscaler.fromBytes(bytes);
      assert.deepEqual(
        out.data,
        (await ref.upscale(await decodeImage(body))).data,
        `model ${q || "default"}`,
      );
      ref.dispose();
      outputs.push(out.data);
    }
    assert.notDeepEqual(outputs[0], outputs[1], "two different models ran");
    await expectError(
      await post(`${srv.url}/v1/upscale?model=nope`, body, { type: "image/png" }),
      400,
      new RegExp(`model=nope: expected one of ${modelName(modelPath)}, ${second}`),
    );
  } finally {
    await srv.close();
    await Deno.remove(secondPath);
  }
  // one that cannot load fails the instance, naming it
  const bad = await serve({ moreModels: [`${modelPath}.missing`] });
  try {
    const h = await health(bad.url);
    assert.equal(h.status, "failed");
    assert.match(h.error, new RegExp(`cannot load model .*\\.missing`));
  } finally {
    await bad.close();
  }
});

Deno.test(
  "edge: PNG in, 4x PNG out, equal to the library's output for the same model and input",
  opts,
  async () => {
    const srv = await serve({ tile: 16, tilePad: 4 });
    try {
      const img = picture(37, 29); // odd sizes: two tiles each way with seams
      const body = await png(img);
      const res = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get("content-type"), "image/png");
      const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      assert.equal(out.width, 37 * 4);
      assert.equal(out.height, 29 * 4);

      const ref = Upscaler.fromBytes(modelBytes);
      const expected = await ref.upscale(await decodeImage(body), { tile: 16, tilePad: 4 });
      ref.dispose();
      assert.deepEqual(out.data, expected.data);
      // Not a degenerate model: the output has real variation.
      assert.ok(new Set(out.data).size > 50);

      // The same bytes as a multipart form field give the same image.
      const form = new FormData();
      form.append("image", new File([body], "in.png", { type: "image/png" }));
      const res2 = await fetch(`${srv.url}/v1/upscale`, { method: "POST", body: form });
      assert.equal(res2.status, 200);
      assert.deepEqual((await decodeImage(new Uint8Array(await res2.arrayBuffer()))).data, expected.data);

      // outscale resamples; alpha survives, through the model or resized (alpha=bicubic)
      const alphas: Uint8ClampedArray[] = [];
      for (const q of ["", "&alpha=bicubic"]) {
        const res3 = await post(`${srv.url}/v1/upscale?outscale=2${q}`, await png(picture(20, 12, true)), {
          type: "image/png",
        });
        assert.equal(res3.status, 200);
        const out3 = await decodeImage(new Uint8Array(await res3.arrayBuffer()));
        assert.deepEqual([out3.width, out3.height], [40, 24]);
        alphas.push(out3.data.filter((_, i) => i % 4 === 3));
      }
      assert.ok(alphas[1].some((v) => v < 255), "bicubic keeps the transparency");
      assert.notDeepEqual(alphas[0], alphas[1], "alpha=net (the default) is not bicubic");
      await expectError(
        await post(`${srv.url}/v1/upscale?alpha=nearest`, body, { type: "image/png" }),
        400,
        /alpha=nearest: expected net or bicubic/,
      );
    } finally {
      await srv.close();
    }
  },
);

const CLI = `${ROOT}cli/upscale.ts`;
Deno.test({
  name: "edge: output equals the upscale CLI's for the same model and input",
  ignore: !existsSync(CLI) && (console.warn("skipping the CLI comparison: cli/upscale.ts is absent"), true),
  ...opts,
  async fn() {
    const srv = await serve();
    const dir = await Deno.makeTempDir();
    try {
      const body = await png(picture(40, 33));
      await Deno.writeFile(`${dir}/in.png`, body);
      const cli = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, `${dir}/in.png`, "-o", `${dir}/out.png`, "--model", modelPath],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(cli.success, new TextDecoder().decode(cli.stderr));
      const res = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(res.status, 200);
      const fromServer = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      const fromCli = await decodeImage(await Deno.readFile(`${dir}/out.png`));
      assert.deepEqual([fromServer.width, fromServer.height], [fromCli.width, fromCli.height]);
      assert.deepEqual(fromServer.data, fromCli.data);
    } finally {
      await Deno.remove(dir, { recursive: true });
      await srv.close();
    }
  },
});

Deno.test(
  "edge: /healthz reports model, backend, limits and readiness; the page is served",
  opts,
  async () => {
    const srv = await serve({ maxPixels: 1234, maxQueue: 3 });
    try {
      const res = await fetch(`${srv.url}/healthz`);
      assert.equal(res.status, 200);
      const h = await res.json();
      assert.equal(h.ready, true);
      assert.equal(h.status, "ready");
      assert.equal(h.model.file, modelPath.split("/").pop());
      assert.equal(h.model.dtype, "fp32");
      assert.equal(h.model.scale, 4);
      assert.deepEqual(h.model.config, TINY);
      assert.ok(["wasm", "webgpu", "cpu"].includes(h.backend.name));
      assert.equal(h.limits.maxPixels, 1234);
      assert.equal(h.limits.maxQueue, 3);
      for (const k of ["maxBodyBytes", "maxConcurrent", "timeoutMs", "maxOutscale"]) {
        assert.equal(typeof h.limits[k], "number", k);
      }
      assert.deepEqual(h.jobs, { active: 0, queued: 0, served: 0 });

      const page = await fetch(`${srv.url}/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type")!, /^text\/html/);
      const html = await page.text();
      assert.match(html, /<input type="file" id="file"/);
      assert.match(html, /\/v1\/upscale/);
    } finally {
      await srv.close();
    }

    // A model that cannot load: not ready, and upscale requests get 503 with the reason.
    const bad = await serve({ model: `${modelPath}.missing` });
    try {
      const res = await fetch(`${bad.url}/healthz`);
      assert.equal(res.status, 503);
      const h = await res.json();
      assert.equal(h.ready, false);
      assert.equal(h.status, "failed");
      assert.match(h.error, /not found/);
      await expectError(
        await post(`${bad.url}/v1/upscale`, await png(picture(8, 8)), { type: "image/png" }),
        503,
        /model unavailable/,
      );
    } finally {
      await bad.close();
    }
  },
);

Deno.test("edge: every error status comes with a JSON error body", opts, async () => {
  const srv = await serve({
    maxBodyBytes: 20_000,
    maxPixels: 48 * 48,
    token: "s3cret",
    corsOrigins: ["https://ok.test"],
  });
  const auth = { authorization: "Bearer s3cret" };
  const up = `${srv.url}/v1/upscale`;
  try {
    const small = await png(picture(16, 16));
    assert.equal((await post(up, small, { type: "image/png", headers: auth })).status, 200);

    await expectError(await fetch(`${srv.url}/nope`), 404);
    const r405 = await fetch(up);
    await expectError(r405, 405);
    assert.match(r405.headers.get("allow")!, /POST/);

    // 401: no token, wrong token.
    const r401 = await post(up, small, { type: "image/png" });
    await expectError(r401, 401, /missing bearer token/);
    assert.match(r401.headers.get("www-authenticate")!, /^Bearer/);
    await expectError(
      await post(up, small, { type: "image/png", headers: { authorization: "Bearer nope" } }),
      401,
    );

    // 415: a type that is not an image upload.
    await expectError(
      await post(up, small, { type: "text/plain", headers: auth }),
      415,
      /unsupported content type/,
    );
    await expectError(await post(up, small, { headers: auth }), 415);

    // 413: body over the byte limit (declared and streamed), and pixels over the limit from the header.
    const big = new Uint8Array(30_000);
    big.set(small);
    await expectError(await post(up, big, { type: "image/png", headers: auth }), 413, /20000 bytes/);
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < 30; i++) c.enqueue(new Uint8Array(1000));
        c.close();
      },
    });
    await expectError(await post(up, stream, { type: "image/png", headers: auth }), 413, /20000 bytes/);
    // A PNG header claiming 1000x1000: refused from the header, the limit in the message.
    const claim = new Uint8Array(small);
    new DataView(claim.buffer).setUint32(16, 1000);
    new DataView(claim.buffer).setUint32(20, 1000);
    await expectError(
      await post(up, claim, { type: "image/png", headers: auth }),
      413,
      /1000x1000.*2304 pixels/,
    );

    // 400: not an image, unsupported format, truncated, corrupt data, bad multipart, bad parameters.
    await expectError(
      await post(up, new Uint8Array(100).fill(7), { type: "image/png", headers: auth }),
      400,
      /not an image/,
    );
    const gif = new TextEncoder().encode("GIF89a" + "\0".repeat(40));
    await expectError(await post(up, gif, { type: "image/png", headers: auth }), 400, /GIF/);
    await expectError(
      await post(up, small.subarray(0, 60), { type: "image/png", headers: auth }),
      400,
      /truncated/,
    );
    const corrupt = new Uint8Array(small);
    for (let i = 60; i < corrupt.length - 20; i++) corrupt[i] ^= 0x5a;
    await expectError(await post(up, corrupt, { type: "image/png", headers: auth }), 400);
    await expectError(await post(up, new Uint8Array(0), { type: "image/jpeg", headers: auth }), 400, /empty/);
    const noField = new FormData();
    noField.append("picture", new File([small], "a.png"));
    await expectError(await fetch(up, { method: "POST", body: noField, headers: auth }), 400, /"image"/);
    for (const q of ["outscale=9", "outscale=0", "outscale=abc", "format=bmp", "quality=0", "quality=2.5"]) {
      await expectError(await post(`${up}?${q}`, small, { type: "image/png", headers: auth }), 400);
    }

    // CORS: an allowed origin is named back, another is not; preflight answers 204.
    const allowed = await fetch(`${srv.url}/healthz`, { headers: { origin: "https://ok.test" } });
    await allowed.body?.cancel();
    assert.equal(allowed.headers.get("access-control-allow-origin"), "https://ok.test");
    const other = await fetch(`${srv.url}/healthz`, { headers: { origin: "https://evil.test" } });
    await other.body?.cancel();
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    const pre = await fetch(up, {
      method: "OPTIONS",
      headers: { origin: "https://ok.test", "access-control-request-method": "POST" },
    });
    await pre.body?.cancel();
    assert.equal(pre.status, 204);
    assert.match(pre.headers.get("access-control-allow-headers")!, /authorization/);
    const denied401 = await post(up, small, { type: "image/png", headers: { origin: "https://ok.test" } });
    assert.equal(denied401.headers.get("access-control-allow-origin"), "https://ok.test"); // errors readable too
    await expectError(denied401, 401);
  } finally {
    await srv.close();
  }

  // 503 with Retry-After: one slot, no queue, a long job holding it.
  const busy = await serve({ maxConcurrent: 1, maxQueue: 0, tile: 8, tilePad: 2, maxPixels: 1 << 20 });
  try {
    const slow = post(`${busy.url}/v1/upscale`, await png(picture(48, 48)), { type: "image/png" });
    await waitFor(async () => (await health(busy.url)).jobs.active === 1);
    const r503 = await post(`${busy.url}/v1/upscale`, await png(picture(8, 8)), { type: "image/png" });
    await expectError(r503, 503, /busy/);
    assert.match(r503.headers.get("retry-after")!, /^[1-9]\d*$/);
    const done = await slow;
    assert.equal(done.status, 200);
    await done.body?.cancel();
  } finally {
    await busy.close();
  }

  // 504: the time limit passes while the job runs; the job stops and frees its slot. The job (4,096
  // tiles) takes seconds: the limit, not the yields between tiles, must decide.
  const late = await serve({ timeoutMs: 300, tile: 8, tilePad: 2, maxPixels: 1 << 20 });
  try {
    const t0 = performance.now();
    const r504 = await post(`${late.url}/v1/upscale`, await png(picture(512, 512)), { type: "image/png" });
    await expectError(r504, 504, /300 ms/);
    assert.ok(performance.now() - t0 < 5000, "the 504 came long after the limit");
    await waitFor(async () => (await health(late.url)).jobs.active === 0);
  } finally {
    await late.close();
  }
});

/** Polls `cond` every 10 ms until it holds (throws after `ms`). */
async function waitFor(cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test(
  "edge: 30 concurrent requests with limit 2 and queue 4 → each 200 or 503; memory back near its start",
  opts,
  async () => {
    // A server process of its own, so that its memory is not mixed with the test runner's.
    const srv = await spawnServer(["run", ...servePermissions(modelPath), "edge/serve.ts"], {
      PORT: "0",
      HOST: "127.0.0.1",
      EDGE_MODEL: modelPath,
      EDGE_MAX_CONCURRENT: "2",
      EDGE_MAX_QUEUE: "4",
      EDGE_TILE: "32",
      EDGE_TILE_PAD: "4",
    });
    try {
      const body = await png(picture(48, 40));
      const round = async () => {
        const all = await Promise.all(
          Array.from({ length: 30 }, () => post(`${srv.url}/v1/upscale`, body, { type: "image/png" })),
        );
        const counts: Record<number, number> = {};
        for (const res of all) {
          counts[res.status] = (counts[res.status] ?? 0) + 1;
          if (res.status === 200) {
            const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
            assert.deepEqual([out.width, out.height], [192, 160]);
          } else {
            await expectError(res, 503, /busy/);
            assert.ok(Number(res.headers.get("retry-after")) >= 1);
          }
        }
        assert.deepEqual(Object.keys(counts).filter((s) => s !== "200" && s !== "503"), []);
        // At least the slots and the queue were served; all 30 at once cannot have been.
        assert.ok(counts[200] >= 6, JSON.stringify(counts));
        assert.ok(counts[503] >= 1, JSON.stringify(counts));
        return counts;
      };
      // Loaded and warmed by one request first: the start is the idle, ready server.
      const warm = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(warm.status, 200);
      await warm.body?.cancel();
      const h0 = await health(srv.url);
      const first = await round();
      const h1 = await health(srv.url);
      const second = await round();
      const h2 = await health(srv.url);
      const [rss0, rss1, rss2] = [h0, h1, h2].map((h) => h.memory.rssBytes);
      const mb = (n: number) => (n / 2 ** 20).toFixed(1);
      console.log(
        `rounds ${JSON.stringify(first)} ${JSON.stringify(second)}; rss ${mb(rss0)} → ${mb(rss1)} → ${
          mb(rss2)
        } MiB; tensors ${h0.memory.tensors} → ${h2.memory.tensors}`,
      );
      assert.deepEqual(h2.jobs, { active: 0, queued: 0, served: h0.jobs.served + first[200] + second[200] });
      // Every tensor a job made is gone, and a second round does not grow the process.
      assert.equal(h2.memory.tensors, h0.memory.tensors);
      assert.equal(h2.memory.tensorBytes, h0.memory.tensorBytes);
      assert.ok(rss2 - rss1 < 64 * 2 ** 20, `rss grew ${mb(rss2 - rss1)} MiB in the second round`);
      assert.ok(rss2 - rss0 < 256 * 2 ** 20, `rss grew ${mb(rss2 - rss0)} MiB overall`);
    } finally {
      await srv.stop();
    }
  },
);

Deno.test("edge: a client that disconnects cancels its job and frees its slot at once", opts, async () => {
  const srv = await serve({ maxConcurrent: 1, maxQueue: 0, tile: 4, tilePad: 1 });
  try {
    // A flat 96x64 image: under 200 bytes of PNG, 384 tiles of work (the whole job must outlast the
    // disconnect by far). The upload must be tiny: Deno 2.9's server notices a closed connection
    // during the handler only when the body came in the first read (a few hundred bytes); after a
    // larger upload it notices only once the answer is written.
    const flat = picture(96, 64);
    flat.data.fill(128).forEach((_, i) => i % 4 === 3 && (flat.data[i] = 255));
    const slowBody = await png(flat);
    assert.ok(slowBody.length < 200, `${slowBody.length} bytes`);
    const quick = await png(picture(8, 8));
    // The whole slow job, for scale.
    let t0 = performance.now();
    const full = await post(`${srv.url}/v1/upscale`, slowBody, { type: "image/png" });
    assert.equal(full.status, 200);
    await full.body?.cancel();
    const fullMs = performance.now() - t0;

    // A raw connection, closed mid-job: Deno's fetch keeps the socket open after an abort, a browser
    // or curl that goes away closes it.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(srv.url).port) });
    const head = `POST /v1/upscale HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\n` +
      `content-length: ${slowBody.length}\r\nconnection: close\r\n\r\n`;
    await conn.write(new TextEncoder().encode(head));
    await conn.write(slowBody);
    await waitFor(async () => (await health(srv.url)).jobs.active === 1);
    conn.close();
    t0 = performance.now();
    // With one slot and no queue, a 200 here means the slot was free again.
    await waitFor(async () => (await health(srv.url)).jobs.active === 0, fullMs);
    const next = await post(`${srv.url}/v1/upscale`, quick, { type: "image/png" });
    const nextMs = performance.now() - t0;
    assert.equal(next.status, 200, await next.clone().text());
    await next.body?.cancel();
    console.log(
      `full slow job ${fullMs.toFixed(0)} ms; after the abort the next job was done in ${
        nextMs.toFixed(0)
      } ms`,
    );
    assert.ok(nextMs < fullMs / 2, `next job took ${nextMs} ms, the slow one ${fullMs} ms`);
    const h = await health(srv.url);
    assert.equal(h.jobs.served, 2); // the aborted one is not counted
  } finally {
    await srv.close();
  }
});

/** The `serve` task's permission flags from deno.json, with `extraRead` added to --allow-read. */
function servePermissions(extraRead: string): string[] {
  const task: string = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks.serve;
  const flags = task.split(/\s+/).filter((a) => a.startsWith("--"));
  assert.ok(
    flags.some((f) => f.startsWith("--allow-read=")) && !flags.includes("-A") &&
      !flags.includes("--allow-all"),
  );
  return flags.map((f) => f.startsWith("--allow-read=") ? `${f},${extraRead}` : f);
}

/** Starts a server subprocess and resolves with its URL once it prints where it listens. */
async function spawnServer(args: string[], env: Record<string, string>) {
  const proc = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  const collect = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) log += chunk;
  };
  const drained = Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  const end = performance.now() + 60_000;
  let url: string | undefined;
  while (!url) {
    url = /listening on (http:\/\/[\d.]+:\d+)\//i.exec(log)?.[1];
    if (performance.now() > end) {
      proc.kill();
      throw new Error(`server did not start:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url: url.replace("0.0.0.0", "127.0.0.1"),
    get log() {
      return log;
    },
    async stop() {
      proc.kill("SIGTERM"); // main.ts exits on SIGTERM once jobs in flight are done
      const status = await proc.status;
      assert.equal(status.code, 0, log);
      await drained;
    },
  };
}

Deno.test(
  "edge: `deno task serve`'s narrow permissions suffice (subprocess): cold start, PNG and JPEG in and out",
  opts,
  async () => {
    const t0 = performance.now();
    const srv = await spawnServer(["run", ...servePermissions(modelPath), "edge/serve.ts"], {
      PORT: "0",
      HOST: "127.0.0.1",
      EDGE_MODEL: modelPath,
    });
    try {
      const body = await png(picture(30, 22));
      // The first request waits for the model: process start to this 200 is the cold start.
      const res = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(res.status, 200, await res.clone().text());
      const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      console.log(
        `subprocess cold start (spawn → first 200, tiny model): ${(performance.now() - t0).toFixed(0)} ms`,
      );
      const ref = Upscaler.fromBytes(modelBytes);
      assert.deepEqual(out.data, (await ref.upscale(await decodeImage(body))).data);
      ref.dispose();

      // A real JPEG in: its decoder's wasm must be readable under these flags.
      const jpegIn = (await encodeImage(picture(30, 22), { format: "jpeg", quality: 90 })) as Uint8Array<
        ArrayBuffer
      >;
      const fromJpeg = await post(`${srv.url}/v1/upscale`, jpegIn, { type: "image/jpeg" });
      assert.equal(fromJpeg.status, 200, await fromJpeg.clone().text());
      assert.equal((await decodeImage(new Uint8Array(await fromJpeg.arrayBuffer()))).width, 30 * 4);
      // and WebP's
      const webpIn = (await encodeImage(picture(30, 22), { format: "webp" })) as Uint8Array<ArrayBuffer>;
      const fromWebp = await post(`${srv.url}/v1/upscale`, webpIn, { type: "image/webp" });
      assert.equal(fromWebp.status, 200, await fromWebp.clone().text());
      assert.equal((await decodeImage(new Uint8Array(await fromWebp.arrayBuffer()))).width, 30 * 4);

      const jpeg = await post(`${srv.url}/v1/upscale?format=jpeg&quality=80`, body, { type: "image/jpeg" });
      assert.equal(jpeg.status, 200, await jpeg.clone().text());
      assert.equal(jpeg.headers.get("content-type"), "image/jpeg");
      const jpegBytes = new Uint8Array(await jpeg.arrayBuffer());
      assert.deepEqual([...jpegBytes.subarray(0, 2)], [0xff, 0xd8]);
      const h = await health(srv.url);
      assert.equal(h.limits.outputFormats.jpeg, "available (imagescript's native codec)");
      assert.equal(h.backend.name, "wasm"); // no real GPU here
    } finally {
      await srv.stop();
    }
    assert.doesNotMatch(srv.log, /NotCapable|Requires .* access/);
  },
);

Deno.test(
  "edge: main.ts is `deno serve`-able under the same permissions; without FFI, JPEG and WebP come from wasm",
  opts,
  async () => {
    // As on Deno Deploy, which has no FFI: JPEG and WebP come from jSquash's wasm encoders, as /healthz says.
    const flags = servePermissions(modelPath).filter((f) => !f.startsWith("--allow-ffi"));
    const srv = await spawnServer(
      ["serve", "--host", "127.0.0.1", "--port", "0", ...flags, "edge/main.ts"],
      { EDGE_MODEL: modelPath, EDGE_MAX_PIXELS: "777" },
    );
    try {
      const body = await png(picture(12, 10));
      const res = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(res.status, 200, await res.clone().text());
      const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      assert.deepEqual([out.width, out.height], [48, 40]);
      assert.equal((await health(srv.url)).limits.maxPixels, 777);
      for (const [format, head] of [["jpeg", [0xff, 0xd8]], ["webp", [0x52, 0x49, 0x46, 0x46]]] as const) {
        const res = await post(`${srv.url}/v1/upscale?format=${format}`, body, { type: "image/png" });
        assert.equal(res.status, 200, await res.clone().text());
        const bytes = new Uint8Array(await res.arrayBuffer());
        assert.deepEqual([...bytes.subarray(0, head.length)], head);
        assert.deepEqual([(await decodeImage(bytes)).width, (await decodeImage(bytes)).height], [48, 40]);
      }
      const formats = (await health(srv.url)).limits.outputFormats;
      assert.match(formats.jpeg, /^available \(MozJPEG in wasm; the native codec did not load: /);
      assert.match(formats.webp, /^available \(libwebp in wasm; /);
    } finally {
      await srv.stop();
    }
  },
);

Deno.test({
  name: "edge: the shipped default model over HTTP equals the library on a tiny image",
  ignore: !existsSync(DEFAULT_MODEL) &&
    (console.warn(`skipping the shipped-model test: ${DEFAULT_MODEL} is absent`), true),
  ...opts,
  async fn() {
    const srv = await serve({ model: DEFAULT_MODEL });
    try {
      assert.equal((await health(srv.url)).model.config.numBlock, 23);
      const body = await png(picture(12, 10));
      const res = await post(`${srv.url}/v1/upscale`, body, { type: "image/png" });
      assert.equal(res.status, 200, await res.clone().text());
      const out = await decodeImage(new Uint8Array(await res.arrayBuffer()));
      const ref = await Upscaler.load(DEFAULT_MODEL);
      try {
        assert.deepEqual(out.data, (await ref.upscale(await decodeImage(body))).data);
      } finally {
        ref.dispose();
      }
    } finally {
      await srv.close();
    }
  },
});
