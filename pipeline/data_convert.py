"""`pipeline data convert`: a Pascal VOC or YOLO folder written out in the built-in COCO layout.

Training reads VOC and YOLO folders directly; this writes what it reads
(`annotations/instances_{split}.json`, images in `{split}/`, file names kept) for users who want
to see or edit the COCO form. The images are hard-linked where the file system allows, else
copied. The folder is assembled beside --out and renamed into place, so a failed conversion
leaves nothing half-written and an existing --out is never touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.datasets.converted import foreign_layout, to_coco
from common.datasets.layout import SPLITS
from common.errors import InputError
from common.files import link_or_copy, write_json_atomic
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Converted:
    out: Path
    counts: dict[str, tuple[int, int]]  # split -> (images, annotations)

    def line(self) -> str:
        parts = [f"{split} {images} images, {boxes} boxes"
                 for split, (images, boxes) in self.counts.items()]  # fmt: skip
        return f"wrote {self.out}: {'; '.join(parts)}"


def _splits(data: Path, layout: str) -> dict[str, tuple[dict, Path]]:
    """Every split the folder has (a VOC folder without lists has train only)."""
    found = {}
    for split in SPLITS:
        try:
            found[split] = to_coco(data, split, layout)
        except InputError as exc:
            if f"no {split} annotations" not in str(exc):
                raise
    if not found:
        raise PipelineError(f"{data}: no train or val split to convert")
    return found


def run_data_convert(source_format: str, data: Path, out: Path) -> Converted:
    layout = foreign_layout(data) if data.is_dir() else None
    if layout != source_format:
        found = f"looks like {layout}" if layout else "is not a VOC or YOLO folder"
        raise PipelineError(f"{data}: --from {source_format}, but the folder {found}")
    if out.exists():
        raise PipelineError(f"{out}: exists; choose a new folder (nothing was written)")
    splits = _splits(data, layout)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split, (coco, images) in splits.items():
            for image in coco["images"]:
                link_or_copy(images / image["file_name"], staging / split / image["file_name"])
            write_json_atomic(staging / "annotations" / f"instances_{split}.json", coco)
        os.rename(staging, out)
    except OSError as exc:
        raise PipelineError(
            f"{out}: cannot write the dataset there ({exc.strerror or exc})"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = {split: (len(coco["images"]), len(coco["annotations"]))
              for split, (coco, _) in splits.items()}  # fmt: skip
    return Converted(out, counts)
