/**
 * Rewrites a safetensors file's F32 tensors as F16 (others unchanged, metadata kept): halves what a
 * GPU run must carry, e.g. the partial VGG19 for a gan run (9.3 → 4.7 MB; the loaders decode F16).
 *
 *   deno run -A bench/fp16_safetensors.ts ../shared/models/vgg19-partial/vgg19_conv1_1-conv3_4.safetensors .device/vgg.safetensors
 * @module
 */
import {
  decodeFloat,
  encodeFloat,
  parseSafetensors,
  serializeSafetensors,
} from "../core/weights/safetensors.ts";

const [src, dst] = Deno.args;
if (!src || !dst) {
  console.error("usage: deno run -A bench/fp16_safetensors.ts SRC.safetensors DST.safetensors");
  Deno.exit(2);
}
const st = parseSafetensors(await Deno.readFile(src), src);
for (const [k, t] of st.tensors) {
  if (t.dtype === "F32") st.tensors.set(k, { ...t, dtype: "F16", bytes: encodeFloat(decodeFloat(t), "F16") });
}
const out = serializeSafetensors(st);
await Deno.writeFile(`${dst}.tmp`, out);
await Deno.rename(`${dst}.tmp`, dst);
console.log(`${dst}: ${(out.length / 1e6).toFixed(1)} MB`);
