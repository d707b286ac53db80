/**
 * The page served at `GET /`: pick an image, upscale it through `POST /v1/upscale`, compare before
 * and after with a slider. Self-contained (no external assets), so it works offline and under a
 * strict Content-Security-Policy.
 * @module
 */

/** The HTML of the try-it page. */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ESRGAN upscaler</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #222; background: #f6f6f4; }
  body { max-width: 980px; margin: 0 auto; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 4px; }
  .muted { color: #666; font-size: .9rem; }
  form { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; margin: 16px 0; }
  label { display: flex; flex-direction: column; font-size: .85rem; gap: 4px; }
  button { padding: 8px 18px; font-size: 1rem; cursor: pointer; }
  #status { min-height: 1.4em; margin: 8px 0; }
  #status.error { color: #b00020; }
  .compare { position: relative; display: inline-block; max-width: 100%; border: 1px solid #ccc;
    background: repeating-conic-gradient(#ddd 0 25%, #fff 0 50%) 0 0 / 16px 16px; line-height: 0; }
  .compare img { display: block; max-width: 100%; height: auto; image-rendering: auto; }
  .compare #before { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated;
    clip-path: inset(0 50% 0 0); }
  .compare .tag { position: absolute; top: 6px; padding: 2px 6px; font-size: 12px; line-height: 1.4;
    background: rgba(0,0,0,.6); color: #fff; border-radius: 3px; }
  #slider { width: 100%; max-width: 100%; display: block; margin: 8px 0; }
  .hidden { display: none !important; }
</style>
</head>
<body>
<h1>ESRGAN upscaler</h1>
<div class="muted" id="info">Loading model information…</div>
<form id="form">
  <label>Image (PNG, JPEG or WebP)<input type="file" id="file" accept="image/png,image/jpeg,image/webp" required></label>
  <label id="modelLabel" class="hidden">Model<select id="model"></select></label>
  <label>Output scale<select id="outscale"><option>4</option><option>3</option><option>2</option>
    <option>1</option></select></label>
  <label>Format<select id="format"><option>png</option><option>jpeg</option><option>webp</option></select></label>
  <label id="tokenLabel" class="hidden">Token<input type="password" id="token" autocomplete="off"></label>
  <button id="go" type="submit">Upscale</button>
</form>
<div id="status" role="status"></div>
<div id="result" class="hidden">
  <div class="compare" id="compare">
    <img id="after" alt="upscaled image">
    <img id="before" alt="original image, scaled up by the browser">
    <span class="tag" style="left:6px">before</span><span class="tag" style="right:6px">after</span>
  </div>
  <input type="range" id="slider" min="0" max="100" value="50" aria-label="before/after split">
  <div class="muted" id="sizes"></div>
  <a id="download" download>Download the upscaled image</a>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let urls = [];
function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}
fetch("/healthz").then((r) => r.json()).then((h) => {
  const m = h.model || {}, b = h.backend || {}, l = h.limits || {};
  $("info").textContent = "model " + m.file + (m.scale ? " (x" + m.scale + ")" : "") + " on " +
    (b.name || "?") + " · " + (h.ready ? "ready" : h.status) + " · up to " + l.maxPixels + " input pixels, " +
    Math.round(l.maxBodyBytes / 1024) + " KiB";
  if (l.auth) $("tokenLabel").classList.remove("hidden");
  const models = h.models || [];
  if (models.length > 1) {
    for (const md of models) {
      const o = document.createElement("option");
      o.value = md.name;
      o.textContent = md.name + (md.scale ? " (x" + md.scale + ")" : "");
      $("model").append(o);
    }
    $("modelLabel").classList.remove("hidden");
  }
}).catch(() => { $("info").textContent = "health check failed"; });
$("slider").addEventListener("input", (e) => {
  $("before").style.clipPath = "inset(0 " + (100 - e.target.value) + "% 0 0)";
});
$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  for (const u of urls) URL.revokeObjectURL(u);
  urls = [];
  $("go").disabled = true;
  setStatus("Upscaling " + file.name + "…");
  const started = performance.now();
  try {
    const body = new FormData();
    body.append("image", file);
    const q = new URLSearchParams({ outscale: $("outscale").value, format: $("format").value });
    if ($("model").value) q.set("model", $("model").value);
    const headers = $("token").value ? { authorization: "Bearer " + $("token").value } : {};
    const res = await fetch("/v1/upscale?" + q, { method: "POST", body, headers });
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    const out = await res.blob();
    const afterUrl = URL.createObjectURL(out), beforeUrl = URL.createObjectURL(file);
    urls.push(afterUrl, beforeUrl);
    await new Promise((ok, fail) => { $("after").onload = ok; $("after").onerror = fail; $("after").src = afterUrl; });
    $("before").src = beforeUrl;
    // Small results are shown at least 512 px wide, so the detail is visible.
    const shownWidth = Math.min(960, Math.max(512, $("after").naturalWidth)) + "px";
    $("after").style.width = $("slider").style.width = shownWidth;
    $("download").href = afterUrl;
    $("download").download = file.name.replace(/\\.[^.]*$/, "") + "_x" + $("outscale").value + "." + $("format").value;
    $("sizes").textContent = "output " + $("after").naturalWidth + "x" + $("after").naturalHeight + ", " +
      Math.round(out.size / 1024) + " KiB";
    $("result").classList.remove("hidden");
    setStatus("Done in " + ((performance.now() - started) / 1000).toFixed(1) + " s (server " +
      res.headers.get("x-upscale-ms") + " ms).");
  } catch (err) {
    setStatus("Failed: " + err.message, true);
  } finally {
    $("go").disabled = false;
  }
});
</script>
</body>
</html>
`;
