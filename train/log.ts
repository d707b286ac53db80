/**
 * What a run shows: a progress bar on stderr (cli-progress: step, it/s, losses, ETA) when stderr
 * is a terminal, plain progress lines otherwise, and a JSONL log (one object per line: training
 * steps `{type: "train", step, lr, l_pix, …}`, validations `{type: "val", step, psnr, ssim}`).
 * @module
 */
import cliProgress from "cli-progress";
import process from "node:process";

/** One log record. */
export interface LogRecord {
  type: "train" | "val" | "info";
  step: number;
  [key: string]: unknown;
}

/** Appends records to a JSONL file and keeps them for the curves. */
export class JsonlLog {
  readonly records: LogRecord[] = [];
  private readonly file: Deno.FsFile;

  private constructor(readonly path: string, file: Deno.FsFile, previous: LogRecord[]) {
    this.file = file;
    this.records.push(...previous);
  }

  /**
   * Opens `path` for appending. Records past `fromStep` (steps a resumed run will redo) are dropped,
   * so the log describes one continuous run.
   */
  static async open(path: string, options: { fromStep?: number } = {}): Promise<JsonlLog> {
    let previous: LogRecord[] = [];
    try {
      const text = await Deno.readTextFile(path);
      previous = text.split("\n").filter((l) => l.trim()).flatMap((l) => {
        try {
          return [JSON.parse(l) as LogRecord];
        } catch {
          return []; // a line torn by a kill: dropped
        }
      });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const from = options.fromStep ?? 0;
    previous = from ? previous.filter((r) => r.step <= from) : [];
    await Deno.writeTextFile(path, previous.map((r) => JSON.stringify(r) + "\n").join(""));
    const file = await Deno.open(path, { append: true, create: true });
    return new JsonlLog(path, file, previous);
  }

  /** Appends one record. */
  async write(record: LogRecord): Promise<void> {
    this.records.push(record);
    await this.file.write(new TextEncoder().encode(JSON.stringify(record) + "\n"));
  }

  close(): void {
    this.file.close();
  }
}

const fmt = (v: number) => (Math.abs(v) >= 1e-3 || v === 0 ? v.toFixed(4) : v.toExponential(2));

/** Progress on stderr: a bar on a terminal, a line every `every` steps otherwise. */
export class Progress {
  private readonly bar?: cliProgress.SingleBar;
  private readonly t0 = performance.now();
  private lastLine = 0;

  constructor(
    private readonly total: number,
    private readonly start: number,
    private readonly every: number,
  ) {
    if (Deno.stderr.isTerminal()) {
      this.bar = new cliProgress.SingleBar({
        stream: process.stderr,
        format: "{bar} {value}/{total} | {speed} it/s | {losses} | ETA {eta_formatted}",
        hideCursor: true,
        etaBuffer: 50,
      }, cliProgress.Presets.shades_classic);
      this.bar.start(total, start, { speed: "-", losses: "" });
    }
  }

  /** Reports that `step` steps are done with these losses. */
  update(step: number, losses: Record<string, number>): void {
    const secs = (performance.now() - this.t0) / 1000;
    const speed = (step - this.start) / Math.max(secs, 1e-9);
    const text = Object.entries(losses).map(([k, v]) => `${k} ${fmt(v)}`).join(" ");
    if (this.bar) {
      this.bar.update(step, { speed: speed.toFixed(2), losses: text });
      return;
    }
    if (step - this.lastLine >= this.every || step === this.total) {
      this.lastLine = step;
      const eta = speed > 0 ? (this.total - step) / speed : 0;
      console.error(
        `step ${step}/${this.total} | ${speed.toFixed(2)} it/s | ${text} | ETA ${Math.round(eta)} s`,
      );
    }
  }

  /** Prints a message without tearing the bar. */
  log(message: string): void {
    if (this.bar) process.stderr.write("\r\x1b[2K" + message + "\n");
    else console.error(message);
  }

  stop(): void {
    this.bar?.stop();
  }
}
