/**
 * The model a CLI was pointed at: this project's model files, or a file in any format `deno task
 * import` reads (PyTorch `.pth`/`.pt`, ncnn `.param` + `.bin`), imported on the fly in fp32, so that
 * a published model runs without an import step first.
 * @module
 */
import { importWeights } from "../core/import/mod.ts";
import { checkRRDBNetWeights, inferRRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { Upscaler } from "../core/upscaler.ts";

/** Files that are imported rather than loaded. */
const IMPORTED = /\.(pth|pt|param|bin)$/i;

/** Loads `path` as an {@link Upscaler} (see the module notes). */
export async function loadModel(path: string): Promise<Upscaler> {
  if (!IMPORTED.test(path)) return await Upscaler.load(path);
  const sd = await importWeights(path);
  const config = inferRRDBNetConfig(sd);
  checkRRDBNetWeights(config, sd);
  return new Upscaler({ config, weights: () => sd }, {
    name: path,
    dtype: "fp32",
    metadata: { source: path },
  });
}
