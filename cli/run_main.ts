/**
 * The one way the CLIs end: the exit code `main` returns, or one `error: MESSAGE` line and exit 1
 * for what it throws (no stack trace for the user). Exiting explicitly also stops the wasm backend's
 * worker threads, which would keep the process alive.
 * @module
 */

/** Runs a CLI's `main` and exits the process with its code. */
export async function runMain(main: () => Promise<number>): Promise<never> {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
