"""Which annotation file and image folder a run trains and validates on.

In order: `--train-ann/--train-images` and `--val-ann/--val-images` when given (any COCO layout);
else the split found under `--data` (common/datasets/layout.py). A dataset without a val split trains
with validation off (a warning says so), unless `--val-fraction F` carves a validation split out
of the training images: a draw of that fraction of the images with a fixed seed (the split
belongs to the dataset, not to the run: every run and every --seed of a comparison validates on
the same images), written as two COCO files under the run's folder (`splits/`) to be read.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.datasets.layout import resolve_split
from common.errors import InputError
from common.files import write_json_atomic
from train.config import TrainConfig
from train.data.synthetic import ensure_synthetic_dataset

log = logging.getLogger(__name__)

CARVED_FOLDER = "splits"
CARVE_SEED = 0


@dataclass(frozen=True)
class Split:
    """A COCO annotation file and the folder its `file_name`s are relative to."""

    ann: Path
    images: Path


def data_root(config: TrainConfig) -> Path:
    return Path(config.data) if config.data is not None else ensure_synthetic_dataset()


def _explicit(config: TrainConfig, split: str) -> Split | None:
    ann, images = getattr(config, f"{split}_ann"), getattr(config, f"{split}_images")
    if ann is None and images is None:
        return None
    if ann is None or images is None:
        given, missing = ("ann", "images") if ann is not None else ("images", "ann")
        raise InputError(f"--{split}-{given} needs --{split}-{missing} too")
    if not Path(ann).is_file():
        raise InputError(f"{ann}: annotation file not found (--{split}-ann)")
    if not Path(images).is_dir():
        raise InputError(f"{images}: image folder not found (--{split}-images)")
    return Split(Path(ann), Path(images))


def _has_split(root: Path, split: str) -> bool:
    try:
        resolve_split(root, split)
    except InputError as exc:
        if f"no {split} annotations" in str(exc):
            return False
        raise
    return True


def training_splits(config: TrainConfig) -> tuple[Split, Split | None]:
    """(train, val); val is None when there is none to validate on (validation off)."""
    train = _explicit(config, "train") or Split(*resolve_split(data_root(config), "train"))
    if config.val_fraction:
        if config.val_ann is not None:
            raise InputError("--val-fraction carves a val split out of train: drop --val-ann")
        return carve_validation(train, config.val_fraction, Path(config.out))
    return train, validation_split(config)


def validation_split(config: TrainConfig) -> Split | None:
    """The split a run validates on, or None when it has none (validation off)."""
    if config.val_fraction:
        return training_splits(config)[1]
    val = _explicit(config, "val")
    if val is not None:
        return val
    root = data_root(config)
    return Split(*resolve_split(root, "val")) if _has_split(root, "val") else None


def carve_validation(
    train: Split, fraction: float, out: Path, seed: int = CARVE_SEED
) -> tuple[Split, Split]:
    """Split `train` into (train minus val, val): `fraction` of its images, drawn with `seed`."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction {fraction}: must be between 0 and 1")
    try:
        coco: dict[str, Any] = json.loads(train.ann.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{train.ann}: not a readable COCO json ({exc})") from exc
    ids = sorted(image["id"] for image in coco.get("images", []))
    count = round(len(ids) * fraction)
    if count < 1 or count >= len(ids):
        raise InputError(
            f"--val-fraction {fraction}: {count} of {len(ids)} images would be validation; "
            "each split needs at least one image"
        )
    val_ids = set(random.Random(seed).sample(ids, count))
    folder = out / CARVED_FOLDER
    parts = {}
    for name, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        subset = {
            **coco,
            "images": [im for im in coco["images"] if keep(im["id"])],
            "annotations": [a for a in coco.get("annotations", []) if keep(a["image_id"])],
        }
        path = folder / f"instances_{name}.json"
        write_json_atomic(path, subset, compact=True)
        parts[name] = Split(path, train.images)
    log.info("--val-fraction %g: %d of %d training images validate (%s)", fraction, count,
             len(ids), folder)  # fmt: skip
    return parts["train"], parts["val"]
