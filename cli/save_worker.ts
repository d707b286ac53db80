/**
 * The upscale tool's writer thread (see save.ts): saves each image it is sent, answering with its
 * id and, on failure, the error's message.
 * @module
 */
import { saveImage, type SaveRequest } from "./save.ts";

const scope = self as unknown as {
  onmessage: (e: MessageEvent<{ id: number; request: SaveRequest }>) => void;
  postMessage(message: { id: number; error?: string }): void;
};

scope.onmessage = async (e) => {
  const { id, request } = e.data;
  try {
    await saveImage(request);
    scope.postMessage({ id });
  } catch (err) {
    scope.postMessage({ id, error: (err as Error).message.split("\n")[0] });
  }
};
