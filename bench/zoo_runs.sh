#!/usr/bin/env bash
# `itcp-deploy run` at a 1.3x SLA, --epochs 0, synthetic data, on three torchvision classifiers at 1x3x64x64
# (grouped convs, squeeze-excitation, concatenation) and two dense-prediction models at 1x3x128x128 (issue 15).
# Each run writes runs/zoo/<model>/report.json; a rerun resumes. Usage: nice -n 10 bash bench/zoo_runs.sh
set -u
run() {  # model, input size
  local name=${1#torchvision:}
  itcp-deploy run "$1" --data "synthetic:size=$2" --input-shape "1x3x$2x$2" --speedup 1.3 --epochs 0 \
      --cache runs/zoo/engines -o "runs/zoo/$name" --quiet --json > "runs/zoo/$name.json" 2> "runs/zoo/$name.err"
  echo "$1: exit $? $(tail -n 1 "runs/zoo/$name.err")"
}
mkdir -p runs/zoo
set -- ${@:-torchvision:regnet_x_400mf 64 torchvision:mobilenet_v3_small 64 torchvision:squeezenet1_1 64 torchvision:lraspp_mobilenet_v3_large 128 torchvision:fcn_resnet50 128}
while [ $# -ge 2 ]; do run "$1" "$2"; shift 2; done
