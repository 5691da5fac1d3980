"""Pascal VOC and YOLO folders read through the one COCO loader: converted, cached, reused.

Every command takes a split as (COCO json, image folder), and a trained model records that pair
so that export, eval and analyze find its data again. A VOC or YOLO split is therefore converted
to a COCO json on each use (the annotations are re-read, so an edit takes effect) and written
under the pipeline's cache, `$PIPELINE_CACHE/converted/` (default ~/.cache/softsample-pipeline),
in a folder named after the dataset's absolute path; the file is replaced only when its content
changes, atomically, so concurrent runs of a study never read half a file. The images are read
where they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from common.datasets import voc, yolo
from common.files import replace_atomically

CONVERTED_FOLDER = "converted"
READERS = {"voc": voc.voc_split, "yolo": yolo.yolo_split}


def cache_root() -> Path:
    """Where the pipeline keeps what it generates: $PIPELINE_CACHE or ~/.cache/softsample-pipeline."""
    return Path(os.environ.get("PIPELINE_CACHE", "~/.cache/softsample-pipeline")).expanduser()


def foreign_layout(root: Path) -> str | None:
    """ "voc", "yolo" or None (not a layout this module reads)."""
    if voc.is_voc(root):
        return "voc"
    if yolo.is_yolo(root):
        return "yolo"
    return None


def to_coco(root: Path, split: str, layout: str) -> tuple[dict, Path]:
    """(COCO dict, image folder) of one split of a VOC or YOLO folder."""
    return READERS[layout](Path(root), split)


def converted_split(root: Path, split: str, layout: str) -> tuple[Path, Path]:
    """(cached COCO json, image folder) of one split, the json rewritten only when it changed."""
    coco, images = to_coco(root, split, layout)
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    path = cache_root() / CONVERTED_FOLDER / f"{layout}-{key}" / f"instances_{split}.json"
    payload = json.dumps(coco, separators=(",", ":")).encode()
    if not (path.is_file() and path.read_bytes() == payload):
        replace_atomically(path, lambda handle: handle.write(payload))
    return path, images
