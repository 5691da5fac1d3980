#!/usr/bin/env bash
# The loss study on real photos (README, docs/loss-study.md#real-photos). Resumable: run it again
# and finished work is reused. Needs local clones of the two public datasets:
#   CARDS_CLONE=.../TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10 \
#   RACCOON_CLONE=.../raccoon_dataset scripts/real_data/study.sh [OUT]     (default runs/real)
# Stages, each a command you can run alone:
#   1. scripts/real_data/prepare.py lays each clone out as a VOC folder (OUT/data-NAME)
#   2. a loss-neutral backbone per dataset: `pipeline pretrain` on its own training crops
#   3. per dataset, the eight settings x 3 seeds, scored on ONNX fp32, ONNX int8, OpenVINO bf16
#   4. cards only: focal, GHM and its halves again under --recipe paper (the papers' SGD)
# The two datasets train side by side, one thread each (two 1-thread runs finish sooner than
# two 2-thread runs back to back on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/real}
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-3}
LOSSES=${LOSSES:-focal,ce,pisa,pisa-center,ohem,ghm,ghm-c-alone,ghm-r-alone}
BACKENDS=onnx,onnx-int8,openvino-bf16
VARIANTS=(--variant "ghm-c-alone=ghm:ghm_r=false,reg_loss=smooth-l1,reg_weight=1"
          --variant "ghm-r-alone=ghm:ghm_c=false")
# 160 px letterboxed (both datasets' objects are large: a card is about a quarter of the
# picture, a raccoon most of it), batch 8, about 115 optimizer steps (cards 3 epochs of 296
# images, raccoon 6 of 150), warm-up 20 steps, frozen BatchNorm as usual from a pretrained
# backbone, fp32 (this CPU has no native bf16). One run: about 3 minutes on one core.
COMMON=(--img-size 160 --batch-size 8 --warmup-iters 20 --freeze-bn --cache-images --threads 1
        --backend "$BACKENDS" --seeds "$SEEDS")
declare -A EPOCHS=([cards]=3 [raccoon]=6)
declare -A CLONE=([cards]=${CARDS_CLONE:-} [raccoon]=${RACCOON_CLONE:-})

study() {  # dataset
    local name=$1 data="$OUT/data-$1"
    if [[ ! -d "$data" ]]; then
        [[ -n "${CLONE[$name]}" ]] || { echo "set ${name^^}_CLONE to a clone of the dataset" >&2; return 2; }
        "$PYTHON" scripts/real_data/prepare.py "$name" "${CLONE[$name]}" "$data"
    fi
    [[ -f "$OUT/$name-backbone.pth" ]] ||
        "$PIPELINE" pretrain --data "$data" --out "$OUT/$name-backbone.pth" --epochs 10
    "$PIPELINE" compare --out "$OUT/$name" --data "$data" --pretrained "$OUT/$name-backbone.pth" \
        --losses "$LOSSES" --epochs "${EPOCHS[$name]}" "${VARIANTS[@]}" "${COMMON[@]}"
    if [[ $name == cards ]]; then
        "$PIPELINE" compare --out "$OUT/$name-paper" --data "$data" --recipe paper \
            --pretrained "$OUT/$name-backbone.pth" --losses focal,ghm,ghm-c-alone,ghm-r-alone \
            --epochs "${EPOCHS[$name]}" "${VARIANTS[@]}" "${COMMON[@]}"
    fi
}

mkdir -p "$OUT"
study cards > "$OUT/cards.log" 2>&1 &
cards=$!
study raccoon > "$OUT/raccoon.log" 2>&1
wait "$cards"
