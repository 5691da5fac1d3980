"""Detection losses: elementwise functions, modules, and the name -> loss table."""

from train.losses.focal import FocalDetectionLoss, sigmoid_focal_loss
from train.losses.registry import LOSSES, UnknownLossError, build_loss, resolve_options

__all__ = [
    "LOSSES",
    "FocalDetectionLoss",
    "UnknownLossError",
    "build_loss",
    "resolve_options",
    "sigmoid_focal_loss",
]
