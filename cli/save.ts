/**
 * Saving the upscale tool's outputs: encode, then write through a temporary file in the target
 * folder, linked or renamed into place (no partial output, an existing file replaced only with
 * `force`); on a writer thread ({@link SaveThread}) while the next image runs, as
 * realesrgan-ncnn-vulkan's `-j load:proc:save` does. Why a thread: on a GPU the upscale of a 512x512
 * input takes about as long as encoding its 2048x2048 PNG (~0.5 s), and Deno's WebGPU waits block
 * the main thread, so an encode there could not overlap the GPU's work.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { encodeImage, type ImageFormat, type RgbaImage } from "../core/image_io.ts";

/** One output to save. */
export interface SaveRequest {
  image: RgbaImage;
  format: ImageFormat;
  quality?: number;
  output: string;
  force: boolean;
}

/** Why a file operation failed, in a few words. */
export function ioReason(e: unknown, what: string): string {
  if (e instanceof Deno.errors.NotFound) return `no such ${what}`;
  if (e instanceof Deno.errors.PermissionDenied) return `cannot read the ${what}: permission denied`;
  if (e instanceof Deno.errors.IsADirectory) return "is a folder";
  return (e as Error).message.split("\n")[0];
}

/** Whether `path` exists (a dangling link too). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Writes `bytes` to `path` through a temporary file in the same folder. Without `force` the final
 * step is a hard link, which fails atomically if `path` appeared meanwhile.
 */
async function writeAtomic(path: string, bytes: Uint8Array, force: boolean): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${crypto.randomUUID().slice(0, 8)}.tmp`);
  await Deno.writeFile(tmp, bytes, { createNew: true });
  try {
    if (force) {
      await Deno.rename(tmp, path);
      return;
    }
    try {
      await Deno.link(tmp, path);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) throw new Error("exists (use --force to overwrite)");
      // No hard links on this filesystem: check, then rename (a small race, but no partial file).
      if (await exists(path)) throw new Error("exists (use --force to overwrite)");
      await Deno.rename(tmp, path);
    }
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}

/** Encodes and writes one output; its errors name the output file. */
export async function saveImage(request: SaveRequest): Promise<void> {
  const { image, format, quality, output, force } = request;
  const encoded = await encodeImage(image, { format, quality });
  try {
    await writeAtomic(output, encoded, force);
  } catch (e) {
    const msg = (e as Error).message;
    throw new Error(
      msg.startsWith("exists")
        ? `${output} ${msg}`
        : `${output}: ${
          e instanceof Deno.errors.NotFound ? "its folder does not exist" : ioReason(e, "file")
        }`,
    );
  }
}

/**
 * {@link saveImage} on a worker thread, in the order asked; close it when done. Should the thread
 * fail (it could not start, say), what it held fails with its error and later images are saved on
 * the calling thread, said once on stderr.
 */
export class SaveThread {
  private readonly worker = new Worker(new URL("./save_worker.ts", import.meta.url), { type: "module" });
  private readonly waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private next = 0;
  private failed?: string;

  constructor() {
    this.worker.onmessage = (e: MessageEvent<{ id: number; error?: string }>) => {
      const { id, error } = e.data;
      const w = this.waiting.get(id);
      this.waiting.delete(id);
      if (error === undefined) w?.resolve();
      else w?.reject(new Error(error));
    };
    this.worker.onerror = (e) => {
      e.preventDefault();
      this.failed = e.message;
      for (const w of this.waiting.values()) w.reject(new Error(`the writer thread failed: ${e.message}`));
      this.waiting.clear();
      console.error(`note: the writer thread failed (${e.message}): writing on the main thread`);
    };
  }

  /** Saves `request` on the thread; the image's pixel buffers move there (unusable here afterwards). */
  save(request: SaveRequest): Promise<void> {
    if (this.failed === "closed") return Promise.reject(new Error("the writer thread was closed"));
    if (this.failed !== undefined) return saveImage(request);
    const id = this.next++;
    const { data, data16 } = request.image;
    const done = new Promise<void>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    const buffers = [data.buffer, ...(data16 ? [data16.buffer] : [])] as ArrayBuffer[];
    this.worker.postMessage({ id, request }, buffers);
    return done;
  }

  /** Stops the thread (after what it was asked to save, if awaited first). */
  close(): void {
    this.worker.terminate();
    for (const w of this.waiting.values()) w.reject(new Error("the writer thread was closed"));
    this.waiting.clear();
    this.failed = "closed";
  }
}
