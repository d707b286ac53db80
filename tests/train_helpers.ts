/** Shared pieces of the training tests: a tiny config and a reproducible test image. */
import { PRESETS, type TrainConfig } from "../train/config.ts";
import { type Batch, makeBatch, type RgbImage } from "../train/data.ts";
import type { Trainer } from "../train/trainer.ts";

/** nf 8, 1 block, gc 4, 16 px crops, batch 2. */
export const TINY: TrainConfig = {
  ...PRESETS.smoke,
  numFeat: 8,
  numBlock: 1,
  numGrowCh: 4,
  dNumFeat: 4,
  gtSize: 16,
  batchSize: 2,
  periods: [1000],
  restartWeights: [1],
};

/** A 48x40 image with structure at several scales (reproducible). */
export function testImage(seed = 1): RgbImage {
  const width = 48, height = 40;
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      rgb[i] = 128 + 100 * Math.sin((x + seed) / 3) * Math.cos(y / 5);
      rgb[i + 1] = (x * 5 + y * 3 * seed) % 256;
      rgb[i + 2] = ((x >> 2) + (y >> 2)) % 2 ? 220 : 30;
    }
  }
  return { name: `test${seed}.png`, width, height, rgb };
}

/** `count` batches of two test images each (batch i from images i and i + 4, stream i). */
export function testBatches(config: TrainConfig, count: number): Batch[] {
  return Array.from({ length: count }, (_, k) => k + 1).map((i) =>
    makeBatch([testImage(i), testImage(i + 4)], config, i)
  );
}

/** The L1 losses of `trainer`'s steps on batches [from, to). */
export async function pixelLosses(
  trainer: Trainer,
  batches: Batch[],
  from: number,
  to: number,
): Promise<number[]> {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push((await trainer.trainStep(batches[i])).l_pix);
  return out;
}
