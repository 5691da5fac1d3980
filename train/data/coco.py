"""COCO detection dataset: validated json -> letterboxed uint8 images and xyxy targets.

Everything that can be checked cheaply is checked at construction, so a bad dataset fails before
training starts with one line naming the file and the problem; `strict=True` turns every skipped
item (missing image file, degenerate box, annotation of an unknown image) into such an error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from common.dataset_paths import image_file
from common.datasets.coco_json import read_coco_json
from common.errors import InputError
from common.image import letterbox, letterbox_size
from train.data.transforms import hflip_boxes, hflip_content

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")
MIN_BOX_SIDE = 1.0  # px in the original image; boxes this thin or thinner are dropped


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_items(path: Path, data: dict, key: str, fields: tuple[str, ...]) -> None:
    """Every entry of data[key] is an object with `fields`; ids are unique integers."""
    seen: set[int] = set()
    for i, item in enumerate(data[key]):
        if not isinstance(item, dict):
            raise InputError(f"{path}: {key}[{i}] is not an object")
        missing = [f for f in fields if f not in item]
        if missing:
            raise InputError(f"{path}: {key}[{i}] lacks {', '.join(missing)}")
        if not isinstance(item["id"], int) or isinstance(item["id"], bool):
            raise InputError(f"{path}: {key}[{i}] id {item['id']!r} is not an integer")
        if item["id"] in seen:
            raise InputError(f"{path}: {key} id {item['id']} appears twice")
        seen.add(item["id"])


def _check_fields(path: Path, data: dict) -> None:
    """bbox is 4 numbers; area and iscrowd are filled in when absent (COCOeval needs them)."""
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise InputError(f"{path}: annotation {ann['id']} bbox {bbox!r} is not [x, y, w, h]")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    for img in data["images"]:
        if not (isinstance(img["file_name"], str) and img["file_name"]):
            raise InputError(f"{path}: image {img['id']} file_name is not a non-empty string")
        if not all(isinstance(img[k], int) and img[k] > 0 for k in ("width", "height")):
            raise InputError(f"{path}: image {img['id']} width/height are not positive integers")


def load_coco_json(path: Path) -> dict:
    """Read and validate a COCO detection json, raising InputError with one line on any problem."""
    path = Path(path)
    data = read_coco_json(path, REQUIRED_KEYS, InputError)
    _check_items(path, data, "images", ("id", "file_name", "width", "height"))
    _check_items(path, data, "categories", ("id", "name"))
    _check_items(path, data, "annotations", ("id", "image_id", "category_id", "bbox"))
    _check_fields(path, data)
    return data


def _quiet_coco(data: dict) -> COCO:
    """A pycocotools COCO index over already-loaded data, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass(frozen=True)
class _ImageEntry:
    image_id: int
    file_name: Path
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float32 xyxy in original pixels
    labels: np.ndarray  # (K,) int64 class indices
    crowd_boxes: np.ndarray  # (M, 4) float32 xyxy in original pixels


def _xyxy_clipped(bbox: list[float], width: int, height: int) -> list[float] | None:
    """[x, y, w, h] -> clipped xyxy, or None when non-finite, negative or <= MIN_BOX_SIDE."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(map(math.isfinite, (x, y, w, h))) or w < 0 or h < 0:
        return None
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 <= MIN_BOX_SIDE or y2 - y1 <= MIN_BOX_SIDE:
        return None
    return [x1, y1, x2, y2]


def _as_boxes(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


class CocoDetection(Dataset):
    """COCO detection json + image folder as letterboxed (3, S, S) uint8 images and targets.

    Targets: `boxes` (K, 4) float32 xyxy in letterboxed pixels, `labels` (K,) int64 class
    indices (index into `category_ids`), `crowd_boxes` (M, 4) float32 (iscrowd=1 regions: to be
    ignored, not used as negatives), `image_id` int, `scale` float (canvas px per original px),
    `orig_size` (h, w). With `train=True` images are flipped horizontally with p = 0.5, drawn
    from torch's RNG so a seeded DataLoader reproduces them.
    """

    def __init__(
        self,
        ann_file: Path,
        img_dir: Path,
        img_size: int,
        train: bool = False,
        category_ids: list[int] | None = None,
        strict: bool = False,
    ) -> None:
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.img_size, self.train, self.strict = int(img_size), train, strict
        data = load_coco_json(self.ann_file)
        self.coco = _quiet_coco(data)
        # Where a converted dataset came from and how its classes were ordered (VOC, YOLO).
        self.info = data["info"] if isinstance(data.get("info"), dict) else {}
        self.category_ids, self.class_names = self._resolve_categories(data, category_ids)
        entries = self._build_entries(data)
        self._entries = self._drop_missing_files(entries)
        self.image_ids: list[int] = [e.image_id for e in self._entries]

    def _resolve_categories(
        self, data: dict, category_ids: list[int] | None
    ) -> tuple[list[int], list[str]]:
        """Class index -> category id (sorted json ids by default) and the matching names."""
        names = {c["id"]: str(c["name"]) for c in data["categories"]}
        ids = sorted(names) if category_ids is None else [int(c) for c in category_ids]
        if not ids:
            raise InputError(f"{self.ann_file}: no categories")
        if len(set(ids)) != len(ids):
            raise InputError(f"{self.ann_file}: category_ids {ids} contain duplicates")
        unnamed = [c for c in ids if c not in names]
        if unnamed:
            logger.warning("%s: categories %s not listed; named by id", self.ann_file, unnamed)
        return ids, [names.get(c, f"category_{c}") for c in ids]

    def _build_entries(self, data: dict) -> list[_ImageEntry]:
        """Group annotations per image (json order), convert and filter their boxes."""
        class_of = {c: i for i, c in enumerate(self.category_ids)}
        images = {img["id"]: img for img in data["images"]}
        per_image: dict[int, tuple[list, list, list]] = {i: ([], [], []) for i in images}
        dropped: list[dict] = []
        orphans: list[dict] = []
        for ann in data["annotations"]:
            if ann["category_id"] not in class_of:
                raise InputError(
                    f"{self.ann_file}: annotation {ann['id']} has category_id "
                    f"{ann['category_id']!r}, not one of {self.category_ids}"
                )
            img = images.get(ann["image_id"])
            if img is None:
                orphans.append(ann)
                continue
            box = _xyxy_clipped(ann["bbox"], img["width"], img["height"])
            if box is None:
                dropped.append(ann)
                continue
            boxes, labels, crowd = per_image[img["id"]]
            if ann["iscrowd"]:
                crowd.append(box)
            else:
                boxes.append(box)
                labels.append(class_of[ann["category_id"]])
        self._report_skipped(dropped, orphans)
        return [self._entry(img, *per_image[img["id"]]) for img in data["images"]]

    def _entry(self, img: dict, boxes: list, labels: list, crowd: list) -> _ImageEntry:
        image_file(self.img_dir, img["file_name"], self.ann_file, InputError)  # stays inside
        return _ImageEntry(
            image_id=img["id"],
            file_name=Path(img["file_name"]),
            width=img["width"],
            height=img["height"],
            boxes=_as_boxes(boxes),
            labels=np.asarray(labels, dtype=np.int64),
            crowd_boxes=_as_boxes(crowd),
        )

    def _report_skipped(self, degenerate: list[dict], orphans: list[dict]) -> None:
        """Warn about dropped annotations; with strict, the first one is the error."""
        if degenerate and self.strict:
            first = degenerate[0]
            raise InputError(
                f"{self.ann_file}: annotation {first['id']} bbox {first['bbox']} is degenerate "
                f"(w or h <= {MIN_BOX_SIDE:g} px inside the image, negative or not finite); "
                f"{len(degenerate)} such boxes (--strict)"
            )
        if orphans and self.strict:
            first = orphans[0]
            raise InputError(
                f"{self.ann_file}: annotation {first['id']} refers to image_id "
                f"{first['image_id']!r}, which is not listed; {len(orphans)} such (--strict)"
            )
        if degenerate:
            logger.warning(
                "%s: dropped %d degenerate boxes (w or h <= %g px, negative or NaN)",
                self.ann_file,
                len(degenerate),
                MIN_BOX_SIDE,
            )
        if orphans:
            logger.warning(
                "%s: ignored %d annotations of unknown images", self.ann_file, len(orphans)
            )

    def _drop_missing_files(self, entries: list[_ImageEntry]) -> list[_ImageEntry]:
        present = [e for e in entries if (self.img_dir / e.file_name).is_file()]
        missing = len(entries) - len(present)
        if missing and self.strict:
            first = next(e for e in entries if not (self.img_dir / e.file_name).is_file())
            raise InputError(
                f"{self.img_dir / first.file_name}: image file not found "
                f"({missing} of {len(entries)} missing in {self.img_dir})"
            )
        if not present:
            raise InputError(
                f"{self.ann_file}: no usable images ({len(entries)} listed, {missing} missing "
                f"under {self.img_dir})"
            )
        if missing:
            logger.warning("%s: skipped %d missing image files", self.img_dir, missing)
        return present

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, entry: _ImageEntry) -> tuple[np.ndarray, float]:
        path = self.img_dir / entry.file_name
        try:
            with Image.open(path) as image:
                size = image.size
                if size != (entry.width, entry.height):
                    raise InputError(
                        f"{path}: image is {size[0]}x{size[1]} but {self.ann_file.name} says "
                        f"{entry.width}x{entry.height}"
                    )
                return letterbox(image, self.img_size)
        except InputError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        entry = self._entries[index]
        canvas, scale = self._load(entry)
        image = torch.from_numpy(canvas).permute(2, 0, 1).contiguous()
        boxes = torch.from_numpy(entry.boxes * np.float32(scale))
        crowd = torch.from_numpy(entry.crowd_boxes * np.float32(scale))
        if self.train and torch.rand(()).item() < 0.5:
            content_w = letterbox_size(entry.width, entry.height, self.img_size)[0]
            image = hflip_content(image, content_w)
            boxes, crowd = hflip_boxes(boxes, content_w), hflip_boxes(crowd, content_w)
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(entry.labels.copy()),
            "crowd_boxes": crowd,
            "image_id": entry.image_id,
            "scale": float(scale),
            "orig_size": (entry.height, entry.width),
        }
        return image, target


def collate_detections(
    batch: list[tuple[torch.Tensor, dict]],
) -> tuple[torch.Tensor, list[dict]]:
    """Stack same-size images into (B, 3, S, S) uint8; keep per-image targets as a list."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]
