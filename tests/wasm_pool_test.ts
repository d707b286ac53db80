/**
 * core/kernels/wasm_pool.ts's synchronous runs (tfjs kernels wait on them): the threads' work is
 * done when runSync returns, and a thread that fails ends the run with its error instead of
 * leaving the caller waiting.
 */
import assert from "node:assert/strict";
import { KernelPool } from "../core/kernels/wasm_pool.ts";
import { ARENA_BASE, OP, RECORD_BYTES, writeRecords } from "../core/kernels/wasm_layer.ts";

/** OP_ADD over an h x w map of 4 channels: out += 2·in (maps with a one-pixel border). */
function addRecord(input: number, out: number, h: number, w: number) {
  return { kind: "add", op: OP.add, in: input, ics: 4, cin: 4, h, w, out, ocs: 4, s0: 2 };
}

Deno.test("KernelPool.runSync: the layers are done when it returns, on every thread", () => {
  const pool = new KernelPool({ threads: 2 });
  try {
    const h = 6, w = 5, floats = (h + 2) * (w + 2) * 4;
    const input = ARENA_BASE, out = input + 4 * floats, records = out + 4 * floats;
    pool.reserve(records + 1024);
    for (let round = 1; round <= 3; round++) {
      const f = pool.floats();
      f.fill(0, input / 4, records / 4);
      for (let i = 0; i < floats; i++) f[input / 4 + i] = i % 7;
      writeRecords(pool.memory, records, [addRecord(input, out, h, w)]);
      pool.runSync({ layers: records, count: 1, stride: RECORD_BYTES });
      // every interior pixel (rows of both threads), none of the border
      for (let y = 0; y < h + 2; y++) {
        for (let x = 0; x < w + 2; x++) {
          const p = (y * (w + 2) + x) * 4, inside = y > 0 && y <= h && x > 0 && x <= w;
          for (let k = 0; k < 4; k++) {
            assert.equal(f[out / 4 + p + k], inside ? 2 * ((p + k) % 7) : 0, `round ${round} (${y}, ${x})`);
          }
        }
      }
    }
  } finally {
    pool.dispose();
  }
});

Deno.test("KernelPool.runSync: a thread's failure ends the run with its error, and the pool with it", () => {
  const pool = new KernelPool({ threads: 2 });
  try {
    const records = ARENA_BASE;
    pool.reserve(records + 1024);
    // an input past the end of the memory: the threads' reads trap
    const beyond = pool.memory.buffer.byteLength + 4096;
    writeRecords(pool.memory, records, [addRecord(beyond, ARENA_BASE + 4096, 64, 64)]);
    assert.throws(
      () => pool.runSync({ layers: records, count: 1, stride: RECORD_BYTES }),
      /CPU kernels: .*out of bounds/,
    );
    assert.throws(() => pool.runSync({ layers: records, count: 1, stride: RECORD_BYTES }), /disposed/);
  } finally {
    pool.dispose();
  }
});
