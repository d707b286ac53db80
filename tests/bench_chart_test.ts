/**
 * The bench's bar chart (bench/chart.ts) and `deno task plot`, which draws it from a saved report
 * and a training log's curves: bars and labels from a report, SVG and PNG files.
 */
import assert from "node:assert/strict";
import { benchChartParts, writeBenchChart } from "../bench/chart.ts";
import { decodeImage } from "../core/image_io.ts";

const report = {
  rows: [
    { case: "forward:1x64x64", backend: "webgpu-plan", ms: 14.6, vs_torch: 0.77 },
    { case: "forward:1x64x64", backend: "webgpu", ms: 106.1, vs_torch: 5.61 },
    { case: "forward:1x64x64", backend: "torch 2.11 cuda", ms: 18.9 },
    { case: "train:16x32x32", backend: "webgpu-plan", ms: 110.1, vs_torch: 1.24 },
    { case: "train:16x32x32", backend: "webgpu-plan:f16", ms: NaN, error: "no shader-f16" },
    { case: "train:16x32x32", backend: "torch 2.11 cuda", ms: 88.8 },
  ],
};

Deno.test("bench chart: one bar per row over PyTorch, failed rows and PyTorch's own left out", () => {
  const { svg, labels } = benchChartParts(report);
  const texts = labels.map((l) => l.text);
  assert.equal((svg.match(/<rect x="250"/g) ?? []).length, 3, "three bars");
  for (const t of ["0.77x (14.6 ms)", "5.61x (106 ms)", "1.24x (110 ms)", "PyTorch = 1"]) {
    assert.ok(texts.includes(t), `${t} in ${JSON.stringify(texts)}`);
  }
  assert.ok(!texts.includes("webgpu-plan:f16"), "the failed row has no bar");
  assert.ok(!texts.some((t) => t.startsWith("torch")), "PyTorch is the line at 1, not a bar");
  // green under PyTorch, orange to 1.5x, red past it
  assert.deepEqual([...svg.matchAll(/fill="(#[0-9a-f]+)"\/>/g)].map((m) => m[1]), [
    "#2ca02c",
    "#d62728",
    "#ff7f0e",
  ]);

  // without PyTorch: over the case's fastest row
  const ours = report.rows.filter((r) => !r.backend.startsWith("torch"));
  const alone = benchChartParts({ rows: ours.map(({ vs_torch: _, ...r }) => r) });
  const t2 = alone.labels.map((l) => l.text);
  assert.ok(t2.includes("1.00x (14.6 ms)") && t2.includes("7.27x (106 ms)"), JSON.stringify(t2));
  assert.ok(t2.includes("fastest = 1"));
});

Deno.test("bench chart: SVG and PNG files; deno task plot draws a saved report", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bench_chart_test_" });
  try {
    await writeBenchChart(report, `${dir}/c.svg`);
    assert.match(await Deno.readTextFile(`${dir}/c.svg`), /^<svg [^>]*width="900"/);
    await writeBenchChart(report, `${dir}/c.png`);
    const png = await decodeImage(await Deno.readFile(`${dir}/c.png`));
    assert.equal(png.width, 900);

    await Deno.writeTextFile(`${dir}/report.json`, JSON.stringify(report));
    const run = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "cli/plot.ts", `${dir}/report.json`, "-o", `${dir}/plot.png`],
      cwd: new URL("..", import.meta.url).pathname,
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 0, err);
    assert.match(err, /plot\.png: 6 bench rows/);
    // the same picture (the files differ in the time the encoder stamps in them)
    assert.deepEqual((await decodeImage(await Deno.readFile(`${dir}/plot.png`))).data, png.data);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
