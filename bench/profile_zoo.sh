#!/usr/bin/env bash
# Profiles and perf-model fits behind docs/benchmarks.md sections 2-3 (issues 4, 5 and 16).
# Usage: bash bench/profile_zoo.sh [SHARED_DIR] [OUT_DIR]   (run from the repo root, venv active; ~30 min on 2 cores)
#   BACKEND=openvino STEPS="r56 mbv2" bash bench/profile_zoo.sh ...   the same profiles on another backend; outputs
#   of a backend other than onnxruntime are named <name>-<backend>.* (rerunning reuses the cache: resumable)
set -euo pipefail
SHARED=${1:-../shared}
OUT=${2:-bench/results}
CACHE=${CACHE:-engines}
BACKEND=${BACKEND:-onnxruntime}
STEPS=${STEPS:-"r56 mbv2 r20-int8 dp"}
TAG=$([ "$BACKEND" = onnxruntime ] && echo "" || echo "-$BACKEND")
mkdir -p "$OUT"
W=$SHARED/weights/cifar10-resnet
step() { [[ " $STEPS " == *" $1 "* ]]; }

timed() {  # name, command...: log, wall time
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - t0 )) s wall: $*" | tee -a "$OUT/walltimes.txt"
}

# ResNet-56, CIFAR input, FP32: 40 design + 30 held-out whole-network engines
if step r56; then
timed r56$TAG-profile itcp-deploy profile-engines cifar_resnet56 --weights $W/resnet56-4bfd9763.th \
  --input-shape 1x3x32x32 --backend $BACKEND --max-builds 72 --holdout 30 --cache $CACHE \
  -o "$OUT/r56$TAG.profile.json" --json
timed r56$TAG-fit itcp-deploy fit "$OUT/r56$TAG.profile.json" -o "$OUT/r56$TAG.perf_model.json" --force --json
fi

# MobileNetV2 (torchvision, random init: latency does not depend on the weights), 96x96
if step mbv2; then
timed mbv2$TAG-profile itcp-deploy profile-engines torchvision:mobilenet_v2 --input-shape 1x3x96x96 \
  --backend $BACKEND --max-builds 72 --holdout 30 --cache $CACHE -o "$OUT/mbv2$TAG.profile.json" --json
timed mbv2$TAG-fit itcp-deploy fit "$OUT/mbv2$TAG.profile.json" -o "$OUT/mbv2$TAG.perf_model.json" --force --json
fi

# ResNet-20 INT8 (Q/DQ graph from onnxruntime.quantization, 512 calibration images of the CIFAR-10 JPEG copy)
if step r20-int8; then
timed r20-calib itcp-deploy calibrate --data cifar10:$SHARED/data/cifar10-jpeg --num 512 --name cifar10-jpeg \
  --input-shape 1x3x32x32 --json
timed r20-int8-profile itcp-deploy profile-engines cifar_resnet20 --weights $W/resnet20-12fca82f.th \
  --input-shape 1x3x32x32 --precision int8 --calib cifar10-jpeg --max-builds 32 --holdout 10 --cache $CACHE \
  -o "$OUT/r20-int8.profile.json" --json
timed r20-int8-fit itcp-deploy fit "$OUT/r20-int8.profile.json" -o "$OUT/r20-int8.perf_model.json" --force --json
fi

# DP solve time, ResNet-56, 16 candidates per group, 1,000 bins
if step dp; then timed dp-speed python bench/dp_speed.py; fi
