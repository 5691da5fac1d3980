"""Per-epoch validation through deploy's evaluator, so training mAP is scored like deployment.

Under DDP the images are split across the ranks (pipeline/sharded_eval.py) and rank 0 scores
the gathered detections; every rank gets the metrics back.
"""

from __future__ import annotations

from pathlib import Path

from deploy.evaluate import evaluate
from deploy.metadata import ModelMetadata
from pipeline.sharded_eval import evaluate_sharded
from train.distributed import current_rank_and_world
from train.model.retinanet import RetinaDetector
from train.predict import TorchPredictor
from train.trainer import Validator


def make_validator(
    ann_file: Path,
    img_dir: Path,
    metadata: ModelMetadata,
    max_images: int | None,
    device: str,
    strict: bool = False,
) -> Validator:
    """A callable the trainer runs after an epoch: COCO AP / AP50 / AP75 of the current weights."""

    def validate(model: RetinaDetector, epoch: int) -> dict[str, float]:
        predictor = TorchPredictor(model, metadata, device=device)
        if current_rank_and_world()[1] > 1:
            metrics = evaluate_sharded(
                predictor, ann_file, img_dir, max_images, batch_size=8, strict=strict
            )
            return {"AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"]}
        report = evaluate(
            predictor,
            ann_file,
            img_dir,
            batch_size=8,
            warmup=0,
            max_images=max_images,
            strict=strict,
        )
        metrics = report["metrics"]
        return {"AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"]}

    return validate
