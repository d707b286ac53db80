/**
 * Progress for the upscale tool: on a terminal, one cli-progress bar on stderr over the tiles of
 * all files, with the current file and an ETA; elsewhere (pipes, logs, tests) no bar, only the
 * per-file lines.
 * @module
 */
import cliProgress from "cli-progress";

/** What the upscale tool reports to. */
export interface Progress {
  /** File `index` (1-based) of the run begins. */
  startFile(index: number, name: string): void;
  /** Tiles done so far over the whole run (fractional within a tile). */
  update(tilesDone: number): void;
  /** More tiles than planned (a file's alpha runs through the model too, which its header cannot tell). */
  addTiles(n: number): void;
  /** A line above the bar (or plainly on stderr). */
  log(line: string): void;
  stop(): void;
}

/** A progress reporter for `totalTiles` tiles over `files` files. */
export function createProgress(totalTiles: number, files: number): Progress {
  if (!Deno.stderr.isTerminal() || totalTiles === 0) {
    return { startFile() {}, update() {}, addTiles() {}, log: (line) => console.error(line), stop() {} };
  }
  const multi = new cliProgress.MultiBar({
    format: "{bar} {percentage}% | {tiles}/{total} tiles | file {file}/{files} {name} | ETA {eta_formatted}",
    hideCursor: true,
    etaBuffer: 20,
    etaAsynchronousUpdate: true,
  }, cliProgress.Presets.shades_classic);
  const bar = multi.create(totalTiles, 0, { file: 0, files, name: "", tiles: 0 });
  let stopped = false;
  return {
    startFile: (index, name) => bar.update({ file: index, name }),
    // the bar and the ETA move within a tile; the count says whole tiles
    update: (done) =>
      bar.update(Math.min(done, totalTiles), { tiles: Math.floor(Math.min(done, totalTiles)) }),
    addTiles(n) {
      totalTiles += n;
      bar.setTotal(totalTiles);
    },
    log: (line) => multi.log(line + "\n"),
    stop() {
      // MultiBar.stop() drops the lines log() buffered since the last redraw (the last file's line)
      if (!stopped) multi.update(), multi.stop();
      stopped = true;
    },
  };
}
