"""Find a split's annotation file and image folder in the dataset layouts we accept.

Two COCO layouts load as they are: the built-in one (`annotations/instances_{split}.json`, images
in `{split}/`) and COCO 2017's own (`annotations/instances_{split}2017.json`, images in
`{split}2017/`). A Pascal VOC or YOLO folder is converted to a cached COCO json first
(common/datasets/converted.py); the images stay where they are.
"""

from __future__ import annotations

from pathlib import Path

from common.datasets.converted import converted_split, foreign_layout
from common.errors import InputError

SPLITS = ("train", "val")


def _candidates(data: Path, split: str) -> list[tuple[Path, Path]]:
    return [
        (data / "annotations" / f"instances_{split}.json", data / split),
        (data / "annotations" / f"instances_{split}2017.json", data / f"{split}2017"),
    ]


def resolve_split(data: Path, split: str) -> tuple[Path, Path]:
    """(annotation json, image dir) of `split` under the dataset root `data`."""
    if split not in SPLITS:
        raise InputError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data}: dataset directory not found")
    for ann_file, img_dir in _candidates(data, split):
        if ann_file.is_file():
            if not img_dir.is_dir():
                raise InputError(f"{img_dir}: image directory for {ann_file.name} not found")
            return ann_file, img_dir
    layout = foreign_layout(data)
    if layout is not None:
        return converted_split(data, split, layout)
    looked = ", ".join(str(a.relative_to(data)) for a, _ in _candidates(data, split))
    raise InputError(
        f"{data}: no {split} annotations (looked for {looked}, a Pascal VOC folder with "
        "Annotations/ and JPEGImages/, a YOLO folder with images/ and labels/)"
    )
