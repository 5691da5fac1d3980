"""Pascal VOC folders (`Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/*.txt`) as COCO dicts.

Semantics (docs/datasets.md has the full table):
- coordinates are VOC's 1-based, inclusive pixel indices: a box with xmin=1, xmax=W covers the
  whole width, so COCO's x = xmin - 1 and w = xmax - xmin + 1 (detectron2 reads them the same
  way; mmdetection keeps xmin as is, one pixel to the right);
- `difficult` objects become ignored regions (COCO's iscrowd): no anchor learns from them and a
  detection on one is neither a hit nor a false positive, as in the VOC metric and mmdetection;
  `truncated` objects are ordinary objects;
- classes are every object name in `Annotations/`, sorted (not in the order first seen, which
  would depend on the file order and split): category ids 1..C in that order, recorded in the
  json's info and in every checkpoint trained on it;
- splits: `val` is `ImageSets/Main/test.txt` when present (VOC2007's protocol: train on
  trainval, score on test), else `val.txt`; `train` is then `trainval.txt` (or `train.txt`),
  else `train.txt`. Without `ImageSets/Main` every annotation is `train` and there is no `val`
  (`--val-fraction` carves one).
XML is parsed with defusedxml: a file declaring entities or a DTD is refused, not expanded.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET  # noqa: N817 - for its ParseError and Element types only
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET  # noqa: N812
from defusedxml import DefusedXmlException

from common.datasets.foreign import IMAGE_SUFFIXES, CocoBuilder, image_size
from common.errors import InputError

CLASS_ORDER = "sorted"


def is_voc(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir()


@dataclass(frozen=True)
class VocObject:
    name: str
    xyxy: tuple[float, float, float, float]  # 0-based pixel corners
    difficult: bool


@dataclass(frozen=True)
class VocRecord:
    xml: Path
    size: tuple[int, int] | None  # the size tag's (width, height), when it gives one
    objects: tuple[VocObject, ...]


def _text(xml: Path, node: ET.Element, tag: str, what: str) -> str:
    found = node.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise InputError(f"{xml}: {what} lacks <{tag}>")
    return found.text.strip()


def _number(xml: Path, node: ET.Element, tag: str, what: str) -> float:
    text = _text(xml, node, tag, what)
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{xml}: {what} <{tag}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{xml}: {what} <{tag}> is {text!r}, not a finite number")
    return value


def _size(xml: Path, root: ET.Element) -> tuple[int, int] | None:
    """The <size> tag's (width, height); None when absent or zero (some tools write 0)."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None
    width, height = (_number(xml, size, tag, "<size>") for tag in ("width", "height"))
    if width <= 0 or height <= 0:
        return None
    return int(width), int(height)


def _object(xml: Path, index: int, node: ET.Element) -> VocObject:
    name = _text(xml, node, "name", f"object {index}")
    what = f"object {index} ({name})"
    box = node.find("bndbox")
    if box is None:
        raise InputError(f"{xml}: {what} lacks <bndbox>")
    xmin, ymin, xmax, ymax = (_number(xml, box, t, what) for t in ("xmin", "ymin", "xmax", "ymax"))
    difficult = node.find("difficult")
    flag = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
    return VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax), flag)


def read_annotation(xml: Path) -> VocRecord:
    """One VOC XML file; InputError naming it when it is not well-formed VOC or declares
    entities."""
    try:
        root = SafeET.parse(xml).getroot()
    except DefusedXmlException as exc:
        raise InputError(f"{xml}: refused: XML declaring entities or a DTD ({exc})") from None
    except ET.ParseError as exc:
        raise InputError(f"{xml}: not well-formed XML ({exc})") from None
    except OSError as exc:
        raise InputError(f"{xml}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise InputError(f"{xml}: not a Pascal VOC annotation (root <{root.tag}>)")
    objects = tuple(_object(xml, i, node) for i, node in enumerate(root.findall("object"), 1))
    return VocRecord(xml, _size(xml, root), objects)


def _list_file(root: Path, split: str) -> Path | None:
    """The ImageSets/Main list a split reads (module docstring), or None."""
    main = root / "ImageSets" / "Main"
    exists = {
        name: (main / f"{name}.txt").is_file() for name in ("train", "val", "trainval", "test")
    }
    if split == "val":
        name = "test" if exists["test"] else "val" if exists["val"] else None
    elif exists["test"]:
        name = "trainval" if exists["trainval"] else "train" if exists["train"] else None
    else:
        name = "train" if exists["train"] else None
    return main / f"{name}.txt" if name else None


def _split_ids(root: Path, split: str) -> tuple[list[str], Path | None]:
    """(image ids, the list file they came from or None when Annotations/ itself is the list)."""
    if (root / "ImageSets" / "Main").is_dir():
        listed = _list_file(root, split)
        if listed is None:
            raise InputError(
                f"{root}: no {split} annotations (ImageSets/Main has no "
                f"{'test.txt or val.txt' if split == 'val' else 'train.txt or trainval.txt'})"
            )
        lines = listed.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line.split()[0] for line in lines if line.strip()], listed
    if split == "val":
        raise InputError(f"{root}: no val annotations (a VOC folder without ImageSets/Main)")
    return sorted(p.stem for p in (root / "Annotations").glob("*.xml")), None


def _image_files(root: Path) -> dict[str, str]:
    """Image stem -> file name in JPEGImages/ (the first in sorted order when stems repeat)."""
    files: dict[str, str] = {}
    for path in sorted((root / "JPEGImages").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.setdefault(path.stem, path.name)
    return files


def class_names(root: Path) -> list[str]:
    """Every object name in Annotations/, sorted: the dataset's classes, whatever the split."""
    names = {obj.name for xml in sorted((root / "Annotations").glob("*.xml"))
             for obj in read_annotation(xml).objects}  # fmt: skip
    if not names:
        raise InputError(f"{root / 'Annotations'}: no objects in any XML file")
    return sorted(names)


def voc_split(root: Path, split: str) -> tuple[dict, Path]:
    """(the COCO dict of one split, JPEGImages/, which its file names are relative to)."""
    root = Path(root)
    ids, listed = _split_ids(root, split)
    names = class_names(root)
    builder = CocoBuilder(
        categories=list(enumerate(names, 1)),
        info={"source": "pascal-voc", "class_order": CLASS_ORDER, "list": str(listed or "")},
    )
    category_of = {name: cid for cid, name in builder.categories}
    images = _image_files(root)
    for image_stem in ids:
        xml = root / "Annotations" / f"{image_stem}.xml"
        if listed is not None and not xml.is_file():
            raise InputError(f"{listed}: names {image_stem!r}, which has no {xml}")
        file_name = images.get(image_stem)
        if file_name is None:
            if listed is not None:
                raise InputError(f"{listed}: names {image_stem!r}, which has no image in "
                                 f"{root / 'JPEGImages'}")  # fmt: skip
            builder.missing.add(f"{xml} (no {image_stem}.* in JPEGImages)")
            continue
        _add_record(builder, read_annotation(xml), root / "JPEGImages" / file_name, category_of)
    return builder.to_coco(root), root / "JPEGImages"


def _add_record(
    builder: CocoBuilder, record: VocRecord, image: Path, category_of: dict[str, int]
) -> None:
    actual = image_size(image)
    if actual is None:
        builder.unreadable.add(str(image))
        return
    if record.size is not None and record.size != actual:
        raise InputError(
            f"{record.xml}: <size> says {record.size[0]}x{record.size[1]} but {image} is "
            f"{actual[0]}x{actual[1]}"
        )
    image_id = builder.add_image(image.name, *actual)
    for index, obj in enumerate(record.objects, 1):
        where = f"{record.xml} object {index} ({obj.name})"
        builder.add_box(image_id, category_of[obj.name], obj.xyxy, where, ignore=obj.difficult)
