"""ONNX Runtime vs PyTorch eager latency at batch 1 on this CPU, side by side in one run.

Both backends go through deploy's timed loop (letterbox, inference, post-processing), alternating
in rounds so machine noise hits both alike. Target (issue 2): ONNX Runtime at most 0.7x PyTorch.

    python bench/onnx_vs_torch.py [--weights runs/demo/best.pt] [--rounds 5] [--iterations 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from deploy.backends.onnxruntime import OnnxRuntimePredictor
from deploy.evaluate import benchmark_latency
from deploy.metadata import ModelMetadata
from export.onnx import export_onnx
from pipeline.models import metadata_from_checkpoint
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.model.retinanet import ModelConfig, RetinaDetector
from train.predict import TorchPredictor


def load_or_build(weights: Path | None, img_size: int) -> tuple[RetinaDetector, ModelMetadata]:
    if weights is not None:
        payload = load_checkpoint(weights)
        return model_from_checkpoint(payload, weights), metadata_from_checkpoint(payload)
    model = RetinaDetector(ModelConfig(num_classes=5, img_size=img_size)).eval()
    names = [f"c{i}" for i in range(5)]
    return model, ModelMetadata(class_names=names, category_ids=list(range(5)), img_size=img_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    model, metadata = load_or_build(args.weights, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", metadata.to_props())
        predictors = {
            "pytorch": TorchPredictor(model, metadata),
            "onnxruntime": OnnxRuntimePredictor(onnx_path, provider="cpu"),
        }
        p50s: dict[str, list[float]] = {name: [] for name in predictors}
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                report = benchmark_latency(predictor, 1, args.iterations, warmup=3)
                p50s[name].append(report["latency"]["total_ms"]["p50"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, img {metadata.img_size}")
    print(f"{'backend':12s} {'p50 ms (median of rounds)':>26s}   rounds")
    for name, values in p50s.items():
        print(
            f"{name:12s} {statistics.median(values):26.2f}   {', '.join(f'{v:.1f}' for v in values)}"
        )
    ratio = statistics.median(p50s["onnxruntime"]) / statistics.median(p50s["pytorch"])
    print(f"ratio onnxruntime / pytorch = {ratio:.2f}  (target <= 0.70)")


if __name__ == "__main__":
    main()
