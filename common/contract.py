"""The contract between the stages: the exported graph's input and output names, the calibration
methods, and the detections every predictor returns (each engine's precisions: common/engines.py).

Written once here (torch-free) because export writes these names, deploy reads them and train's
PyTorch predictor returns the same detections; each used to keep its own copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.errors import InputError

INPUT_NAME = "images"
# The exported graph's outputs (decode and NMS inside), in this order.
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")
# The raw network's outputs before decoding (the graph without post-processing).
RAW_OUTPUT_NAMES = ("cls_logits", "box_deltas")

# The post-processing thresholds a model applies unless its export or training said otherwise
# (decode, score threshold, NMS, cap), recorded in every model file.
SCORE_THRESHOLD = 0.05
NMS_IOU = 0.5
MAX_DETECTIONS = 100
# Every model file's metadata: one JSON value per key, each key under this prefix; the
# post-processing thresholds are one key (`softsample.postprocess`, PostprocessConfig's JSON).
METADATA_PREFIX = "softsample."
POSTPROCESS_PROP = METADATA_PREFIX + "postprocess"
# How an int8 model's activation ranges are calibrated: each tensor's min and max, the
# entropy-minimizing threshold of its histogram, or a percentile of its magnitudes.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class PostprocessConfig:
    """The one thresholds type: what training-time validation, the PyTorch predictor and the
    exported graph apply (train/postprocess.py defines the steps), stored in every model file."""

    score_threshold: float = SCORE_THRESHOLD
    nms_iou: float = NMS_IOU
    topk_per_level: int = 1000
    max_detections: int = MAX_DETECTIONS

    def __post_init__(self) -> None:
        numbers = (self.score_threshold, self.nms_iou, self.topk_per_level, self.max_detections)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise InputError(f"thresholds must be numbers, got {numbers}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise InputError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise InputError(f"nms_iou must be in [0, 1], got {self.nms_iou}")
        if not isinstance(self.topk_per_level, int) or self.topk_per_level < 1:
            raise InputError(f"topk_per_level must be an integer >= 1, got {self.topk_per_level}")
        if not isinstance(self.max_detections, int) or self.max_detections < 1:
            raise InputError(f"max_detections must be an integer >= 1, got {self.max_detections}")

    def to_json(self) -> str:
        """Compact JSON, the form a model file stores under POSTPROCESS_PROP."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PostprocessConfig:
        try:
            values = json.loads(text)
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise InputError(f"bad post-processing config {text!r}: {exc}") from exc


@dataclass
class Detections:
    """Padded detections for a batch, in letterboxed-input pixels.

    num_dets: int64 (B,), how many leading rows of each image are real.
    boxes:    float32 (B, D, 4), x1 y1 x2 y2.
    scores:   float32 (B, D); padding rows score 0.
    labels:   int64 (B, D), class index (not category id); padding rows -1 (box 0).
    """

    num_dets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_arrays(cls, num_dets: Any, boxes: Any, scores: Any, labels: Any) -> Detections:
        """Cast runtime outputs (int32 labels, (B, 1) counts, fp16 boxes...) to the contract."""
        boxes_arr = np.asarray(boxes, dtype=np.float32)
        batch = boxes_arr.shape[0]
        return cls(
            num_dets=np.asarray(num_dets).reshape(batch).astype(np.int64),
            boxes=boxes_arr,
            scores=np.asarray(scores, dtype=np.float32),
            labels=np.asarray(labels).astype(np.int64),
        )


def fixed_batch(input_shape: Any) -> int | None:
    """The batch a graph's input is fixed at (the two-stage graph's 1), None when dynamic."""
    first = input_shape[0] if len(input_shape) else None
    return first if isinstance(first, int) and first > 0 else None


def in_batches_of(
    size: int | None, run: Callable[[np.ndarray], Detections], images: np.ndarray
) -> Detections:
    """`run` on `images` in chunks of `size` (None: all at once), the outputs concatenated."""
    if size is None or len(images) <= size:
        return run(images)
    parts = [run(images[i : i + size]) for i in range(0, len(images), size)]
    fields = ("num_dets", "boxes", "scores", "labels")
    return Detections(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


@dataclass
class EngineInfo:
    """What a TensorRT engine was built with and for: export writes it into the engine's
    sidecar, deploy checks it before loading. Batches are the optimization profile's range;
    `build` holds the build's details (plan, seconds, calibration images, timing cache)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    precision: str  # fp32 | fp16 | int8
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    source_onnx: str = ""
    build: dict[str, Any] = field(default_factory=dict)
