"""Which dataset a command scores on when --data is not given: the model's own, if still there."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.datasets.layout import resolve_split
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
    files the model trained or validated on (metadata "splits", written by the trainer: any
    layout, a carved --val-fraction split) when still on disk; else its dataset's
    (model_dataset), with a warning."""
    recorded = _recorded(extra, split) if data is None else None
    if recorded is not None:
        ann, images = recorded
        if ann.is_file() and images.is_dir():
            log.info("using the model's own %s split %s (--data chooses another)", split, ann)
            return ann, images
        log.warning(
            "%s: the model's %s split is not on disk; using its dataset's (--data chooses one)",
            ann, split,
        )  # fmt: skip
    return resolve_split(model_dataset(data, extra.get("data")), split)


def _recorded(extra: dict[str, Any], split: str) -> tuple[Path, Path] | None:
    """The recorded [annotation file, image folder] pair, or None (none recorded, or not a pair
    of strings: a model file from elsewhere is not trusted to be well formed)."""
    splits = extra.get("splits")
    pair = splits.get(split) if isinstance(splits, dict) else None
    if not (isinstance(pair, list | tuple) and len(pair) == 2):
        return None
    if not all(isinstance(part, str) and part for part in pair):
        return None
    return Path(pair[0]), Path(pair[1])
