"""YOLO txt folders (ultralytics' and Roboflow's layouts) as COCO dicts.

Semantics (docs/datasets.md has the full table):
- a split's images are every image file under `images/{split}/` (Roboflow: `{split}/images/`;
  `valid` is accepted for `val`); each one's labels are the `.txt` of the same relative path
  under `labels/{split}/`: one object per line, `class cx cy w h`, the centre and size divided by
  the image's width and height;
- an image without a label file, or with an empty one, is a background image (no objects);
- class names come from `data.yaml` (`names` as a list, or a dict of id -> name) or, without it,
  `classes.txt` (one per line); the category id of a class is its YOLO id, so the model's class
  index, the COCO category id and the YOLO id are one number.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import yaml

from common.datasets.foreign import CocoBuilder, find_images, image_size
from common.errors import InputError

log = logging.getLogger(__name__)

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid")}


def _split_folders(root: Path, split: str) -> tuple[Path, Path] | None:
    """(images folder, labels folder) of a split, in either layout, or None."""
    for name in SPLIT_FOLDERS[split]:
        for images, labels in (
            (root / "images" / name, root / "labels" / name),
            (root / name / "images", root / name / "labels"),
        ):
            if images.is_dir():
                return images, labels
    return None


def is_yolo(root: Path) -> bool:
    return _split_folders(root, "train") is not None and (
        (root / "labels").is_dir() or (root / "train" / "labels").is_dir()
    )


def _names_from_yaml(path: Path) -> list[tuple[int, str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list) and names:
        return [(i, str(name)) for i, name in enumerate(names)]
    if isinstance(names, dict) and names:
        try:
            return sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError):
            raise InputError(f"{path}: names' keys must be class ids (integers)") from None
    raise InputError(f"{path}: no 'names' (a list of class names, or a dict id -> name)")


def class_names(root: Path) -> list[tuple[int, str]]:
    """(YOLO id, name) pairs from data.yaml, else classes.txt."""
    for name in YAML_NAMES:
        if (root / name).is_file():
            return _names_from_yaml(root / name)
    classes = root / "classes.txt"
    if classes.is_file():
        lines = [line.strip() for line in classes.read_text(encoding="utf-8").splitlines()]
        return list(enumerate(line for line in lines if line))
    raise InputError(f"{root}: a YOLO folder needs its class names (data.yaml or classes.txt)")


def _parse_line(label: Path, number: int, line: str, known: set[int]) -> tuple[int, list[float]]:
    """(class id, [cx, cy, w, h]) of one label line."""
    where = f"{label}:{number}"
    fields = line.split()
    if len(fields) != 5:
        raise InputError(f"{where}: {len(fields)} values; a YOLO box is 'class cx cy w h'")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise InputError(f"{where}: {line.strip()!r} is not five numbers") from None
    if not all(map(math.isfinite, values)) or values[0] != int(values[0]):
        raise InputError(f"{where}: {line.strip()!r}: the class must be an integer id")
    class_id = int(values[0])
    if class_id not in known:
        raise InputError(f"{where}: class id {class_id} is not one of the named {sorted(known)}")
    return class_id, values[1:]


def _read_labels(label: Path, known: set[int]) -> list[tuple[int, list[float]]]:
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read labels ({exc})") from None
    return [_parse_line(label, n, line, known)
            for n, line in enumerate(text.splitlines(), 1) if line.strip()]  # fmt: skip


def yolo_split(root: Path, split: str) -> tuple[dict, Path]:
    """(the COCO dict of one split, its images folder, which file names are relative to)."""
    root = Path(root)
    folders = _split_folders(root, split)
    if folders is None:
        raise InputError(f"{root}: no {split} annotations (no images/{split}/ folder)")
    images_dir, labels_dir = folders
    builder = CocoBuilder(categories=class_names(root), info={"source": "yolo",
                          "class_order": "yolo ids"})  # fmt: skip
    known = {cid for cid, _ in builder.categories}
    backgrounds = 0
    images = find_images(images_dir)
    for image in images:
        relative = image.relative_to(images_dir)
        label = (labels_dir / relative).with_suffix(".txt")
        size = image_size(image)
        if size is None:
            builder.unreadable.add(str(image))
            continue
        objects = _read_labels(label, known) if label.is_file() else []
        backgrounds += not objects
        image_id = builder.add_image(relative.as_posix(), *size)
        width, height = size
        for index, (class_id, (cx, cy, w, h)) in enumerate(objects, 1):
            corners = ((cx - w / 2) * width, (cy - h / 2) * height,
                       (cx + w / 2) * width, (cy + h / 2) * height)  # fmt: skip
            builder.add_box(image_id, class_id, corners, f"{label}:{index}")
    stems = {image.relative_to(images_dir).with_suffix("") for image in images}
    _count_orphan_labels(builder, stems, images_dir, labels_dir)
    if backgrounds:
        log.info("%s: %d images without objects (backgrounds)", images_dir, backgrounds)
    return builder.to_coco(images_dir), images_dir


def _count_orphan_labels(
    builder: CocoBuilder, stems: set[Path], images_dir: Path, labels_dir: Path
) -> None:
    """Label files whose image (relative path without suffix in `stems`) is missing: counted,
    their objects unused."""
    if not labels_dir.is_dir():
        return
    for label in sorted(labels_dir.rglob("*.txt")):
        if label.relative_to(labels_dir).with_suffix("") not in stems:
            builder.missing.add(f"{label} (no image of that name in {images_dir})")
