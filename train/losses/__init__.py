"""Detection losses: elementwise functions, modules, the detection losses and the name -> loss table.

Public API (importable without the CLI):
- sigmoid_focal_loss, sigmoid_focal_loss_star: elementwise FL / FL*.
- GHMC, GHMR: gradient-harmonized classification / regression losses (nn.Modules with EMA state).
- iou_hlr_rank, isr_p_weights, carl_loss: PISA's pieces.
- the detection losses (dataclasses; options are fields) and LOSSES / build_loss / describe_losses.
"""

from train.losses.base import (
    DetectionLoss,
    load_loss_state_dict,
    loss_state_dict,
    one_hot_targets,
    positive_normalizer,
)
from train.losses.focal import (
    FocalDetectionLoss,
    FocalStarDetectionLoss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from train.losses.ghm import GHMC, GHMR, GhmDetectionLoss, anchor_levels
from train.losses.pisa import (
    PisaCenterDetectionLoss,
    PisaDetectionLoss,
    carl_loss,
    iou_hlr_rank,
    isr_p_weights,
)
from train.losses.registry import (
    LOSSES,
    LossSettingError,
    LossSpec,
    build_loss,
    describe_losses,
    resolve_options,
)
from train.losses.regression import REG_LOSS_NAMES, asl1, smooth_l1
from train.losses.sampling import OhemLoss, RandomSamplingLoss

__all__ = [
    "GHMC",
    "GHMR",
    "LOSSES",
    "REG_LOSS_NAMES",
    "DetectionLoss",
    "FocalDetectionLoss",
    "FocalStarDetectionLoss",
    "GhmDetectionLoss",
    "LossSpec",
    "OhemLoss",
    "PisaCenterDetectionLoss",
    "PisaDetectionLoss",
    "RandomSamplingLoss",
    "LossSettingError",
    "anchor_levels",
    "asl1",
    "build_loss",
    "carl_loss",
    "describe_losses",
    "iou_hlr_rank",
    "isr_p_weights",
    "load_loss_state_dict",
    "loss_state_dict",
    "one_hot_targets",
    "positive_normalizer",
    "resolve_options",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "smooth_l1",
]
