"""--init-from: start a run from another run's whole detector (backbone, FPN and heads).

Every tensor whose name and shape match is copied. Only the classifier's last layer may differ,
when the class count does (fine-tuning onto new classes): it keeps its fresh initialization (the
prior-probability bias) and a warning says so. Any other mismatch means a different
architecture, which is an error naming the option to change, since a half-loaded detector
would train as if from scratch without saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from common.errors import InputError
from train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# The classifier's last layer: its shape follows the class count.
CLASSIFIER_KEYS = ("head.cls_out.weight", "head.cls_out.bias")
ARCHITECTURE_FIELDS = ("backbone", "fpn_channels", "head_convs")


def init_from_checkpoint(model: nn.Module, path: Path, class_names: list[str]) -> int:
    """Copy the checkpoint's matching tensors into `model`; returns how many were copied."""
    payload = load_checkpoint(path)
    stored: dict[str, torch.Tensor] = payload["state_dict"]
    target = model.state_dict()
    _check_architecture(payload["model_config"], model, path)
    fits = {k: v for k, v in stored.items() if k in target and v.shape == target[k].shape}
    left_out = sorted(k for k in target if k not in fits)
    if any(k not in CLASSIFIER_KEYS for k in left_out):
        raise InputError(
            f"{path}: does not fit this detector ({left_out[0]} "
            f"{_shape(stored.get(left_out[0]))} there, {tuple(target[left_out[0]].shape)} here)"
        )
    model.load_state_dict(fits, strict=False)
    there = list(payload["class_names"])
    if left_out:
        log.warning(
            "%s: %d classes there, %d here: the classifier's last layer starts fresh",
            path, len(there), len(class_names),
        )  # fmt: skip
    elif there != list(class_names):
        log.warning(
            "%s: class names differ (there: %s; here: %s): the classifier's rows are reused "
            "in order", path, ", ".join(there), ", ".join(class_names),
        )  # fmt: skip
    log.info("%s: initialized %d of %d detector tensors", path, len(fits), len(target))
    return len(fits)


def _check_architecture(stored: dict, model: nn.Module, path: Path) -> None:
    here = model.config.to_dict()
    for name in ARCHITECTURE_FIELDS:
        if stored.get(name) != here.get(name):
            option = "--" + name.replace("_", "-")
            raise InputError(
                f"{path}: a detector with {name} {stored.get(name)!r}, not {here.get(name)!r}; "
                f"pass {option} {stored.get(name)} to fine-tune it"
            )


def _shape(tensor: torch.Tensor | None) -> str:
    return "missing" if tensor is None else str(tuple(tensor.shape))
