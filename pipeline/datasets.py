"""Which dataset a command scores on when --data is not given: the model's own, if still there."""

from __future__ import annotations

import logging
from pathlib import Path

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
