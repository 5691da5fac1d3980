#!/usr/bin/env bash
# The README's loss study, end to end. Resumable: run it again and finished work is reused
# (pretrain skips an existing backbone; compare reuses finished runs and resumes unfinished ones).
#   scripts/loss_study.sh [OUT]        (default runs/study; PIPELINE=path/to/pipeline to override)
# Stages, in the order they run (each is one command you can also run alone):
#   1. a loss-neutral backbone: crop classifier on the built-in training split
#   2. clean study: nine losses and GHM's two halves x 3 seeds from that backbone, scored on
#      ONNX fp32 and int8
#   3. label-noise study: focal, GHM and PISA on a copy with 20% of the training labels flipped,
#      each loss's AP change from the clean study paired run by run (--reference)
#   4. with LONG=1: focal, GHM and GHM's two halves at four times the budget (24 epochs), seed 0
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/study}
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
SEEDS=${SEEDS:-3}
LOSSES=${LOSSES:-focal,ce,balanced-ce,focal-star,ghm,pisa,pisa-center,random,ohem,ghm-c-alone,ghm-r-alone}
# GHM's two halves apart (is either one what lags?): GHM-C with focal's own regression (smooth-l1,
# weight 1, / positives), and focal classification with GHM-R.
VARIANTS=(--variant "ghm-c-alone=ghm:ghm_r=false,reg_loss=smooth-l1,reg_weight=1"
          --variant "ghm-r-alone=ghm:ghm_c=false")
# The study's budget: 1200 training images at 160 px, 6 epochs (450 optimizer steps), all 200
# validation images; the backbone frozen in BatchNorm as usual with a pretrained start.
BUDGET=(--img-size 160 --epochs 6 --batch-size 16 --warmup-iters 50 --freeze-bn)

mkdir -p "$OUT"
if [[ ! -f "$OUT/backbone.pth" ]]; then
    "$PIPELINE" pretrain --out "$OUT/backbone.pth" --epochs 5
fi
"$PIPELINE" compare --out "$OUT/clean" --pretrained "$OUT/backbone.pth" --losses "$LOSSES" \
    --seeds "$SEEDS" --backend onnx,onnx-int8 "${VARIANTS[@]}" "${BUDGET[@]}"
if [[ ! -d "$OUT/data-noisy" ]]; then
    "$PIPELINE" data synth --out "$OUT/data-noisy" --label-noise 0.2
fi
"$PIPELINE" compare --out "$OUT/noisy" --data "$OUT/data-noisy" --pretrained "$OUT/backbone.pth" \
    --losses focal,ghm,pisa --seeds "$SEEDS" --backend onnx --reference "$OUT/clean" "${BUDGET[@]}"
if [[ "${LONG:-0}" == 1 ]]; then
    LONG_BUDGET=(--img-size 160 --epochs 24 --batch-size 16 --warmup-iters 50 --freeze-bn)
    "$PIPELINE" compare --out "$OUT/long" --pretrained "$OUT/backbone.pth" \
        --losses focal,ghm,ghm-r-alone,ghm-c-alone --seeds 1 --backend onnx "${VARIANTS[@]}" \
        "${LONG_BUDGET[@]}"
fi
