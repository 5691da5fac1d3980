"""Test helpers: write a COCO split out as a Pascal VOC or YOLO folder, independently of the
readers under test (by the formats' own definitions: VOC's 1-based inclusive corners, YOLO's
normalized centre and size)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image


def png(path: Path, width: int, height: int, colour: tuple[int, int, int] = (90, 90, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)
    return path


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult[, truncated]]) in VOC's 1-based pixels."""
    size_tag = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    parts = [f"<annotation><filename>{filename}</filename>", size_tag if size else ""]
    for name, x1, y1, x2, y2, *flags in objects:
        difficult = flags[0] if flags else 0
        truncated = flags[1] if len(flags) > 1 else 0
        parts.append(
            f"<object><name>{name}</name><truncated>{truncated}</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _split_coco(ann: Path) -> dict:
    return json.loads(Path(ann).read_text())


def _link_image(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)


def coco_to_voc(splits: dict[str, tuple[Path, Path]], out: Path) -> Path:
    """{split: (COCO json, image folder)} -> a VOC folder with ImageSets/Main/{split}.txt.
    Boxes are written as VOC's 1-based corners (xmin = x + 1, xmax = x + w), crowd as difficult;
    ids are SPLIT-STEM, since a VOC folder holds every split's images in one JPEGImages/."""
    for split, (ann, images) in splits.items():
        coco = _split_coco(ann)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        stems = []
        for image in coco["images"]:
            source = Path(image["file_name"])
            stem = f"{split}-{source.stem}"
            stems.append(stem)
            _link_image(images / source, out / "JPEGImages" / f"{stem}{source.suffix}")
            objects = [
                (names[a["category_id"]], a["bbox"][0] + 1, a["bbox"][1] + 1,
                 a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3], a.get("iscrowd", 0))
                for a in coco["annotations"] if a["image_id"] == image["id"]
            ]  # fmt: skip
            xml = voc_xml(f"{stem}{source.suffix}", (image["width"], image["height"]), objects)
            (out / "Annotations").mkdir(parents=True, exist_ok=True)
            (out / "Annotations" / f"{stem}.xml").write_text(xml)
        lists = out / "ImageSets" / "Main"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return out


def coco_to_yolo(splits: dict[str, tuple[Path, Path]], out: Path) -> Path:
    """{split: (COCO json, image folder)} -> images/{split}, labels/{split}, data.yaml whose
    names are a dict keyed by the COCO category ids (so the YOLO ids are those ids). Crowd
    regions have no YOLO form and are left out."""
    names: dict[int, str] = {}
    for split, (ann, images) in splits.items():
        coco = _split_coco(ann)
        names.update({c["id"]: c["name"] for c in coco["categories"]})
        for image in coco["images"]:
            relative = Path(image["file_name"])
            _link_image(images / relative, out / "images" / split / relative)
            width, height = image["width"], image["height"]
            lines = [
                f"{a['category_id']} {(a['bbox'][0] + a['bbox'][2] / 2) / width!r} "
                f"{(a['bbox'][1] + a['bbox'][3] / 2) / height!r} {a['bbox'][2] / width!r} "
                f"{a['bbox'][3] / height!r}\n"
                for a in coco["annotations"]
                if a["image_id"] == image["id"] and not a.get("iscrowd", 0)
            ]
            label = (out / "labels" / split / relative).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(lines))
    yaml_names = "".join(f"  {cid}: {name}\n" for cid, name in sorted(names.items()))
    (out / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnames:\n{yaml_names}"
    )
    return out
