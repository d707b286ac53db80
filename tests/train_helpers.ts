/** Shared pieces of the training tests: a tiny config and a reproducible test image. */
import { PRESETS, type TrainConfig } from "../train/config.ts";
import { type Batch, makeBatch, type RgbImage } from "../train/data.ts";
import { Trainer } from "../train/trainer.ts";
import { PerceptualLoss } from "../core/losses/perceptual_loss.ts";
import { randomVgg19Weights } from "../core/vgg19_arch.ts";

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

/** The tiny config's gan stage (multistep schedule, lr 1e-3 for both nets). */
export const TINY_GAN: TrainConfig = {
  ...TINY,
  stage: "gan",
  scheduler: "multistep",
  lrG: 1e-3,
  lrD: 1e-3,
};

const GAN_TERMS = ["l_pix", "l_percep", "l_gan", "l_d_real", "l_d_fake"];

/** Every loss of three gan steps of {@link TINY_GAN} (random VGG to conv2_2) on the current backend. */
export async function ganLosses(plannedStep: boolean): Promise<Record<string, number>[]> {
  const perceptual = PerceptualLoss.fromWeights(randomVgg19Weights("conv2_2", 3), {
    layerWeights: { conv2_2: 1 },
  });
  const t = Trainer.create({ ...TINY_GAN, plannedStep }, { perceptual });
  if (t.planned !== plannedStep) throw new Error(`the trainer is ${t.planned ? "" : "not "}planned`);
  const out = [];
  try {
    for (const i of [1, 2, 3]) {
      out.push(await t.trainStep(makeBatch([testImage(i), testImage(i + 4)], TINY_GAN, i)));
    }
  } finally {
    t.dispose();
  }
  return out;
}

/** Asserts two runs' gan losses agree to float rounding (2e-6 seen; a missing term shows as 1e-3). */
export function assertSameGanLosses(got: Record<string, number>[], want: Record<string, number>[]): void {
  for (const [i, w] of want.entries()) {
    for (const k of GAN_TERMS) {
      const [a, b] = [got[i][k], w[k]];
      if (!(Math.abs(a - b) <= 1e-4 * Math.abs(b) + 1e-7)) {
        throw new Error(`step ${i} ${k}: planned ${a}, autodiff ${b}`);
      }
    }
  }
}
