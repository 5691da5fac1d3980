"""Which dataset a command scores on when --data is not given: the model's own, if still there."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from train.data.layout import resolve_split
from train.data.synthetic import ensure_synthetic_dataset

log = logging.getLogger(__name__)


def model_dataset(data: Path | None, trained_on: str | Path | None) -> Path:
    """--data, else the dataset the model was trained on when it is still on disk (said in the
    log), else the built-in one (with a warning when the model's dataset has gone)."""
    if data is not None:
        return Path(data)
    if trained_on:
        path = Path(trained_on)
        if path.is_dir():
            log.info("using the model's own dataset %s (--data chooses another)", path)
            return path
        log.warning("%s: the model's dataset is not on disk; using the built-in one", path)
    return ensure_synthetic_dataset()


def model_split(data: Path | None, extra: dict[str, Any], split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of `split` for a model: --data's when given; else the
    split files the model itself trained or validated with (--val-ann, --val-fraction's carved
    split: metadata "splits") when still on disk; else its dataset's (model_dataset)."""
    recorded = (extra.get("splits") or {}).get(split) if data is None else None
    if recorded:
        ann, images = Path(recorded[0]), Path(recorded[1])
        if ann.is_file() and images.is_dir():
            log.info("using the model's own %s split %s (--data chooses another)", split, ann)
            return ann, images
        log.warning("%s: the model's %s split is not on disk; using its dataset's", ann, split)
    return resolve_split(model_dataset(data, extra.get("data")), split)
