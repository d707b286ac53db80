/**
 * core/backend.ts: the wasm backend's threads, split between our CPU kernels and tfjs's own ops;
 * each case in a process of its own (a backend starts once per process).
 */
import assert from "node:assert/strict";

const backend = new URL("../core/backend.ts", import.meta.url).href;

/** Runs `code` (with initBackend and backendThreads imported) in a new process; its stdout. */
async function inProcess(code: string): Promise<string> {
  const imports = `import { backendThreads, describeBackend, initBackend } from "${backend}";\n`;
  const { code: exit, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", imports + code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(exit, 0, new TextDecoder().decode(stderr));
  return new TextDecoder().decode(stdout).trim();
}

Deno.test("wasm: opsThreads 1 starts tfjs single-threaded, our kernels keep `threads`", async () => {
  const code = `const info = await initBackend("wasm", { threads: 2, opsThreads: 1 });
    const tf = await import("@tensorflow/tfjs-core");
    console.log(JSON.stringify({ threads: info.threads, ops: info.opsThreads, kernels: backendThreads(),
      tfjs: tf.backend().wasm.tfjs.getThreadsCount(), line: describeBackend(info) }));
    Deno.exit(0);`;
  const split = JSON.parse(await inProcess(code));
  assert.deepEqual([split.threads, split.ops, split.kernels, split.tfjs], [2, 1, 2, 1]);
  assert.match(split.line, /2 threads, our CPU kernels .*; tfjs's own ops on 1/);
  // without it, one pool for both
  const whole = JSON.parse(await inProcess(code.replace(", opsThreads: 1", "")));
  assert.deepEqual([whole.threads, whole.ops, whole.kernels, whole.tfjs], [2, undefined, 2, 2]);
  assert.doesNotMatch(whole.line, /tfjs's own ops/);
});
