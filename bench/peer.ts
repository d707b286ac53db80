/**
 * The bench's process protocol: the parent keeps one process per backend (and one for PyTorch)
 * alive and asks each in turn for one timed run, so a load that comes and goes on a shared machine
 * hits every backend alike. Requests and replies are JSON, one per line; replies start with
 * {@link MARK} so that whatever libraries print on stdout is skipped.
 *
 * Requests: `{cmd: "setup", case, warmup}` (prepare and warm up), `{cmd: "run"}` → `{ms, cpu_ms}`,
 * `{cmd: "finish", profile, dump}` (profile once, write the last output to `dump`, free the case),
 * `{cmd: "exit"}` → `{peak_mb}`. The first line a peer prints is `{ready: true, ...}` or `{error}`.
 * @module
 */

/** Prefix of every protocol line. */
export const MARK = "@@bench ";

/** Splits a byte stream into lines. */
export async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
  if (buf) yield buf;
}

/** A reply; `error` set when the peer failed the request. */
export type Reply = Record<string, any> & { error?: string };

/** A child process speaking the protocol. */
export class Peer {
  readonly name: string;
  #proc: Deno.ChildProcess;
  #out: AsyncGenerator<string>;
  #in: WritableStreamDefaultWriter<Uint8Array>;
  #stderr: string[] = [];
  #stderrDone: Promise<void>;

  /** Starts `cmd args`; {@link ready} waits for its first line. */
  constructor(name: string, cmd: string, args: string[]) {
    this.name = name;
    const proc = new Deno.Command(cmd, { args, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
    this.#proc = proc;
    this.#out = lines(proc.stdout);
    this.#in = proc.stdin.getWriter();
    this.#stderrDone = (async () => {
      for await (const l of lines(proc.stderr)) {
        this.#stderr.push(l);
        if (this.#stderr.length > 20) this.#stderr.shift();
      }
    })();
  }

  /** The peer's first reply. */
  ready(): Promise<Reply> {
    return this.#next();
  }

  /** Sends a request and waits for its reply. */
  async request(msg: Record<string, unknown>): Promise<Reply> {
    try {
      await this.#in.write(new TextEncoder().encode(JSON.stringify(msg) + "\n"));
    } catch {
      return this.#died();
    }
    return this.#next();
  }

  /** Asks the peer to exit (its last reply), and waits for it. */
  async close(): Promise<Reply> {
    const reply = await this.request({ cmd: "exit" });
    await this.#in.close().catch(() => {});
    const status = await this.#proc.status;
    await this.#stderrDone;
    return status.success ? reply : { ...reply, error: reply.error ?? `exit code ${status.code}` };
  }

  async #next(): Promise<Reply> {
    for (;;) {
      const { value, done } = await this.#out.next();
      if (done) return this.#died();
      if (value.startsWith(MARK)) return JSON.parse(value.slice(MARK.length));
    }
  }

  async #died(): Promise<Reply> {
    await this.#stderrDone;
    return { error: `${this.name} ended: ${this.#stderr.slice(-6).join(" | ") || "no message"}` };
  }
}

/** The child's side: answers requests from stdin with `handle` until `exit`. */
export async function serve(
  ready: () => Promise<Reply>,
  handle: (msg: Reply) => Promise<Reply>,
): Promise<void> {
  const say = (r: Reply) => console.log(MARK + JSON.stringify(r));
  const hello = await ready().catch((e) => ({ error: String(e) }));
  say(hello);
  if (hello.error) return;
  for await (const line of lines(Deno.stdin.readable)) {
    if (!line.trim()) continue;
    const msg = JSON.parse(line) as Reply;
    say(await handle(msg).catch((e) => ({ error: String(e) })));
    if (msg.cmd === "exit") return;
  }
}
