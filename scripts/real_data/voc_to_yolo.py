"""Write a YOLO copy of a Pascal VOC folder, independently of the pipeline's own readers.

    python scripts/real_data/voc_to_yolo.py runs/real/data-raccoon runs/real/data-raccoon-yolo

writes OUT/images/{train,val}/ (hard links where possible), OUT/labels/{train,val}/*.txt (one
line per object: class cx cy w h, normalized to the image size) and OUT/data.yaml (class names
sorted, the order the VOC reader gives them). VOC's corners are 1-based inclusive pixels, so an
object spans x in [xmin - 1, xmax]. Used to show that the same photos read as VOC and as YOLO
train and score alike (docs/loss-study.md#real-photos); it refuses `difficult` objects, which
YOLO cannot mark as ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import defusedxml.ElementTree as ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.files import link_or_copy  # noqa: E402


def objects(xml: Path) -> tuple[tuple[int, int], list[tuple[str, float, float, float, float]]]:
    """((width, height), [(name, x0, y0, x1, y1)]) with 0-based continuous corners."""
    root = ElementTree.parse(xml).getroot()
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    found = []
    for obj in root.iter("object"):
        if (obj.findtext("difficult") or "0").strip() == "1":
            raise SystemExit(f"{xml}: a difficult object; YOLO has no ignored boxes")
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        found.append((obj.findtext("name").strip(), xmin - 1, ymin - 1, xmax, ymax))
    return size, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("voc", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lists = {split: (args.voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
             for split in ("train", "val")}  # fmt: skip
    parsed = {stem: objects(args.voc / "Annotations" / f"{stem}.xml")
              for stems in lists.values() for stem in stems}  # fmt: skip
    names = sorted({obj[0] for _, objs in parsed.values() for obj in objs})
    images = {p.stem: p for p in (args.voc / "JPEGImages").iterdir()}
    for split, stems in lists.items():
        (args.out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            (width, height), objs = parsed[stem]
            link_or_copy(images[stem], args.out / "images" / split / images[stem].name)
            lines = [f"{names.index(n)} {(x0 + x1) / 2 / width:.10f} {(y0 + y1) / 2 / height:.10f} "
                     f"{(x1 - x0) / width:.10f} {(y1 - y0) / height:.10f}\n"
                     for n, x0, y0, x1, y1 in objs]  # fmt: skip
            (args.out / "labels" / split / f"{stem}.txt").write_text("".join(lines))
        print(f"{split}: {len(stems)} images")
    (args.out / "data.yaml").write_text("names:\n" + "".join(f"  - {name}\n" for name in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
