"""A deployed model's output narrowed after the fact: a higher score threshold, fewer detections.

Exact, because the graph returns each image's detections sorted by score after NMS: keeping the
scores >= a higher threshold, or the first N, is what the graph would have returned had it been
exported with those values. A different NMS IoU is not (a box the graph suppressed cannot come
back), nor a lower threshold or a larger cap: those are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from common.contract import Detections
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata


def check_narrowing(
    model: ModelMetadata, conf: float, iou: float, max_dets: int, source: str
) -> None:
    """Refuse what the model's own post-processing makes impossible to honour exactly."""
    if not 0.0 <= conf <= 1.0:
        raise DeployError(f"score threshold (--conf) must be in [0, 1], got {conf}")
    own = model.postprocess
    if conf < own.score_threshold:
        raise DeployError(
            f"{source}: score threshold (--conf) {conf} is below the "
            f"{own.score_threshold} this model applies itself; it can only be raised"
        )
    if not math.isclose(iou, own.nms_iou, abs_tol=1e-9):
        raise DeployError(
            f"{source}: NMS runs inside this model at IoU {own.nms_iou}; IoU (--iou) "
            f"{iou} cannot be applied to its output exactly (a second NMS pass is not "
            "NMS at that IoU); leave --iou out, or use the .pt checkpoint"
        )
    if not 1 <= max_dets <= own.max_detections:
        raise DeployError(
            f"{source}: detections per image (--max-dets) must be in "
            f"[1, {own.max_detections}] for this model, got {max_dets}"
        )


class NarrowedPredictor:
    """Wraps a deployed predictor; its metadata states the narrowed threshold and cap."""

    def __init__(self, predictor: Any, conf: float, max_dets: int) -> None:
        self.predictor = predictor
        self.conf, self.max_dets = conf, max_dets
        own = predictor.metadata.postprocess
        narrowed = dataclasses.replace(own, score_threshold=conf, max_detections=max_dets)
        self.metadata = dataclasses.replace(predictor.metadata, postprocess=narrowed)
        self.backend_name = getattr(predictor, "backend_name", type(predictor).__name__)
        self.precision = getattr(predictor, "precision", "fp32")

    def __call__(self, images: np.ndarray) -> Detections:
        found = self.predictor(images)
        boxes = found.boxes[:, : self.max_dets].copy()
        scores = found.scores[:, : self.max_dets].copy()
        labels = found.labels[:, : self.max_dets].copy()
        counts = np.zeros_like(found.num_dets)
        for b, n in enumerate(found.num_dets):
            kept = int((found.scores[b, : int(n)] >= self.conf).sum())  # a prefix: sorted
            counts[b] = min(kept, self.max_dets)
            boxes[b, counts[b] :], scores[b, counts[b] :], labels[b, counts[b] :] = 0.0, 0.0, -1
        return Detections(num_dets=counts, boxes=boxes, scores=scores, labels=labels)
