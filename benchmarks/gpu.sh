#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, for a machine with a CUDA GPU.
# Data: copy the four Fashion-MNIST .gz files into data/fashion-mnist/ (ignored by git) first.
# Usage: OUT=somewhere bash benchmarks/gpu.sh [STAGE...]   (default: every stage, in this order)
#   tests    the CUDA tests (graphed step against eager, no host syncs, GPU run resumed on the CPU)
#   train    bench train for resnet20/56/110, one epoch at batch 128: typical, eager, graphed, compiled
#            (train:resnet110, or train:resnet20,resnet56, for some of them)
#   model    bench model for ResNet-50, eager and compiled
#   fast     the fast recipe end to end, timed (fast-compile: the same with --compile)
#   he2016   resnet20's whole he2016 schedule (64k steps), timed (he2016-compile: with --compile)
#   decode   bench decode: training crops from JPEG files on this machine's CPU (not in the default list)
# Each stage takes a few minutes; results land in $OUT (default benchmarks/results). A run's
# metrics.jsonl times training and evaluation; the log's "wall" line adds start-up and compilation.
# The runs of a stage end up in one archive, $OUT/runs-STAGE.tar.gz (configs and metrics, no weights).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export RESNETLAB_DATA=${RESNETLAB_DATA:-$PWD/data}
mkdir -p "$OUT"
# Offline machines cannot fetch build tools: build with the ones installed, else run from src/.
if ! python3 -m pip install -q --no-deps --no-build-isolation -e .; then
    echo "pip could not install the project here; running it from src/ instead"
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
stages=${*:-tests train model fast fast-compile he2016 he2016-compile}
failed=0

# run LOG COMMAND...: show and keep the command's output; remember a failure and go on.
run() {
    local log=$1 t0=$SECONDS; shift
    "$@" 2>&1 | tee -a "$OUT/$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "failed: $*" | tee -a "$OUT/$log"; failed=1; }
    echo "wall $((SECONDS - t0)) s: $*" | tee -a "$OUT/$log"
}

# pack STAGE RUN...: the stage's run folders as one file, weights left out. A machine lent for a
# short while may copy back only a few files, and four runs of three files each would crowd out the logs.
pack() {
    local stage=$1 run dirs=()
    shift
    for run in "$@"; do
        [ -d "$OUT/runs/$run" ] && dirs+=("runs/$run")
    done
    [ ${#dirs[@]} -gt 0 ] || return 0
    tar -czf "$OUT/runs-$stage.tar.gz" -C "$OUT" --exclude=checkpoint.pt --exclude=model.safetensors "${dirs[@]}" &&
        (cd "$OUT" && rm -rf "${dirs[@]}")
}

for stage in $stages; do
    echo "== $stage"
    compile=()
    [[ $stage == *-compile ]] && compile=(--compile)
    case $stage in
    tests)
        run tests-gpu.txt python3 -m pytest -q tests/test_gpu.py ;;
    train | train:*)
        # train:resnet110 times one net, so that a machine with a per-command cap can take them one call each.
        models=resnet20,resnet56,resnet110
        [[ $stage == train:* ]] && models=${stage#train:}
        for model in ${models//,/ }; do
            run bench-train.txt python3 -m resnetlab bench train --model "$model" --batch-size 128 --steps 469 --device cuda \
                --compile --results "$OUT"
        done ;;
    model)
        run bench-model.txt python3 -m resnetlab bench model --model resnet50 --device cuda --results "$OUT"
        run bench-model.txt python3 -m resnetlab bench model --model resnet50 --device cuda --compile --results "$OUT" ;;
    fast | fast-compile)
        # Batch 512 keeps a GPU busy; on the CPU, 10 epochs of it reached 93.92% (docs/performance.md).
        # Evaluated once, at the end: the clock then counts training and one pass over the test set.
        for epochs in 10 16 24; do
            run "$stage.txt" python3 -m resnetlab train --model resnet20 --recipe fast --batch-size 512 --lr 0.4 \
                --epochs "$epochs" --device cuda --eval-every 1000 --out "$OUT/runs/$stage-$epochs" --no-progress \
                "${compile[@]}"
        done
        pack "$stage" "$stage"-10 "$stage"-16 "$stage"-24 ;;
    decode)
        run bench-decode.txt python3 -m resnetlab bench decode --results "$OUT" ;;
    he2016 | he2016-compile)
        run "$stage.txt" python3 -m resnetlab train --model resnet20 --recipe he2016 --device cuda --eval-every 20 \
            --out "$OUT/runs/$stage" --no-progress "${compile[@]}"
        pack "$stage" "$stage" ;;
    *)
        echo "unknown stage $stage"; failed=1 ;;
    esac
done
rm -f "$OUT"/runs/*/checkpoint.pt "$OUT"/runs/*/model.safetensors  # what pack did not take: metrics and configs, not weights
exit $failed
