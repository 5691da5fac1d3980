"""Which network a model config builds: the one-stage RetinaNet or the two-stage Faster R-CNN."""

from __future__ import annotations

from torch import nn

from common.errors import InputError
from train.model.retinanet import ModelConfig, RetinaDetector


def detector_class(config: ModelConfig) -> type[nn.Module]:
    """The class for `config.detector` (a checkpoint from before the field is a RetinaNet)."""
    if config.detector == "retinanet":
        return RetinaDetector
    if config.detector == "faster-rcnn":
        from train.model.faster_rcnn import FasterRcnnDetector

        return FasterRcnnDetector
    raise InputError(f"unknown detector {config.detector!r}; valid: retinanet, faster-rcnn")


def is_two_stage(model: nn.Module) -> bool:
    """Whether `model` computes its own losses and detections (the two-stage detector)."""
    return bool(getattr(model, "two_stage", False))
