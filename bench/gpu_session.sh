#!/bin/bash
# One borrowed-GPU session's work, self-contained (see ../shared/device/README.md):
#   0. bench/readback_probe.ts: where a read-back's time goes (plain WebGPU); bench/ncnn_peer.ts:
#      realesrgan-ncnn-vulkan's upscales of a 256x256 and a 512x512 image (where stage bench carried it;
#      PEER_S, its time limit, 100; PEER_ARGS, e.g. "--tile 128");
#   1. `deno task bench` on the GPU: every issue-6 shape, tfjs stock webgpu vs our planned passes,
#      PyTorch (CUDA) in the same run;
#   2. bench/kernel_sweep.ts (single kernels per tiling and number format), when .device/sweep.js exists
#      and SWEEP_S is set;
#   3. psnr-stage training at full size (bench/train_gpu.ts) for TRAIN_MIN minutes, from PRETRAIN (0: none);
# and brings back to $OUT: the generator (fp16, pieces under 16 MiB) and results.tgz (bench JSON and
# log, training log, curves, validation sample, summary).
#
# Prepare on this machine (from the project root):
#   bash ../shared/device/prepare.sh bench/train_gpu.ts       # deno.xz, Vulkan libs, run.sh
#   deno bundle --quiet --minify --keep-names -o .device/app.js bench/train_gpu.ts
#   deno bundle --quiet --minify --keep-names -o .device/bench.js bench/bench.ts
#   deno run -A bench/train_gpu_data.ts ../shared/data/train .device/train_jpg --size 320
#   (then prepend to both bundles, which `deno bundle --minify` leaves without a `require`:
#    import { createRequire as __cr } from "node:module"; globalThis.require ??= __cr(import.meta.url);)
#   The tree must stay under the 64 MiB carry with .device/: move weights/*.safetensors out of it for the
#   call (and back after), carrying the model a run starts from as .device/init.safetensors.
#   A gan run also carries VGG19 weights: deno run -A bench/fp16_safetensors.ts
#   ../shared/models/vgg19-partial/vgg19_conv1_1-conv3_4.safetensors .device/vgg.safetensors (4.7 MB), and
#   TRAIN_ARGS="--stage gan --vgg .device/vgg.safetensors" (leave bench.js out to fit).
# Device command: PRETRAIN=.device/init.safetensors bash bench/gpu_session.sh   (carry [".device"])
# `bash bench/prepare_gpu_session.sh bench|psnr|gan` does all of this (bench: bench and sweep bundles, no
# training; on an H200 the bench of five backends took 120 s, of ten with --profile 382 s, start and transfer
# ~37 s).
# Knobs (environment): TRAIN_MIN (4; 0: no training), SWEEP_S (time limit of the sweep; unset: no sweep),
# PRETRAIN (default: the shipped x4plus, if it travelled; "none": random init), BENCH_S (time limit of the
# bench, 420), BENCH_CASES (--all-shapes plus the Upscaler's tiled upscale of a 256x256 image,
# and of a 512x512 one in tiles of 128 and of 256),
# BENCH_BACKENDS (default below: stock, our direct plan, +auto (the faster of direct and F(4x4) by a timed
# first run, the default of deno task upscale; forwards and upscales; with +hostblend its upscales read each
# tile back and blend on the host, as before the GPU blended them; with +onesubmit each pass is submitted
# whole, as before the plans submitted them in growing pieces; with +latemap every read-back waits for
# mapAsync's promise, as before core/kernels/webgpu_map.ts read early past Deno's 10 ms), the Winograd
# F(4x4) plan (as the trainer's default chose on an H200), F(4x4) in f16 (new: the candidate for the f16
# goal; with +halfmath its GEMMs multiply in f16 too, forwards only); on the H200 +tune sped only the
# direct plans, F(2x2) in f32 lost to F(4x4) and F(2x2) in f16 took 0.94x / 1.17x / 1.53x of PyTorch, so
# those are left to BENCH_BACKENDS); the f16 rows time the forward in half precision; Winograd training
# rows run every convolution of the step as Winograd, in f32 only (f16 Winograd rows skip training;
# webgpu-plan:f16 times mixed-precision training)), BENCH_ARGS / TRAIN_ARGS (extra arguments, e.g.
# "--precision f16" to train in mixed precision, "--winograd 4", or to try the script on llvmpipe with
# --tiny).
set -uo pipefail
cd "$(dirname "$0")/.."
d=.device
out=${OUT:-/tmp/gpu_session_out}
res=/tmp/gpu_session_results
rm -rf "$res" && mkdir -p "$res" "$out"
[ -x /tmp/deno ] || { xz -T0 -dc "$d/deno.xz" > /tmp/deno && chmod +x /tmp/deno; }
export XDG_RUNTIME_DIR=/tmp DENO_WEBGPU_BACKEND=vulkan
export LD_LIBRARY_PATH="$PWD/$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$res/gpu.txt"

# where a read-back's time goes on this GPU (plain WebGPU, a few seconds)
timeout 60 /tmp/deno run -A bench/readback_probe.ts --json "$res/readback.json" 2>&1 | tee "$res/readback.log"
cp "$res/readback.json" "$res/readback.log" "$out"/ 2>/dev/null

# realesrgan-ncnn-vulkan on this GPU (x4plus's graph, random weights), where it travelled (stage bench)
if [ -f "$d/peer/realesrgan-ncnn-vulkan.xz" ]; then
  xz -dc "$d/peer/realesrgan-ncnn-vulkan.xz" > /tmp/realesrgan-ncnn-vulkan && chmod +x /tmp/realesrgan-ncnn-vulkan
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${PEER_S:-100}" /tmp/deno run -A bench/ncnn_peer.ts --peer /tmp/realesrgan-ncnn-vulkan \
    --param "$d/peer/realesrgan-x4plus.param" --image "$d/peer/kodim01_256.png" --image "$d/peer/kodim01_512.png" \
    --json "$res/ncnn.json" ${PEER_ARGS:-} 2>&1 | tee "$res/ncnn.log"
  echo "ncnn peer: exit ${PIPESTATUS[0]} after $(($(date +%s) - t0)) s"
  cp "$res/ncnn.json" "$out"/ 2>/dev/null
fi

t0=$(date +%s)
# shellcheck disable=SC2086
backends=webgpu,webgpu-plan,webgpu-plan+auto,webgpu-plan+auto+latemap,webgpu-plan+auto+hostblend,webgpu-plan+auto+onesubmit,webgpu-plan+winograd,webgpu-plan:f16+winograd,webgpu-plan:f16+winograd+halfmath
timeout "${BENCH_S:-420}" /tmp/deno run -A "$d/bench.js" ${BENCH_CASES:---all-shapes --case upscale:1x256x256 --case upscale:1x512x512 --case upscale:1x512x512/256} --backend "${BENCH_BACKENDS:-$backends}" \
  --torch --torch-device cuda --torch-script bench/torch_bench.py --runs 5 ${BENCH_ARGS:-} --json \
  --chart "$res/bench.svg" > "$res/bench.json" 2> "$res/bench.log"
echo "bench: exit $? after $(($(date +%s) - t0)) s"
# back even if a later step runs out of time (the chart as PNG here: deno task plot bench.json -o X.png)
cp "$res/bench.json" "$res/bench.log" "$out"/
[ -f "$res/bench.svg" ] && cp "$res/bench.svg" "$out"/
grep -v "warming up" "$res/bench.log" | tail -n 25

if [ -f "$d/sweep.js" ] && [ -n "${SWEEP_S:-}" ]; then
  t0=$(date +%s)
  timeout "$SWEEP_S" /tmp/deno run -A "$d/sweep.js" --json "$res/sweep.json" > /dev/null 2> "$res/sweep.log"
  echo "kernel sweep: exit $? after $(($(date +%s) - t0)) s"
  cp "$res/sweep.log" "$out"/
  sed -n '/^fastest/,$p' "$res/sweep.log"
fi

if [ "${TRAIN_MIN:-4}" = 0 ]; then
  tar czf "$out/results.tgz" -C "$res" .
  ls -la "$out"
  exit 0
fi

# the bundle reads PNG only: decode the carried JPEGs (Pillow is on the GPU machine)
py=python3; $py -c "import PIL" 2>/dev/null || py=/usr/bin/python3
$py - "$d/train_jpg" /tmp/train_png <<'EOF'
import os, sys
from PIL import Image
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for f in sorted(os.listdir(src)):
    Image.open(os.path.join(src, f)).convert("RGB").save(os.path.join(dst, os.path.splitext(f)[0] + ".png"))
print(f"{len(os.listdir(dst))} training images decoded")
EOF

pretrain=${PRETRAIN:-weights/realesrgan-x4plus.int8.safetensors}
[ "$pretrain" = none ] && pretrain=""
t1=$(date +%s)
# shellcheck disable=SC2086
timeout $(( ${TRAIN_MIN:-4} * 60 + 180 )) /tmp/deno run -A "$d/app.js" --data /tmp/train_png --steps 1000000 \
  --minutes "${TRAIN_MIN:-4}" ${pretrain:+--pretrain "$pretrain"} --out "$res/train" ${TRAIN_ARGS:-} \
  > "$res/train.log" 2>&1
echo "train: exit $? after $(($(date +%s) - t1)) s"
grep -i "filter-gradient\|initialised\|interrupted\|psnr stage" "$res/train.log"
grep -v "^step " "$res/train.log" | tail -n 40
grep "^step " "$res/train.log" | awk 'NR % 200 == 1' | tail -n 20

mv "$res"/train/model.fp16.safetensors* "$out"/
tar czf "$out/results.tgz" -C "$res" .
ls -la "$out"
