#!/usr/bin/env bash
# One GPU check, under 5 minutes on one recent NVIDIA GPU: train a detector on the built-in
# dataset until it detects (AP > 0.3), export ONNX (fp32 + int8 QDQ) and TensorRT engines
# (fp32/fp16/int8), score all of them with the one evaluator on the same images, run the `gpu`
# (TensorRT) and `cuda` (torch on CUDA) tests, and print the comparison table with the issue's
# targets (engine AP within 0.1 points of PyTorch for fp32, 0.3 for fp16, 1.0 for int8; fp16
# engine latency at least 3x lower than PyTorch eager on the same GPU) and whether the fp16
# engine replayed a CUDA graph or fell back (and why).
#
#   scripts/gpu_check.sh [WORK_DIR]      (default runs/gpu_check; installs '.[gpu]' when missing)
#
# Every number it prints comes from the report JSON files it leaves in WORK_DIR/reports.
set -euo pipefail

WORK=${1:-runs/gpu_check}
PY=${PYTHON:-python}
DATA=$WORK/data
RUN=$WORK/run
REPORTS=$WORK/reports
EVAL_IMAGES=${EVAL_IMAGES:-200}
EPOCHS=${EPOCHS:-12}  # 800 images / batch 16 x 12 = 600 steps (the demo: AP 0.60 after 525)
mkdir -p "$REPORTS"
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "install (only what is missing)"
if ! $PY -c "import pipeline, tensorrt, onnxruntime, pytest, hypothesis" 2>/dev/null; then
    $PY -m pip install --quiet -e ".[gpu]" "pytest>=8" "hypothesis>=6.100"
fi
$PY scripts/check_ort_providers.py CPUExecutionProvider CUDAExecutionProvider TensorrtExecutionProvider

step "doctor"
$PY -m pipeline doctor

step "dataset"
[ -d "$DATA/annotations" ] || $PY -m pipeline data synth --out "$DATA" --num-train 800 --num-val "$EVAL_IMAGES"

step "train (resnet18, img 192, $EPOCHS epochs)"
$PY -m pipeline train --data "$DATA" --out "$RUN" --device cuda --epochs "$EPOCHS" --batch-size 16 \
    --img-size 192 --workers 4 --cache-images --max-val-images 100 --overwrite

step "export ONNX fp32 + int8 (ONNX Runtime QDQ)"
$PY -m pipeline export --weights "$RUN/best.pt" --data "$DATA" --precision int8 --overwrite
for precision in fp32 fp16 int8; do
    step "export TensorRT $precision"
    $PY -m pipeline export --weights "$RUN/best.pt" --data "$DATA" --trt --precision "$precision" \
        --batch 1 --overwrite  # tuned for the batch-1 latency measured below
done

for calibration in minmax entropy; do  # the calibrator as a choice (TensorRT 10's own, or the QDQ)
    step "export TensorRT int8, --calibration $calibration"
    mkdir -p "$RUN/calibration-$calibration"
    $PY -m pipeline export --weights "$RUN/best.pt" --data "$DATA" --trt --precision int8 --batch 1 \
        --calibration "$calibration" --out "$RUN/calibration-$calibration/model.onnx" --overwrite
done

evaluate() {  # name, model, extra eval options...
    local name=$1 model=$2
    shift 2
    step "eval $name"
    $PY -m pipeline eval --model "$model" --data "$DATA" --max-images "$EVAL_IMAGES" --warmup 20 \
        --json "$REPORTS/$name.json" "$@"
}
evaluate pytorch "$RUN/best.pt" --device cuda
evaluate onnxruntime-cuda "$RUN/model.onnx" --provider cuda
evaluate onnxruntime-cpu-int8 "$RUN/model.int8.onnx" --provider cpu
for precision in fp32 fp16 int8; do
    evaluate "tensorrt-$precision" "$RUN/model.$precision.engine"
done
evaluate tensorrt-fp16-graph "$RUN/model.fp16.engine" --cuda-graph
for calibration in minmax entropy; do
    evaluate "tensorrt-int8-$calibration" "$RUN/calibration-$calibration/model.int8.engine"
done

step "gpu tests (TensorRT) and cuda tests (torch on CUDA)"
$PY -m pytest -q -rs -m gpu tests/export/test_tensorrt.py
$PY -m pytest -q -rs -m cuda tests/train/test_losses_gpu.py

step "table"
$PY - "$REPORTS" "$RUN/model.fp16.engine.json" <<'EOF'
import json
import sys
from pathlib import Path

reports = Path(sys.argv[1])
names = ["pytorch", "onnxruntime-cuda", "onnxruntime-cpu-int8",
         "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8", "tensorrt-fp16-graph",
         "tensorrt-int8-minmax", "tensorrt-int8-entropy"]
rows = {n: json.loads((reports / f"{n}.json").read_text()) for n in names}
base = rows["pytorch"]
base_ap, base_ms = base["metrics"]["AP"], base["latency"]["inference_ms"]["p50"]
gpu = json.loads(Path(sys.argv[2]).read_text())["engine"]["gpu_name"]
print(f"{len(names)} models, {base['num_images']} val images, batch 1, on {gpu}; "
      "'x faster' = PyTorch inference p50 / this model's inference p50")
print(f"{'model':22s} {'precision':9s} {'AP':>6s} {'dAP pts':>8s} {'p50 ms':>8s} {'infer ms':>8s} "
      f"{'x faster':>8s}  CUDA graph")
for name, report in rows.items():
    ap, latency = report["metrics"]["AP"], report["latency"]
    p50, infer = latency["total_ms"]["p50"], latency["inference_ms"]["p50"]
    print(f"{name:22s} {report['precision']:9s} {ap:6.3f} {100 * (ap - base_ap):+8.2f} "
          f"{p50:8.2f} {infer:8.2f} {base_ms / infer:8.2f}  {report.get('cuda_graph', '-')}")

def gap(name):
    """|AP - PyTorch AP| in points: an engine scoring higher is as far off as one scoring lower."""
    return 100 * abs(base_ap - rows[name]["metrics"]["AP"])

speedup = base_ms / rows["tensorrt-fp16"]["latency"]["inference_ms"]["p50"]
graph = rows["tensorrt-fp16-graph"].get("cuda_graph", "")
checks = [
    (f"PyTorch model detects: AP {base_ap:.3f} > 0.3 (else every gap below is 0 vs 0)",
     base_ap > 0.3),
    (f"fp32 engine AP within 0.1 pts of PyTorch (gap {gap('tensorrt-fp32'):.2f})",
     gap("tensorrt-fp32") <= 0.1),
    (f"fp16 engine AP within 0.3 pts of PyTorch (gap {gap('tensorrt-fp16'):.2f})",
     gap("tensorrt-fp16") <= 0.3),
    (f"int8 engine AP within 1.0 pts of PyTorch (gap {gap('tensorrt-int8'):.2f})",
     gap("tensorrt-int8") <= 1.0),
    (f"fp16 engine with --cuda-graph AP within 0.3 pts (gap {gap('tensorrt-fp16-graph'):.2f})",
     gap("tensorrt-fp16-graph") <= 0.3),
    *((f"int8 engine, --calibration {c}, AP within 1.0 pts (gap {gap(f'tensorrt-int8-{c}'):.2f}); "
       f"recorded: {rows[f'tensorrt-int8-{c}'].get('conversion', {}).get('calibration_method')}",
       gap(f"tensorrt-int8-{c}") <= 1.0
       and rows[f"tensorrt-int8-{c}"].get("conversion", {}).get("calibration_method") == c)
      for c in ("minmax", "entropy")),
    (f"--cuda-graph reports what ran: {graph!r}",
     graph == "replayed" or (graph.startswith("fallback: ") and len(graph) > 20)),
    (f"fp16 engine >= 3x faster than PyTorch eager ({speedup:.1f}x)", speedup >= 3.0),
]
for text, ok in checks:
    print(("PASS " if ok else "FAIL ") + text)
verdict = {
    "gpu": gpu,
    "checks": [{"check": text, "pass": bool(ok)} for text, ok in checks],
    "models": {
        name: {"AP": r["metrics"]["AP"], "precision": r["precision"],
               "p50_ms": r["latency"]["total_ms"]["p50"], "cuda_graph": r.get("cuda_graph")}
        for name, r in rows.items()
    },
    "pass": all(ok for _, ok in checks),
}
(reports / "verdict.json").write_text(json.dumps(verdict, indent=2))
print(f"verdict written to {reports / 'verdict.json'}")
sys.exit(0 if verdict["pass"] else 1)
EOF
