"""A PyTorch predictor with the same numpy-in, numpy-out contract as deploy's runtime backends.

`pipeline eval` on a checkpoint hands this to the same evaluator that scores ONNX and TensorRT
files, so the only difference between the scores is the runtime. train/ must not import deploy/,
so `Detections` is redefined here with the same field names, dtypes and shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from common.contract import Detections, PostprocessConfig
from common.errors import InputError
from train.model.anchors import anchors_per_level
from train.model.detectors import is_two_stage
from train.postprocess import count_nms_candidates, postprocess

_PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class TorchPredictor:
    """Runs a RetinaDetector plus `train.postprocess.postprocess` on numpy batches.

    Args:
        model: a RetinaDetector (anything with `forward(images) -> (cls_logits, box_deltas)`,
            an `anchors` buffer and an `anchor_spec`). It is moved to `device`; its train/eval
            mode is restored after each call, so a trainer can reuse one predictor per epoch.
        metadata: stored as given on `.metadata` (class names, category ids, ...) for the
            evaluator; this class does not read it.
        device: torch device string.
        config: post-processing thresholds; the architecture's defaults when None.
    """

    backend_name = "pytorch"

    def __init__(
        self,
        model: nn.Module,
        metadata: Any,
        device: str = "cpu",
        config: PostprocessConfig | None = None,
        count_candidates: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config or PostprocessConfig()
        # the metadata states the thresholds run (None: a bare predictor, the parity check's)
        self.metadata = (
            None if metadata is None else dataclasses.replace(metadata, postprocess=self.config)
        )
        self.img_size = int(model.anchor_spec.img_size)
        self._anchors_per_level = anchors_per_level(model.anchor_spec)
        # NMS candidates per image called on (warm-up calls included), when asked: eval reports
        # them; a long-lived predictor (a server) would otherwise grow this list forever.
        self.candidate_counts: list[int] | None = [] if count_candidates else None

    def run_thresholds(self, thresholds: PostprocessConfig) -> None:
        """Run the post-processing at these values from now on, and say so in `.metadata` (a
        checkpoint's post-processing is PyTorch, so any value is exact; the evaluator reads the
        metadata)."""
        self.config = thresholds
        self.metadata = dataclasses.replace(self.metadata, postprocess=thresholds)

    @property
    def precision(self) -> str:
        """ "fp32", "fp16" or "bf16": the dtype of the model's weights."""
        dtype = next(self.model.parameters()).dtype
        return _PRECISION_NAMES.get(dtype, str(dtype).removeprefix("torch."))

    def _check_images(self, images: np.ndarray) -> None:
        expected = (3, self.img_size, self.img_size)
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != expected:
            shape = getattr(images, "shape", type(images).__name__)
            raise InputError(
                f"TorchPredictor expects a numpy array (B, {', '.join(map(str, expected))}) "
                f"of raw 0..255 letterboxed pixels, got {shape}"
            )

    def __call__(self, images: np.ndarray) -> Detections:
        """(B, 3, S, S) float32 raw 0..255 letterboxed pixels -> padded `Detections`."""
        self._check_images(images)
        dtype = next(self.model.parameters()).dtype
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
                if is_two_stage(self.model):  # its post-processing is its own second stage
                    out = self.model.detect(
                        batch.to(self.device, dtype), self.config, self.candidate_counts
                    )
                    return _detections(out)
                cls_logits, box_deltas = self.model(batch.to(self.device, dtype))
                if self.candidate_counts is not None:
                    counts = count_nms_candidates(cls_logits, self._anchors_per_level, self.config)
                    self.candidate_counts.extend(counts.tolist())
                out = postprocess(
                    cls_logits,
                    box_deltas,
                    self.model.anchors,
                    self._anchors_per_level,
                    self.img_size,
                    self.config,
                )
        finally:
            self.model.train(was_training)
        return _detections(out)


def _detections(out: dict[str, torch.Tensor]) -> Detections:
    return Detections(
        num_dets=out["num_dets"].cpu().numpy().astype(np.int64),
        boxes=out["boxes"].cpu().numpy().astype(np.float32),
        scores=out["scores"].cpu().numpy().astype(np.float32),
        labels=out["labels"].cpu().numpy().astype(np.int64),
    )
