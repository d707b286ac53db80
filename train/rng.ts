/**
 * A small seeded PRNG with serialisable state (sfc32, 4 × uint32), so a checkpoint can store
 * exactly where the random stream stands. Each training step derives its own stream from
 * (seed, step) with splitmix32, which keeps runs reproducible while batches are prepared ahead.
 * @module
 */

/** splitmix32: a good 32-bit mixer for turning (seed, counter) into independent seeds. */
export function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** sfc32 generator; `state` is a plain array so it survives JSON. */
export class Rng {
  /** The four 32-bit words of state. */
  state: [number, number, number, number];

  /** Seeds from one number and an optional stream id (e.g. the step). */
  constructor(seed: number, stream = 0) {
    const a = splitmix32(seed ^ 0x5bd1e995);
    const b = splitmix32(a ^ stream);
    const c = splitmix32(b + 0x632be5ab);
    this.state = [a, b, c, 1];
    for (let i = 0; i < 12; i++) this.nextU32(); // discard the correlated start
  }

  /** Restores a generator from {@link Rng.state}. */
  static fromState(state: readonly number[]): Rng {
    if (state.length !== 4) throw new Error(`RNG state needs 4 words, got ${state.length}`);
    const r = new Rng(0);
    r.state = [state[0] >>> 0, state[1] >>> 0, state[2] >>> 0, state[3] >>> 0];
    return r;
  }

  /** Next uniform 32-bit unsigned integer. */
  nextU32(): number {
    let [a, b, c, d] = this.state;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    this.state = [a >>> 0, b >>> 0, c >>> 0, d >>> 0];
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  random(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.random() * n);
  }
}
