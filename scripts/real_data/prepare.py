"""Lay out a local copy of a public VOC-annotated repository as a Pascal VOC folder.

Nothing of these datasets is in this repository: clone them yourself, then
    python scripts/real_data/prepare.py cards   CLONE OUT   # EdjeElectronics' playing cards
    python scripts/real_data/prepare.py raccoon CLONE OUT   # datitran/raccoon_dataset
    python scripts/real_data/prepare.py kangaroo CLONE OUT  # experiencor/kangaroo
writes OUT/Annotations/*.xml, OUT/JPEGImages/* (hard links where possible, else copies) and
OUT/ImageSets/Main/{train,val}.txt, which `--data OUT` reads directly.
- cards: images/train/ (XML beside each photo) is train, images/test/ is val, as the repository
  splits them;
- raccoon: annotations/*.xml and images/*.jpg, no split of its own: a fixed draw (seed 0) of
  VAL_FRACTION of the photos is val, the same on every machine;
- kangaroo: annots/*.xml and images/*.jpg, split like raccoon.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.files import link_or_copy  # noqa: E402

VAL_FRACTION = 0.25
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _pairs(xml_dir: Path, image_dir: Path) -> list[tuple[Path, Path]]:
    """(xml, image) pairs matched by file stem."""
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return [(xml, images[xml.stem]) for xml in sorted(xml_dir.glob("*.xml")) if xml.stem in images]


def _write(out: Path, splits: dict[str, list[tuple[Path, Path]]]) -> None:
    for split, pairs in splits.items():
        for xml, image in pairs:
            link_or_copy(xml, out / "Annotations" / xml.name)
            link_or_copy(image, out / "JPEGImages" / image.name)
        lists = out / "ImageSets" / "Main"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{xml.stem}\n" for xml, _ in pairs))
        print(f"{split}: {len(pairs)} images")


def cards(clone: Path) -> dict[str, list[tuple[Path, Path]]]:
    folder = clone / "images"
    return {"train": _pairs(folder / "train", folder / "train"),
            "val": _pairs(folder / "test", folder / "test")}  # fmt: skip


def _carved(pairs: list[tuple[Path, Path]]) -> dict[str, list[tuple[Path, Path]]]:
    val = set(random.Random(0).sample(range(len(pairs)), round(len(pairs) * VAL_FRACTION)))
    return {"train": [p for i, p in enumerate(pairs) if i not in val],
            "val": [p for i, p in enumerate(pairs) if i in val]}  # fmt: skip


def raccoon(clone: Path) -> dict[str, list[tuple[Path, Path]]]:
    return _carved(_pairs(clone / "annotations", clone / "images"))


def kangaroo(clone: Path) -> dict[str, list[tuple[Path, Path]]]:
    return _carved(_pairs(clone / "annots", clone / "images"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("cards", "raccoon", "kangaroo"))
    parser.add_argument("clone", type=Path, help="a local copy of the dataset's repository")
    parser.add_argument("out", type=Path, help="the VOC folder to write (must not exist)")
    args = parser.parse_args()
    if args.out.exists():
        print(f"{args.out}: exists; choose a new folder", file=sys.stderr)
        return 2
    splits = {"cards": cards, "raccoon": raccoon, "kangaroo": kangaroo}[args.dataset](args.clone)
    if not all(splits.values()):
        print(f"{args.clone}: no XML/image pairs where the {args.dataset} layout has them",
              file=sys.stderr)  # fmt: skip
        return 2
    _write(args.out, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
