/**
 * Entry point for Deno Deploy and `deno serve`: `export default { fetch }`. The settings come from
 * the environment (see `config.ts`); the model starts loading when this module is imported, once per
 * instance, and requests that arrive earlier wait for it. Locally, `deno task serve` runs `serve.ts`,
 * which binds `PORT` (default 8000); `deno serve edge/main.ts` works as well.
 * @module
 */
import { DEFAULT_MODEL } from "../core/upscaler.ts";
import { createApp, type EdgeApp } from "./app.ts";
import { configFromEnv, type EdgeConfig } from "./config.ts";

/** This instance's settings. */
export const config: EdgeConfig = configFromEnv((name) => Deno.env.get(name), {
  defaultModel: DEFAULT_MODEL,
});

/** This instance's service (its model is loading from import on). */
export const app: EdgeApp = createApp(config);

export default { fetch: app.fetch } satisfies Deno.ServeDefaultExport;

// tfjs's wasm threads keep the event loop alive, so `deno serve`'s graceful stop on a signal would
// wait forever: finish the jobs in flight (within the time limit), then exit. Deno Deploy, which
// stops isolates itself, may not offer signals; then there is nothing to do.
try {
  let stopping = false;
  const stop = (code: number) => async () => {
    if (stopping) Deno.exit(code); // a second signal: stop now
    stopping = true;
    await Promise.race([app.close(), new Promise((r) => setTimeout(r, config.timeoutMs))]);
    Deno.exit(code);
  };
  Deno.addSignalListener("SIGTERM", stop(0));
  Deno.addSignalListener("SIGINT", stop(130));
} catch {
  // no signal support in this runtime
}
