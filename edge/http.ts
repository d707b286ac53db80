/**
 * HTTP plumbing of the edge server: JSON errors, a size-capped body reader, bearer-token and CORS
 * checks. Nothing here knows about images.
 * @module
 */

/** An error that maps to an HTTP status; its message becomes the JSON body's `error`. */
export class HttpError extends Error {
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.headers = headers;
  }
}

/** A JSON response (errors too: `{"error": "..."}`). */
export function json(
  body: unknown,
  init: { status?: number; headers?: Record<string, string> } = {},
): Response {
  return new Response(JSON.stringify(body), {
    status: init.status ?? 200,
    headers: { "content-type": "application/json; charset=utf-8", ...init.headers },
  });
}

/** The JSON error response for `err`; anything that is not an {@link HttpError} is a 500. */
export function errorResponse(err: unknown): Response {
  if (err instanceof HttpError) {
    return json({ error: err.message }, { status: err.status, headers: err.headers });
  }
  console.error("edge: internal error:", err);
  return json({ error: `internal error: ${err instanceof Error ? err.message : String(err)}` }, {
    status: 500,
  });
}

/**
 * Reads the whole body, refusing (413) past `maxBytes`: first on Content-Length, then while
 * streaming, so a chunked upload cannot make the server buffer more than the limit.
 */
export async function readBodyCapped(request: Request, maxBytes: number): Promise<Uint8Array> {
  const tooLarge = () => new HttpError(413, `request body exceeds the limit of ${maxBytes} bytes`);
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge();
  if (!request.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) throw tooLarge();
      chunks.push(value);
    }
  } catch (err) {
    await reader.cancel().catch(() => {});
    throw err;
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** Throws 401 unless the request carries `Authorization: Bearer <token>`. */
export function checkBearer(request: Request, token: string): void {
  const header = request.headers.get("authorization") ?? "";
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  if (!match || !timingSafeEqual(match[1], token)) {
    throw new HttpError(
      401,
      match ? "invalid bearer token" : "missing bearer token (Authorization: Bearer …)",
      {
        "www-authenticate": 'Bearer realm="upscale"',
      },
    );
  }
}

/** Compares without an early exit, so the time taken does not tell how much of a guess was right. */
function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i] ?? 0) ^ y[i];
  return diff === 0;
}

/** CORS headers for `request`'s Origin when it is allowed (none otherwise). */
export function corsHeaders(request: Request, allowed: string[]): Record<string, string> {
  const origin = request.headers.get("origin");
  if (!origin || allowed.length === 0) return {};
  const any = allowed.includes("*");
  if (!any && !allowed.includes(origin)) return {};
  return {
    "access-control-allow-origin": any ? "*" : origin,
    "access-control-expose-headers": "retry-after, x-upscale-ms, x-output-size",
    ...(any ? {} : { vary: "Origin" }),
  };
}

/** The answer to a CORS preflight (OPTIONS). */
export function preflight(request: Request, allowed: string[]): Response {
  const headers = corsHeaders(request, allowed);
  if (!headers["access-control-allow-origin"]) return new Response(null, { status: 204 });
  return new Response(null, {
    status: 204,
    headers: {
      ...headers,
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": "authorization, content-type",
      "access-control-max-age": "600",
    },
  });
}
