/**
 * A concurrency limit with a bounded FIFO queue: upscaling is CPU- and memory-bound, so jobs past
 * the limit wait, and requests past the queue are refused at once instead of piling up.
 * @module
 */

/** Thrown by {@link JobLimiter.acquire} when every slot is busy and the queue is full. */
export class QueueFullError extends Error {
  /** Seconds after which a retry has a fair chance. */
  readonly retryAfter: number;
  constructor(retryAfter: number) {
    super("server busy: all job slots and queue places are taken");
    this.name = "QueueFullError";
    this.retryAfter = retryAfter;
  }
}

interface Waiter {
  resolve: (release: () => void) => void;
  reject: (reason: unknown) => void;
  signal?: AbortSignal;
  onAbort: () => void;
}

/** Hands out at most `maxConcurrent` slots; up to `maxQueue` callers wait in order. */
export class JobLimiter {
  readonly maxConcurrent: number;
  readonly maxQueue: number;
  #active = 0;
  #queue: Waiter[] = [];
  /** Moving average of how long a slot is held, for Retry-After. */
  #avgMs = 0;

  constructor(options: { maxConcurrent: number; maxQueue: number }) {
    if (options.maxConcurrent < 1) throw new Error("maxConcurrent must be at least 1");
    this.maxConcurrent = options.maxConcurrent;
    this.maxQueue = Math.max(0, options.maxQueue);
  }

  /** Jobs holding a slot now. */
  get active(): number {
    return this.#active;
  }

  /** Jobs waiting for a slot now. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Seconds until a slot is likely free, from the recent job durations (at least 1). */
  retryAfterSeconds(): number {
    const ahead = this.#queue.length + this.#active;
    const est = (this.#avgMs || 1000) * Math.ceil(ahead / this.maxConcurrent) / 1000;
    return Math.max(1, Math.ceil(est));
  }

  /**
   * Waits for a slot and resolves with its release function (call it exactly once; later calls do
   * nothing). Rejects with {@link QueueFullError} when the queue is full, or with the signal's reason
   * when `signal` aborts while waiting (the place in the queue is given up).
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#active < this.maxConcurrent) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#queue.length >= this.maxQueue) {
      return Promise.reject(new QueueFullError(this.retryAfterSeconds()));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.#queue.indexOf(waiter);
          if (i >= 0) this.#queue.splice(i, 1);
          reject(signal!.reason);
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  #releaser(): () => void {
    const start = performance.now();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const ms = performance.now() - start;
      this.#avgMs = this.#avgMs ? 0.7 * this.#avgMs + 0.3 * ms : ms;
      const next = this.#queue.shift();
      if (next) {
        // The slot passes straight to the next waiter, so #active stays the same.
        next.signal?.removeEventListener("abort", next.onAbort);
        next.resolve(this.#releaser());
      } else {
        this.#active--;
      }
    };
  }
}
