#!/usr/bin/env bash
# The loss study on real photos (README, docs/loss-study.md#real-photos). Resumable: run it again
# and finished work is reused. Needs local clones of the public datasets:
#   RACCOON_CLONE=.../raccoon_dataset KANGAROO_CLONE=.../kangaroo scripts/real_data/study.sh [OUT]
# (default OUT: runs/real). Stages, each a command you can run alone:
#   1. scripts/real_data/prepare.py lays each clone out as a Pascal VOC folder (OUT/data-NAME)
#   2. a loss-neutral backbone per dataset: `pipeline pretrain` on its own training crops
#   3. per dataset, eight settings x 3 seeds scored on ONNX fp32, ONNX int8, OpenVINO bf16
#      (compare --parallel 2 --launcher local does the same in one stream; the two streams here
#      predate it)
#   4. raccoon: focal, GHM, GHM with the reference's options (ghm-ref: mmdetection's own
#      setting) and GHM's two halves again under --recipe paper (the papers' SGD), 3 seeds, in
#      two folders (one per stream), then one report
#   5. raccoon scored again on two more int8 calibrators (entropy, percentile): nothing retrains
# Two streams train side by side, one thread each (two 1-thread runs finish sooner than two
# 2-thread runs back to back on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/real}
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-3}
LOSSES=${LOSSES:-focal,ce,pisa,pisa-center,ohem,ghm,ghm-c-alone,ghm-r-alone}
VARIANTS=(--variant "ghm-c-alone=ghm:ghm_r=false,reg_loss=smooth-l1,reg_weight=1"
          --variant "ghm-r-alone=ghm:ghm_c=false"
          --variant "ghm-ref=ghm:level_mode=reference,ema_init=zero,sync_counts=false")
# 160 px letterboxed (a raccoon or kangaroo fills much of its photo), batch 8, raccoon 6 epochs
# of 150 photos (114 optimizer steps), kangaroo 5 of 123 (80 steps), warm-up 20 steps, frozen
# BatchNorm as usual from a pretrained backbone. One run: 3 to 5 minutes on one core.
COMMON=(--img-size 160 --batch-size 8 --warmup-iters 20 --freeze-bn --cache-images --threads 1
        --backend onnx,onnx-int8,openvino-bf16 --seeds "$SEEDS")
declare -A EPOCHS=([raccoon]=6 [kangaroo]=5)
declare -A CLONE=([raccoon]=${RACCOON_CLONE:-} [kangaroo]=${KANGAROO_CLONE:-})

prepared() {  # dataset: its VOC folder and backbone, made once
    local name=$1 data="$OUT/data-$1"
    if [[ ! -d "$data" ]]; then
        [[ -n "${CLONE[$name]}" ]] || { echo "set ${name^^}_CLONE to a clone of the dataset" >&2; return 2; }
        "$PYTHON" scripts/real_data/prepare.py "$name" "${CLONE[$name]}" "$data"
    fi
    [[ -f "$OUT/$name-backbone.pth" ]] ||
        "$PIPELINE" pretrain --data "$data" --out "$OUT/$name-backbone.pth" --epochs 10
}

compare() {  # dataset, study folder, losses, extra options...
    local name=$1 out=$2 losses=$3 variant
    shift 3
    local named=()  # compare refuses a --variant its --losses do not list
    for variant in "${VARIANTS[@]}"; do
        [[ $variant == --variant ]] && continue
        [[ ",$losses," == *",${variant%%=*},"* ]] && named+=(--variant "$variant")
    done
    "$PIPELINE" compare --out "$OUT/$out" --data "$OUT/data-$name" --losses "$losses" \
        --pretrained "$OUT/$name-backbone.pth" --epochs "${EPOCHS[$name]}" "${COMMON[@]}" \
        "${named[@]}" "$@"
}

stream_a() {
    compare raccoon raccoon "$LOSSES"
}

stream_b() {
    compare kangaroo kangaroo "$LOSSES"
    compare raccoon raccoon-paper focal,ghm,ghm-ref --recipe paper
    compare raccoon raccoon-paper-halves ghm-c-alone,ghm-r-alone --recipe paper
}

mkdir -p "$OUT"
prepared raccoon
prepared kangaroo
stream_a > "$OUT/stream-a.log" 2>&1 &
a=$!
stream_b > "$OUT/stream-b.log" 2>&1
wait "$a"
# One report for the paper recipe: the halves' runs join the others' folder (finished runs are
# reused, so this only scores and writes the report).
mkdir -p "$OUT/raccoon-paper/runs"
for run in "$OUT"/raccoon-paper-halves/runs/*/; do
    [[ -e "$OUT/raccoon-paper/runs/$(basename "$run")" ]] || cp -al "$run" "$OUT/raccoon-paper/runs/"
done
compare raccoon raccoon-paper focal,ghm,ghm-ref,ghm-c-alone,ghm-r-alone --recipe paper
# The calibrator as an axis (README: int8 and score thresholds per loss): the finished runs are
# only exported and scored on the two new engines (the last --backend wins).
compare raccoon raccoon "$LOSSES" --backend onnx,onnx-int8,openvino-bf16,onnx-int8:entropy,onnx-int8:percentile
