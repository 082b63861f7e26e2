#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one go, for a machine with a CUDA GPU.
# Data: copy the four Fashion-MNIST .gz files into data/fashion-mnist/ (ignored by git) first.
# Usage: OUT=somewhere bash benchmarks/gpu.sh   (results land in $OUT, default benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export RESNETLAB_DATA=${RESNETLAB_DATA:-$PWD/data}
mkdir -p "$OUT"
python -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# 1. The trainer against the typical script, one epoch of Fashion-MNIST at batch 128.
for model in resnet20 resnet56 resnet110; do
    resnetlab bench train --model "$model" --batch-size 128 --steps 469 --device cuda --results "$OUT" | tee -a "$OUT/bench-train.txt"
done

# 2. ResNet-50 model step against torchvision's, bf16 + channels_last, eager and compiled.
resnetlab bench model --model resnet50 --device cuda --results "$OUT" | tee -a "$OUT/bench-model.txt"
resnetlab bench model --model resnet50 --device cuda --compile --results "$OUT" | tee -a "$OUT/bench-model.txt"

# 3. The fast recipe and the whole he2016 schedule of resnet20, with their wall times.
resnetlab train --model resnet20 --recipe fast --device cuda --out "$OUT/runs/fast" --no-progress | tee "$OUT/fast.txt"
resnetlab train --model resnet20 --recipe he2016 --device cuda --out "$OUT/runs/he2016" --no-progress --eval-every 20 | tee "$OUT/he2016.txt"
rm -f "$OUT"/runs/*/checkpoint.pt "$OUT"/runs/*/model.safetensors  # keep metrics and configs, not weights
