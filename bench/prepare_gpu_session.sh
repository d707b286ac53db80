#!/bin/bash
# Prepares .device/ for one borrowed-GPU call of bench/gpu_session.sh and checks the 64 MiB carry.
# Usage, from the project root (needs ../shared and Deno):
#   bash bench/prepare_gpu_session.sh bench          bench and kernel-sweep bundles only (random weights),
#                                                    and realesrgan-ncnn-vulkan to time beside them
#   bash bench/prepare_gpu_session.sh psnr [MODEL]   bench bundle + psnr training from MODEL
#   bash bench/prepare_gpu_session.sh gan [MODEL]    gan training from MODEL with the partial VGG19 (fp16);
#                                                    no bench bundle (it would not fit)
#   bash bench/prepare_gpu_session.sh restore        puts weights/*.safetensors back afterwards
# MODEL defaults to this project's PSNR model; CROP sets the side of the training crops. The
# repository's model files do not fit beside .device/: the script moves weights/*.safetensors to
# /tmp/weights_away (MODEL travels as .device/init.safetensors) and prints the device command. The
# bundles are made from the working tree as it is now.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: prepare_gpu_session.sh psnr|gan|restore [MODEL]}
away=/tmp/weights_away
if [ "$stage" = restore ]; then
  mv "$away"/*.safetensors weights/ && echo "weights/ restored"
  exit 0
fi
[ "$stage" = psnr ] || [ "$stage" = gan ] || [ "$stage" = bench ] ||
  { echo "stage must be bench, psnr, gan or restore" >&2; exit 2; }
model=${2:-weights/esrgan-psnr-x4.int8.safetensors}
[ -f "$model" ] || model=$away/$(basename "$model")
[ -f "$model" ] || { echo "no model file $model" >&2; exit 2; }

bash ../shared/device/prepare.sh bench/train_gpu.ts >/dev/null
# `deno bundle --minify` leaves the bundles without a `require` (tfjs's PlatformNode needs one)
prefix='import { createRequire as __cr } from "node:module"; globalThis.require ??= __cr(import.meta.url);'
bundle() {
  deno bundle --quiet --minify --keep-names -o /tmp/prepare_bundle.js "$1"
  { echo "$prefix"; cat /tmp/prepare_bundle.js; } > "$2"
}
bundle bench/train_gpu.ts .device/app.js
rm -f .device/bench.js .device/sweep.js .device/vgg.safetensors .device/init.safetensors
rm -rf .device/train_jpg .device/peer
if [ "$stage" = bench ]; then
  bundle bench/bench.ts .device/bench.js
  bundle bench/kernel_sweep.ts .device/sweep.js
  rm -f .device/app.js
  # realesrgan-ncnn-vulkan, x4plus's graph (bench/ncnn_peer.ts writes random weights there) and two crops
  mkdir -p .device/peer
  xz -T2 -9 -c ../shared/peers/realesrgan-ncnn-vulkan > .device/peer/realesrgan-ncnn-vulkan.xz
  cp ../shared/models/realesrgan-x4plus.param .device/peer/
  for side in 256 512; do
    deno run -A bench/crop_png.ts ../shared/data/bench/Kodak/kodim01.png "$side" ".device/peer/kodim01_$side.png"
  done
elif [ "$stage" = psnr ]; then
  bundle bench/bench.ts .device/bench.js
else
  deno run -A bench/fp16_safetensors.ts ../shared/models/vgg19-partial/vgg19_conv1_1-conv3_4.safetensors \
    .device/vgg.safetensors
fi
# training crops as JPEG: 320 px (1.4 MB; at 480 px, 3.2 MB, a psnr run's bundles and model overflowed the
# carry by 0.2 MiB)
crop=${CROP:-320}
if [ "$stage" != bench ]; then
  deno run -A bench/train_gpu_data.ts ../shared/data/train .device/train_jpg --size "$crop" >/dev/null
  cp "$model" .device/init.safetensors
fi
mkdir -p "$away"
mv weights/*.safetensors "$away"/ 2>/dev/null || true

# what travels: the tree's files (tracked and untracked, not ignored) and .device/
# (du fails on the tracked model files just moved away: those are not counted)
tree=$(git ls-files -co --exclude-standard -z | { xargs -0 du -cb 2>/dev/null || true; } | awk 'END { print $1 }')
device=$(du -sb .device | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "carry: $(mib $((tree + device))) MiB of 64 (tree $(mib "$tree"), .device $(mib "$device")); weights moved to $away"
[ $((tree + device)) -lt $((64 * 1048576)) ] || echo "TOO BIG: leave something out of .device/ (smaller crops: CROP=256)" >&2
if [ "$stage" = bench ]; then
  echo 'device command: TRAIN_MIN=0 bash bench/gpu_session.sh 2>&1   (carry [".device"])'
elif [ "$stage" = psnr ]; then
  echo 'device command: TRAIN_MIN=5 PRETRAIN=.device/init.safetensors bash bench/gpu_session.sh 2>&1   (carry [".device"])'
else
  echo 'device command: TRAIN_MIN=6 PRETRAIN=.device/init.safetensors BENCH_S=1 TRAIN_ARGS="--stage gan --vgg .device/vgg.safetensors" bash bench/gpu_session.sh 2>&1   (carry [".device"])'
fi
echo "afterwards: bash bench/prepare_gpu_session.sh restore"
