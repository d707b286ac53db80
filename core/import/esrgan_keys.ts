/**
 * Maps the parameter names of the other RRDBNet implementations onto BasicSR's:
 * the original ESRGAN release (`model.0`, `model.1.sub.N.RDBk.convM.0`, upsampling convs at
 * `model.3`, `model.6`, HR conv `model.8`, last conv `model.10` for x4; x1, x2 and x8 nets have 0, 1 or
 * 3 upsampling convs, which become `conv_up1`...), and the later ESRGAN repository
 * (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`). Also picks BasicSR's EMA weights and drops
 * DataParallel's `module.` prefix.
 * @module
 */
import type { StateDict } from "../state_dict.ts";

/** Which naming a state dict uses. */
export type KeyLayout = "basicsr" | "esrgan-legacy" | "esrgan-trunk";

/** Tells the naming of an RRDBNet state dict from its keys. */
export function detectLayout(sd: StateDict): KeyLayout | null {
  if (sd.has("conv_first.weight") && sd.has("body.0.rdb1.conv1.weight")) return "basicsr";
  if (sd.has("model.0.weight") && sd.has("model.1.sub.0.RDB1.conv1.0.weight")) return "esrgan-legacy";
  if (sd.has("conv_first.weight") && sd.has("RRDB_trunk.0.RDB1.conv1.weight")) return "esrgan-trunk";
  return null;
}

/**
 * Reduces a checkpoint to the generator's weights under BasicSR names: descends into
 * `params_ema` (preferred: the EMA weights are the ones released), `params` or `state_dict`
 * when present, strips `module.`, and renames ESRGAN layouts. Throws, naming `name`, when the
 * keys are no RRDBNet's.
 */
export function toBasicSR(sd: StateDict, name = "checkpoint"): StateDict {
  if (sd.size === 0) {
    throw new Error(`${name}: holds no tensors (a pickled whole model? save its state_dict() instead)`);
  }
  let picked = sd;
  for (const top of ["params_ema", "params", "state_dict"]) {
    const sub = withPrefix(sd, `${top}.`);
    if (sub.size) {
      picked = sub;
      break;
    }
  }
  const stripped: StateDict = new Map();
  for (const [k, t] of picked) stripped.set(k.startsWith("module.") ? k.slice(7) : k, t);
  const layout = detectLayout(stripped);
  if (layout === "basicsr") return stripped;
  if (layout === "esrgan-legacy") return fromLegacy(stripped, name);
  if (layout === "esrgan-trunk") return fromTrunk(stripped);
  const some = [...sd.keys()].slice(0, 4).join(", ");
  throw new Error(`${name}: not an RRDBNet checkpoint (keys: ${some}${sd.size > 4 ? ", …" : ""})`);
}

function withPrefix(sd: StateDict, prefix: string): StateDict {
  const out: StateDict = new Map();
  for (const [k, t] of sd) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), t);
  return out;
}

/**
 * The original release's `nn.Sequential`: 0 conv_first, 1 the shortcut holding the trunk (its
 * last element is conv_body), then upsample/conv/LeakyReLU triples and the two HR convs. Which
 * indices hold convs depends on the upsampling, so it is read off the keys present.
 */
function fromLegacy(sd: StateDict, name: string): StateDict {
  const out: StateDict = new Map();
  const top = new Set<number>();
  let lastSub = -1;
  for (const k of sd.keys()) {
    const m = /^model\.(\d+)\.(weight|bias)$/.exec(k);
    if (m && m[1] !== "0") top.add(Number(m[1]));
    const s = /^model\.1\.sub\.(\d+)\.(weight|bias)$/.exec(k);
    if (s) lastSub = Math.max(lastSub, Number(s[1]));
  }
  const convs = [...top].sort((a, b) => a - b);
  // after the trunk: one conv per x2 upsampling (x1: none, x2: one, x4: two, x8: three), HR, last
  const ups = convs.length - 2;
  if (ups < 0 || ups > 3) {
    throw new Error(
      `${name}: an ESRGAN layout with ${convs.length} convs after the trunk (model.${
        convs.join(", model.")
      })`,
    );
  }
  if (lastSub < 0) throw new Error(`${name}: ESRGAN layout without the trunk conv (model.1.sub.N)`);
  const names = new Map<string, string>([
    ["model.0", "conv_first"],
    [`model.1.sub.${lastSub}`, "conv_body"],
    ...convs.slice(0, ups).map((c, i): [string, string] => [`model.${c}`, `conv_up${i + 1}`]),
    [`model.${convs[ups]}`, "conv_hr"],
    [`model.${convs[ups + 1]}`, "conv_last"],
  ]);
  for (const [k, t] of sd) {
    const rdb = /^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$/.exec(k);
    if (rdb) {
      out.set(`body.${rdb[1]}.rdb${rdb[2]}.conv${rdb[3]}.${rdb[4]}`, t);
      continue;
    }
    const m = /^(.*)\.(weight|bias)$/.exec(k);
    const mapped = m && names.get(m[1]);
    if (!mapped) throw new Error(`${name}: unexpected key ${k} in the ESRGAN layout`);
    out.set(`${mapped}.${m[2]}`, t);
  }
  return out;
}

const TRUNK_NAMES: [RegExp, string][] = [
  [/^RRDB_trunk\.(\d+)\.RDB(\d)\./, "body.$1.rdb$2."],
  [/^trunk_conv\./, "conv_body."],
  [/^upconv1\./, "conv_up1."],
  [/^upconv2\./, "conv_up2."],
  [/^HRconv\./, "conv_hr."],
];

function fromTrunk(sd: StateDict): StateDict {
  const out: StateDict = new Map();
  for (const [k, t] of sd) {
    let key = k;
    for (const [re, to] of TRUNK_NAMES) key = key.replace(re, to);
    out.set(key, t);
  }
  return out;
}
