/**
 * Entry points the other tests do not import (the benches, the GPU session's bundle, the CLIs) still
 * type-check: `deno test` checks only the modules its test files reach, and `deno bundle`, which
 * makes the GPU session's app, does not check at all.
 */
import assert from "node:assert/strict";

const ROOTS = ["bench", "cli", "edge", "train", "core"];

Deno.test("every module under bench/, cli/, edge/, train/ and core/ type-checks", async () => {
  const files: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(`../${dir}`, import.meta.url))) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`);
      else if (e.isFile && e.name.endsWith(".ts")) files.push(`${dir}/${e.name}`);
    }
  };
  for (const dir of ROOTS) await walk(dir);
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", ...files.sort()],
    cwd: new URL("..", import.meta.url),
    env: { NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, `deno check failed:\n${new TextDecoder().decode(stderr)}`);
});
