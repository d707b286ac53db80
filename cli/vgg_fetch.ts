/**
 * `deno task vgg:fetch`: downloads torchvision's ImageNet VGG19 (`vgg19-dcbb9e9d.pth`, what BasicSR's
 * perceptual loss uses) into `weights/`, checks that its SHA-256 starts with `dcbb9e9d` (torch.hub's
 * convention: the hash prefix is in the file name), and only then renames it into place, so an
 * interrupted or corrupt download never leaves a file the perceptual loss would pick up.
 *
 * Usage: deno task vgg:fetch [--out DIR] [--url URL] [--force]
 * @module
 */
import cliProgress from "cli-progress";
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";

/** torchvision's download address of VGG19's ImageNet weights. */
export const VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth";
/** The first hex digits of the file's SHA-256 (torchvision puts them in the name). */
export const VGG19_SHA256_PREFIX = "dcbb9e9d";
/** Where the perceptual loss looks for it. */
export const VGG19_DEFAULT_DIR = new URL("../weights/", import.meta.url).pathname;

/** Options of {@link downloadVerified}. */
export interface DownloadOptions {
  /** Required start of the hex SHA-256. */
  sha256Prefix: string;
  /** Called as bytes arrive; `total` is 0 when the server sends no length. */
  onProgress?: (done: number, total: number) => void;
  /** Give up when no byte arrives for this long (default 60 s). */
  idleTimeoutMs?: number;
}

/** What {@link downloadVerified} wrote. */
export interface DownloadResult {
  path: string;
  bytes: number;
  sha256: string;
}

/**
 * Downloads `url` to `dest` through a temporary file beside it, checks the SHA-256 prefix, then
 * renames. Throws (leaving `dest` untouched) on a network error, an HTTP error, a short body or a
 * hash mismatch.
 */
export async function downloadVerified(
  url: string,
  dest: string,
  options: DownloadOptions,
): Promise<DownloadResult> {
  const idle = options.idleTimeoutMs ?? 60_000;
  const abort = new AbortController();
  let timer = setTimeout(() => abort.abort(), idle);
  const poke = () => {
    clearTimeout(timer);
    timer = setTimeout(() => abort.abort(), idle);
  };
  let response: Response;
  try {
    response = await fetch(url, { signal: abort.signal });
  } catch (e) {
    clearTimeout(timer);
    const cause = (e as { cause?: { message?: string } }).cause?.message ?? (e as Error).message;
    throw new Error(
      `cannot download ${url}: ${cause}. Is the internet reachable from here? Otherwise copy ` +
        `vgg19-dcbb9e9d.pth into ${dest.replace(/[^/]*$/, "")} by hand or point $VGG19_WEIGHTS at it.`,
    );
  }
  if (!response.ok || !response.body) {
    clearTimeout(timer);
    await response.body?.cancel();
    throw new Error(`cannot download ${url}: HTTP ${response.status} ${response.statusText}`);
  }
  const total = Number(response.headers.get("content-length") ?? 0);
  const tmp = `${dest}.part-${Deno.pid}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  const hash = createHash("sha256");
  let done = 0;
  try {
    for await (const chunk of response.body) {
      poke();
      hash.update(chunk);
      let off = 0;
      while (off < chunk.length) off += await file.write(chunk.subarray(off));
      done += chunk.length;
      options.onProgress?.(done, total);
    }
    await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw new Error(
      abort.signal.aborted
        ? `download of ${url} stalled (no data for ${idle / 1000} s)`
        : `download of ${url} failed: ${(e as Error).message}`,
    );
  } finally {
    clearTimeout(timer);
  }
  file.close();
  const sha256 = hash.digest("hex");
  const problem = total && done !== total
    ? `got ${done} of ${total} bytes`
    : !sha256.startsWith(options.sha256Prefix.toLowerCase())
    ? `SHA-256 ${sha256} does not start with ${options.sha256Prefix}`
    : "";
  if (problem) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${url}: ${problem}; nothing was written`);
  }
  await Deno.rename(tmp, dest);
  return { path: dest, bytes: done, sha256 };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string", default: VGG19_DEFAULT_DIR },
      url: { type: "string", default: VGG19_URL },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "deno task vgg:fetch [--out DIR] [--url URL] [--force]\n" +
        `Downloads torchvision's VGG19 (${VGG19_URL}) and checks its SHA-256 prefix ${VGG19_SHA256_PREFIX}.`,
    );
    return 0;
  }
  const dir = values.out.replace(/\/?$/, "/");
  const dest = `${dir}vgg19-${VGG19_SHA256_PREFIX}.pth`;
  await Deno.mkdir(dir, { recursive: true });
  const exists = await Deno.stat(dest).then(() => true, () => false);
  if (exists && !values.force) {
    console.log(`${dest} is already there (use --force to download it again)`);
    return 0;
  }
  const bar = new cliProgress.SingleBar({
    format: "vgg19 [{bar}] {percentage}% | {value}/{total} MB | ETA {eta}s",
  }, cliProgress.Presets.shades_classic);
  let started = false;
  try {
    const result = await downloadVerified(values.url, dest, {
      sha256Prefix: VGG19_SHA256_PREFIX,
      onProgress: (done, total) => {
        const mb = (n: number) => Math.round(n / 1e6);
        if (!started) bar.start(mb(total), 0);
        started = true;
        bar.update(mb(done));
      },
    });
    if (started) bar.stop();
    console.log(`wrote ${result.path} (${result.bytes} bytes, sha256 ${result.sha256})`);
    return 0;
  } catch (e) {
    if (started) bar.stop();
    console.error(`vgg:fetch: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main());
