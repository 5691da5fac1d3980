"""Detection losses: elementwise functions, modules, the detection losses and the name -> loss table.

Public API (importable without the CLI):
- sigmoid_focal_loss, sigmoid_focal_loss_star: elementwise FL / FL*.
- GHMC, GHMR: gradient-harmonized classification / regression losses (nn.Modules with EMA state).
- iou_hlr_rank, isr_p_weights, carl_loss: PISA's pieces.
- the detection losses (dataclasses; options are fields) and LOSSES / build_loss / describe_losses.
- LOSS_NAMES, REG_LOSS_NAMES: the names alone (train/losses/names.py).

The names are imported here at once; everything else on first use (PEP 562), so that
`train.losses.names`, which the command line reads for its choices, loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from train.losses.names import LOSS_NAMES, REG_LOSS_NAMES

# name -> the module defining it
_LAZY = {
    **dict.fromkeys(
        ["DetectionLoss", "load_loss_state_dict", "loss_state_dict", "one_hot_targets",
         "positive_normalizer"], "train.losses.base",
    ),
    **dict.fromkeys(
        ["FocalDetectionLoss", "FocalStarDetectionLoss", "sigmoid_focal_loss",
         "sigmoid_focal_loss_star"], "train.losses.focal",
    ),
    **dict.fromkeys(["GHMC", "GHMR", "GhmDetectionLoss", "anchor_levels"], "train.losses.ghm"),
    **dict.fromkeys(
        ["PisaCenterDetectionLoss", "PisaDetectionLoss", "carl_loss", "iou_hlr_rank",
         "isr_p_weights"], "train.losses.pisa",
    ),
    **dict.fromkeys(
        ["LOSSES", "LossSettingError", "LossSpec", "build_loss", "describe_losses",
         "resolve_options"], "train.losses.registry",
    ),
    **dict.fromkeys(["asl1", "smooth_l1"], "train.losses.regression"),
    **dict.fromkeys(["OhemLoss", "RandomSamplingLoss"], "train.losses.sampling"),
}  # fmt: skip

__all__ = ["LOSS_NAMES", "REG_LOSS_NAMES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'train.losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next access is a plain lookup
    return value
