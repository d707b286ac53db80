/**
 * The try-it page at `GET /`, driven in headless Chromium (Debian's `/usr/bin/chromium` through
 * playwright-core): pick a PNG, press Upscale, and the 4x image is shown beside the original.
 * Leaves a screenshot at `out/edge_page.png`. Skips when Chromium is not installed.
 *
 * With the shipped model present it upscales a real photograph (Set5's 64x64 butterfly from
 * ../shared when there); otherwise a tiny random model and a synthetic picture.
 * @module
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { rrdbnetShapes } from "../core/rrdbnet_arch.ts";
import type { StateDict } from "../core/state_dict.ts";
import { encodeModelFile } from "../core/weights/model_file.ts";
import { encodeImage, readImageHeader } from "../core/image_io.ts";
import { DEFAULT_MODEL } from "../core/upscaler.ts";
import { createApp } from "../edge/app.ts";
import { configFromEnv } from "../edge/config.ts";
import { SHARED } from "./shared.ts";

const CHROMIUM = "/usr/bin/chromium";
const ROOT = new URL("../", import.meta.url).pathname;
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(`skipping the page test: ${CHROMIUM} is absent (apt-get install -y chromium)`);
}

/** A tiny random RRDBNet, for when the shipped weights are absent. */
function tinyModel(): Uint8Array {
  const sd: StateDict = new Map();
  let seed = 3;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  const cfg = { numInCh: 3, numOutCh: 3, scale: 4 as const, numFeat: 8, numBlock: 1, numGrowCh: 4 };
  for (const [name, shape] of rrdbnetShapes(cfg)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const amp = shape.length > 1 ? Math.sqrt(3 / (shape[1] * 9)) : 0.05;
    const data = Float32Array.from({ length: n }, () => rand() * amp);
    if (name === "conv_last.bias") data.fill(0.5);
    sd.set(name, { shape, data });
  }
  return encodeModelFile(sd, { dtype: "fp32" });
}

async function inputImage(dir: string): Promise<string> {
  const butterfly = SHARED ? `${SHARED}/data/bench/Set5/x4/img_003_SRF_4_LR.png` : null;
  if (butterfly && existsSync(butterfly)) return butterfly;
  const w = 48, h = 40;
  const data = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    const x = i % w, y = Math.floor(i / w);
    data.set([x * 5, y * 6, ((x >> 3) + (y >> 3)) % 2 ? 220 : 40, 255], 4 * i);
  }
  const path = `${dir}/picture.png`;
  await Deno.writeFile(path, await encodeImage({ width: w, height: h, data }, { format: "png" }));
  return path;
}

Deno.test({
  name: "edge page: upload a PNG in headless Chromium and see the upscaled image",
  ignore: !haveChromium,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "edge_page_" });
    let model = DEFAULT_MODEL;
    if (!existsSync(model)) {
      console.warn(`${DEFAULT_MODEL} is absent: the page test uses a tiny random model`);
      model = `${dir}/tiny.safetensors`;
      await Deno.writeFile(model, tinyModel());
    }
    const app = createApp({ ...configFromEnv(() => undefined, { defaultModel: model }), timeoutMs: 600_000 });
    await app.ready;
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    const context = await chromium.launchPersistentContext(`${dir}/profile`, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1000, height: 800 },
    });
    try {
      const page = await context.newPage();
      const pageErrors: string[] = [];
      page.on("pageerror", (e) => pageErrors.push(e.message));
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      // Browser-side code goes as strings: this file is type-checked without the DOM library. Polled
      // with evaluate: waitForFunction's in-page polling evals the string, which the page's CSP
      // (script-src without 'unsafe-eval') refuses whenever the condition is not true at once.
      const until = async (expr: string, timeoutMs = 60_000) => {
        for (const t0 = performance.now(); !(await page.evaluate<boolean>(expr));) {
          if (performance.now() - t0 > timeoutMs) throw new Error(`edge page: timed out waiting for ${expr}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await until('/ready/.test(document.getElementById("info").textContent)');

      const input = await inputImage(dir);
      const { width, height } = readImageHeader(await Deno.readFile(input));
      await page.setInputFiles("#file", input);
      const t0 = performance.now();
      await page.click("#go");
      await page.waitForSelector("#result:not(.hidden)", { timeout: 300_000 });
      const ms = performance.now() - t0;
      const shown = await page.evaluate<{ after: number[]; status: string; error: string }>(`(() => {
        const after = document.getElementById("after");
        return {
          after: [after.naturalWidth, after.naturalHeight],
          status: document.getElementById("status").textContent,
          error: document.getElementById("status").className,
        };
      })()`);
      assert.deepEqual(shown.after, [width * 4, height * 4], JSON.stringify(shown));
      assert.equal(shown.error, "");
      assert.match(shown.status ?? "", /^Done in/);
      await until('document.getElementById("before").complete');
      // Move the split to the middle, then keep the picture of the result.
      await page.locator("#slider").fill("50");
      await Deno.mkdir(`${ROOT}out`, { recursive: true });
      await page.screenshot({ path: `${ROOT}out/edge_page.png`, fullPage: true });
      console.log(
        `page: ${width}x${height} → ${shown.after.join("x")} with ${model} in ${(ms / 1000).toFixed(1)} s; ` +
          `screenshot ${ROOT}out/edge_page.png`,
      );
      assert.deepEqual(pageErrors, []);
    } finally {
      await context.close();
      await server.shutdown();
      await app.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
