/**
 * ESRGAN's training losses: pixel L1, VGG19 perceptual loss, relativistic average GAN losses.
 * @module
 */
export * from "./pixel_loss.ts";
export * from "./gan_loss.ts";
export * from "./perceptual_loss.ts";
