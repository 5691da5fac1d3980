"""`pipeline eval`: any model file -> the one evaluator -> report JSON + COCO results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.evaluate import environment_info, evaluate
from deploy.report import write_json_atomic
from pipeline.models import load_predictor
from pipeline.outputs import check_output_file
from train.config import TrainConfig
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
    openvino_hint: str = "latency",
) -> dict[str, Any]:
    """Score one model file; `overwrite=False` refuses to replace an existing report or results."""
    for output in (json_path, results):
        if output is not None:
            check_output_file(output, overwrite)
    predictor = load_predictor(
        model_path,
        provider=provider,
        device=device,
        cuda_api=cuda_api,
        cuda_graph=cuda_graph,
        openvino_hint=openvino_hint,
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
    counts = getattr(predictor, "candidate_counts", None)  # PyTorch models only
    if counts and report.get("num_images"):  # the scored images come after the warm-up calls
        scored = counts[-int(report["num_images"]) :]
        report["nms_candidates_per_image"] = sum(scored) / len(scored)
    report["environment"] = environment_info()
    if json_path is not None:
        write_json_atomic(json_path, report)
    return report


def eval_in_run(name: str, model_path: Path, config: TrainConfig) -> dict[str, Any]:
    """Score a model of the run in `config.out` on its validation split, batch 1, as `run` and
    `compare` report it: report_{name}.json and detections_{name}.json beside the checkpoints;
    a .pt is timed on the device it trained on."""
    from train.distributed import resolve_device  # torch; `run` and `compare` have it loaded

    out = Path(config.out)
    return run_eval(
        model_path,
        config.data,
        "val",
        batch_size=1,
        provider="auto",
        device=resolve_device(config.device).type,
        max_images=config.max_val_images,
        warmup=5,
        json_path=out / f"report_{name}.json",
        results=out / f"detections_{name}.json",
        strict=config.strict,
    )
