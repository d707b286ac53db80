/**
 * Converts published RRDBNet weights (.pth/.pt, ncnn .param + .bin, safetensors) to a model file.
 *
 *     deno task import SRC -o weights/NAME.safetensors [--quantize int8|fp16|none]
 *       [--fp16-layers conv_first,conv_last] [--meta key=value]... [--force]
 *
 * The file is written beside its destination under a temporary name, then renamed, so an
 * interrupted run never leaves a half-written model behind.
 * @module
 */
import { parseArgs } from "node:util";
import { importWeights } from "../core/import/mod.ts";
import { inferRRDBNetConfig } from "../core/rrdbnet_arch.ts";
import { encodeModelFile, type WeightDType } from "../core/weights/model_file.ts";

const USAGE = "usage: deno task import SRC -o OUT.safetensors [--quantize int8|fp16|none] " +
  "[--fp16-layers a,b] [--meta key=value]... [--force]";

const DTYPES: Record<string, WeightDType> = { int8: "int8", fp16: "fp16", none: "fp32", fp32: "fp32" };

/** Parsed command line of the import tool. */
export interface ImportArgs {
  src: string;
  out: string;
  dtype: WeightDType;
  fp16Layers?: string[];
  metadata: Record<string, string>;
  force: boolean;
}

/** Parses the command line; throws a one-line message on bad usage. */
export function parseImportArgs(argv: string[]): ImportArgs {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: "string", short: "o" },
      quantize: { type: "string", short: "q", default: "int8" },
      "fp16-layers": { type: "string" },
      meta: { type: "string", multiple: true },
      force: { type: "boolean", short: "f", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) throw new Error(USAGE);
  if (positionals.length !== 1 || !values.out) throw new Error(USAGE);
  const dtype = DTYPES[values.quantize!];
  if (!dtype) throw new Error(`--quantize must be int8, fp16 or none, not ${values.quantize}`);
  const fp16Layers = values["fp16-layers"]?.split(",").map((s) => s.trim()).filter(Boolean);
  if (fp16Layers && dtype !== "int8") throw new Error("--fp16-layers only applies to --quantize int8");
  const metadata: Record<string, string> = {};
  for (const kv of values.meta ?? []) {
    const at = kv.indexOf("=");
    if (at < 1) throw new Error(`--meta wants key=value, not ${kv}`);
    metadata[kv.slice(0, at)] = kv.slice(at + 1);
  }
  return { src: positionals[0], out: values.out, dtype, fp16Layers, metadata, force: values.force! };
}

/** Imports `args.src` and writes the model file; returns a one-line summary. */
export async function runImport(args: ImportArgs): Promise<string> {
  if (!args.force && await exists(args.out)) {
    throw new Error(`${args.out} exists; pass --force to overwrite it`);
  }
  const sd = await importWeights(args.src);
  const unknown = args.fp16Layers?.filter((p) => ![...sd.keys()].some((k) => k.startsWith(p + ".")));
  if (unknown?.length) throw new Error(`--fp16-layers: no layer named ${unknown.join(", ")} in ${args.src}`);
  const source = args.src.split("/").pop()!;
  const bytes = encodeModelFile(sd, {
    dtype: args.dtype,
    fp16Layers: args.fp16Layers,
    metadata: { source, ...args.metadata },
  });
  const tmp = `${args.out}.tmp-${Deno.pid}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, args.out);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${args.out}: cannot write (${(e as Error).message})`);
  }
  const c = inferRRDBNetConfig(sd);
  return `${args.out}: RRDBNet x${c.scale}, ${c.numBlock} blocks, nf ${c.numFeat}, gc ${c.numGrowCh}, ` +
    `${args.dtype}, ${(bytes.byteLength / 1e6).toFixed(1)} MB`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  try {
    console.log(await runImport(parseImportArgs(Deno.args)));
  } catch (e) {
    console.error(`import: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
