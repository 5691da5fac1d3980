"""What the Pascal VOC and YOLO readers share: the COCO dict they build and their counted warnings.

Both readers turn a folder into the COCO detection dict the rest of the pipeline reads (one
loader, one evaluator). Problems a dataset can live with (a box past the image's edge, a
degenerate box, an image that cannot be opened) are counted and reported once per split with
the first file named, as the COCO loader does; everything else is an InputError naming the file.
Torch-free: the evaluation path reads datasets too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from common.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# A box may overshoot the image by this much without a warning: labelling tools write 0 and W as
# often as VOC's 1 and W.
EDGE_TOLERANCE = 1.0


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header (nothing decoded), or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


@dataclass
class Counted:
    """Problems of one kind: how many, and the first one's description."""

    what: str
    count: int = 0
    first: str = ""

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where


@dataclass
class CocoBuilder:
    """Accumulates images and boxes into a COCO detection dict with consecutive ids."""

    categories: list[tuple[int, str]]
    info: dict = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    clipped: Counted = field(default_factory=lambda: Counted("boxes clipped to their image"))
    dropped: Counted = field(default_factory=lambda: Counted("degenerate boxes dropped"))
    unreadable: Counted = field(default_factory=lambda: Counted("unreadable images skipped"))
    missing: Counted = field(default_factory=lambda: Counted("labelled images not found"))

    def add_image(self, file_name: str, width: int, height: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width,
                            "height": height})  # fmt: skip
        return image_id

    def add_box(
        self, image_id: int, category_id: int, xyxy: tuple[float, ...], where: str,
        ignore: bool = False,
    ) -> None:  # fmt: skip
        """A box in 0-based pixel corners; clipped to the image (counted beyond the tolerance),
        dropped (counted) when nothing of it is left."""
        image = self.images[image_id - 1]
        width, height = image["width"], image["height"]
        x1, y1, x2, y2 = xyxy
        if x2 <= x1 or y2 <= y1:
            self.dropped.add(f"{where}: x {x1:g}..{x2:g}, y {y1:g}..{y2:g} (max <= min)")
            return
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            self.dropped.add(f"{where}: outside its {width}x{height} image")
            return
        overshoot = max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2)
        if overshoot > EDGE_TOLERANCE:
            self.clipped.add(f"{where}: {overshoot:g} px past its {width}x{height} image")
        w, h = cx2 - cx1, cy2 - cy1
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
            "bbox": [cx1, cy1, w, h], "area": w * h, "iscrowd": int(ignore),
        })  # fmt: skip

    def to_coco(self, source: Path) -> dict:
        """The COCO dict; the counted problems are logged once, naming the first of each."""
        for problem in (self.clipped, self.dropped, self.unreadable, self.missing):
            if problem.count:
                log.warning("%s: %d %s (first: %s)", source, problem.count, problem.what,
                            problem.first)  # fmt: skip
        if not self.images:
            raise InputError(f"{source}: no images found")
        return {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": cid, "name": name} for cid, name in self.categories],
        }


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder` (any depth), in a stable order."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
