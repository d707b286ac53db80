/**
 * The part of exifr 7.1.3 we use. Its own declarations start with `/// <reference types="node" />`,
 * which would put @types/node over Deno's node typings in every module (node:assert's among them).
 */
declare const exifr: {
  /** EXIF orientation 1-8, undefined when the file has none. */
  orientation(input: Uint8Array | ArrayBuffer): Promise<number | undefined>;
};
export default exifr;
