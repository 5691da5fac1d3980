"""Checkpoints: weights plus everything needed to rebuild and use the model.

Written atomically (temporary file in the same folder, then rename) so a crash never leaves a
half-written best.pt or last.pt; read with `weights_only=True` so a checkpoint cannot run code.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import InputError
from common.files import replace_atomically, write_text_atomic
from common.image import INPUT_FORMAT, PAD_VALUE
from train.model.detectors import detector_class
from train.model.retinanet import ModelConfig, RetinaDetector

__all__ = ["write_text_atomic"]  # and the names below; trainer.py imports it from here
FORMAT = "softsample-pipeline/1"
REQUIRED_KEYS = ("model_config", "state_dict", "class_names", "category_ids", "img_size")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` atomically."""
    replace_atomically(path, lambda handle: torch.save(obj, handle))


def checkpoint_payload(
    model: RetinaDetector,
    class_names: list[str],
    category_ids: list[int],
    loss: str,
    loss_options: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The dict stored in a .pt: only tensors and plain Python types."""
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        "img_size": model.config.img_size,
        "input_format": INPUT_FORMAT,
        "pad_value": PAD_VALUE,
        "loss": loss,
        "loss_options": {
            k: v for k, v in loss_options.items() if isinstance(v, (int, float, str, bool))
        },
        **extra,
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, or InputError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise, the error says enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint of ours"
        raise InputError(f"{path}: not a loadable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a checkpoint written by this pipeline")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def model_from_checkpoint(payload: dict[str, Any], source: Path) -> nn.Module:
    """Rebuild the detector a checkpoint describes and load its weights."""
    try:
        config = ModelConfig(**payload["model_config"])
    except TypeError as exc:
        raise InputError(f"{source}: stored model config is not one this version builds") from exc
    classes = {len(payload["class_names"]), len(payload["category_ids"]), config.num_classes}
    if len(classes) != 1:
        raise InputError(
            f"{source}: inconsistent number of classes ({len(payload['class_names'])} names, "
            f"{len(payload['category_ids'])} category ids, model built for {config.num_classes})"
        )
    model = detector_class(config)(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise InputError(f"{source}: weights do not fit the stored model config") from exc
    return model.eval()
