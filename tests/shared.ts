/**
 * Test helpers: where `../shared` is (the reference data), and skipping when it is absent.
 * @module
 */
import { existsSync } from "node:fs";

/** Absolute path of `../shared`, or null when this checkout has none. */
export const SHARED: string | null = (() => {
  const dir = new URL("../../shared/", import.meta.url).pathname;
  return existsSync(dir) ? dir.replace(/\/$/, "") : null;
})();

/** `ignore` option for tests that need `../shared`; logs why they are skipped. */
export function needsShared(what: string): boolean {
  if (SHARED) return false;
  console.warn(`skipping "${what}": ../shared is absent`);
  return true;
}
