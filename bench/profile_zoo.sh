#!/usr/bin/env bash
# Profiles and perf-model fits behind docs/benchmarks.md sections 2-3 (issues 4 and 5).
# Usage: bash bench/profile_zoo.sh [SHARED_DIR] [OUT_DIR]   (run from the repo root, venv active; ~30 min on 2 cores)
set -euo pipefail
SHARED=${1:-../shared}
OUT=${2:-bench/results}
CACHE=${CACHE:-engines}
mkdir -p "$OUT"
W=$SHARED/weights/cifar10-resnet

timed() {  # name, command...: log, wall time
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - t0 )) s wall: $*" | tee -a "$OUT/walltimes.txt"
}

# ResNet-56, CIFAR input, FP32: 40 design + 30 held-out whole-network engines
timed r56-profile itcp-deploy profile-engines cifar_resnet56 --weights $W/resnet56-4bfd9763.th --input-shape 1x3x32x32 \
  --max-builds 72 --holdout 30 --cache $CACHE -o "$OUT/r56.profile.json" --json
timed r56-fit itcp-deploy fit "$OUT/r56.profile.json" -o "$OUT/r56.perf_model.json" --force --json

# MobileNetV2 (torchvision, random init: latency does not depend on the weights), 96x96
timed mbv2-profile itcp-deploy profile-engines torchvision:mobilenet_v2 --input-shape 1x3x96x96 \
  --max-builds 72 --holdout 30 --cache $CACHE -o "$OUT/mbv2.profile.json" --json
timed mbv2-fit itcp-deploy fit "$OUT/mbv2.profile.json" -o "$OUT/mbv2.perf_model.json" --force --json

# ResNet-20 INT8 (Q/DQ graph from onnxruntime.quantization, 512 calibration images of the CIFAR-10 JPEG copy)
timed r20-calib itcp-deploy calibrate --data cifar10:$SHARED/data/cifar10-jpeg --num 512 --name cifar10-jpeg \
  --input-shape 1x3x32x32 --json
timed r20-int8-profile itcp-deploy profile-engines cifar_resnet20 --weights $W/resnet20-12fca82f.th \
  --input-shape 1x3x32x32 --precision int8 --calib cifar10-jpeg --max-builds 32 --holdout 10 --cache $CACHE \
  -o "$OUT/r20-int8.profile.json" --json
timed r20-int8-fit itcp-deploy fit "$OUT/r20-int8.profile.json" -o "$OUT/r20-int8.perf_model.json" --force --json

# DP solve time, ResNet-56, 16 candidates per group, 1,000 bins
timed dp-speed python bench/dp_speed.py
