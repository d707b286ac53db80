/**
 * Local launcher (`deno task serve`): serves `main.ts` on `HOST`:`PORT` (default 0.0.0.0:8000;
 * `PORT=0` picks a free port) and says when the model is ready.
 * @module
 */
import handler, { app, config } from "./main.ts";

const port = Number(Deno.env.get("PORT") || 8000);
const hostname = Deno.env.get("HOST") || "0.0.0.0";
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new Error(`PORT=${Deno.env.get("PORT")}: not a port`);
}

Deno.serve({
  port,
  hostname,
  onListen: (addr) => console.log(`edge: listening on http://${addr.hostname}:${addr.port}/`),
}, handler.fetch);

app.ready.then(
  () => {
    const h = app.health();
    const more = config.moreModels.length ? ` (and ${h.models.slice(1).map((m) => m.name).join(", ")})` : "";
    console.log(
      `edge: model ${config.model}${more} ready on ${h.backend?.name} in ${h.models.at(-1)!.loadMs} ms`,
    );
  },
  () => console.error("edge: the model did not load; /v1/upscale answers 503 (see /healthz)"),
);
