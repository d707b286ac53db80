/**
 * Numeric command-line flags, parsed one way for every CLI: a bad value gives one line that names
 * the flag, what it wants and what it got.
 * @module
 */

/** A usage error: the CLIs print its message with a hint to --help and exit 2. */
export class UsageError extends Error {}

/** Options of {@link parseNumberFlag}. */
export interface NumberFlagOptions {
  /** What the value must satisfy (default: any finite number). */
  check?: (n: number) => boolean;
  /** How the error message describes a valid value (default "a number"). */
  want?: string;
  /** Accept a k or M suffix (thousands, millions), e.g. `16M` pixels. */
  suffixes?: boolean;
}

/** Whole numbers ≥ 0. */
export const WHOLE: NumberFlagOptions = {
  check: (n) => Number.isInteger(n) && n >= 0,
  want: "a whole number ≥ 0",
};
/** Whole numbers ≥ 1. */
/** `--threads`: the wasm backend's thread count (XNNPACK's pool and our CPU kernels). */
export const THREADS: NumberFlagOptions = {
  check: (n) => Number.isInteger(n) && n >= 1 && n <= 8,
  want: "a whole number from 1 to 8",
};

export const POSITIVE: NumberFlagOptions = {
  check: (n) => Number.isInteger(n) && n >= 1,
  want: "a whole number ≥ 1",
};

/**
 * `value` of `flag` as a number, undefined when the flag was not given; throws {@link UsageError}
 * (`--tile must be a whole number ≥ 0, not "x"`) on anything else.
 */
export function parseNumberFlag(
  flag: string,
  value: string | undefined,
  options: NumberFlagOptions = {},
): number | undefined {
  if (value === undefined) return undefined;
  const m = /^\s*([0-9.eE+-]+)\s*([kKmM]?)\s*$/.exec(value);
  const unit = m?.[2] ? (options.suffixes ? { k: 1e3, m: 1e6 }[m[2].toLowerCase() as "k" | "m"] : NaN) : 1;
  const n = m ? Number(m[1]) * unit : NaN;
  if (!Number.isFinite(n) || !(options.check?.(n) ?? true)) {
    throw new UsageError(`${flag} must be ${options.want ?? "a number"}, not "${value}"`);
  }
  return n;
}
