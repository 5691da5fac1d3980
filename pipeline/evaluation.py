"""`pipeline eval`: any model file -> the one evaluator -> report JSON + COCO results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.evaluate import environment_info, evaluate
from deploy.report import write_json_atomic
from pipeline.models import load_predictor
from pipeline.outputs import check_output_file
from train.data.layout import resolve_split
from train.data.synthetic import ensure_synthetic_dataset


def run_eval(
    model_path: Path,
    data: Path | None,
    split: str,
    batch_size: int,
    provider: str,
    device: str,
    max_images: int | None,
    warmup: int,
    json_path: Path | None,
    results: Path | None,
    strict: bool = False,
    cuda_api: str = "auto",
    cuda_graph: bool = False,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Score one model file; `overwrite=False` refuses to replace an existing report or results."""
    for output in (json_path, results):
        if output is not None:
            check_output_file(output, overwrite)
    predictor = load_predictor(
        model_path, provider=provider, device=device, cuda_api=cuda_api, cuda_graph=cuda_graph
    )
    root = data if data is not None else ensure_synthetic_dataset()
    ann_file, img_dir = resolve_split(root, split)
    report = evaluate(
        predictor,
        ann_file,
        img_dir,
        batch_size=batch_size,
        warmup=warmup,
        max_images=max_images,
        results_path=results,
        strict=strict,
    )
    report["model"] = str(model_path)
    report["environment"] = environment_info()
    if json_path is not None:
        write_json_atomic(json_path, report)
    return report
