"""Pascal VOC and YOLO folders: their semantics on hand-made folders whose COCO form is written
out here, the bad inputs, `data convert`, and the direct path equal to the converted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets.converted import to_coco
from common.datasets.layout import resolve_split
from common.errors import InputError
from tests.cli_support import invoke
from tests.corpus import LogRecorder, assert_one_line_error
from tests.foreign_layouts import png, voc_xml
from train.data.coco import CocoDetection


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converted splits go to this test's own cache, never the user's."""
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))


def _voc(
    root: Path, files: dict[str, tuple[tuple[int, int], str]], lists: dict[str, list[str]]
) -> Path:
    """files: stem -> ((width, height) of its PNG, XML text); lists: ImageSets/Main/NAME.txt."""
    for stem, (size, xml) in files.items():
        png(root / "JPEGImages" / f"{stem}.png", *size)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
    for name, stems in lists.items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    return root


def _hand_made_voc(root: Path) -> Path:
    # "dog" is seen first, but classes are sorted: cat = 1, dog = 2.
    a = voc_xml("a.png", (40, 30), [("dog", 1, 1, 10, 8), ("cat", 5, 6, 20, 30, 1),
                                    ("dog", 21, 2, 40, 12, 0, 1)])  # fmt: skip
    b = voc_xml("b.png", (50, 20), [("cat", 11, 3, 30, 20)])
    c = voc_xml("c.png", (16, 16), [])
    return _voc(root, {"a": ((40, 30), a), "b": ((50, 20), b), "c": ((16, 16), c)},
                {"train": ["a", "c"], "val": ["b"]})  # fmt: skip


# The COCO form of _hand_made_voc, worked out by hand: VOC's xmin=1..xmax=10 covers pixels 0..9,
# so x = xmin - 1 and w = xmax - xmin + 1; difficult -> iscrowd (ignored); truncated is kept.
EXPECTED_VOC_TRAIN = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "c.png", "width": 16, "height": 16},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 8.0], "area": 80.0,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4.0, 5.0, 16.0, 25.0], "area": 400.0,
         "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [20.0, 1.0, 20.0, 11.0],
         "area": 220.0, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}  # fmt: skip


def test_voc_semantics_by_hand(tmp_path: Path) -> None:
    root = _hand_made_voc(tmp_path / "voc")
    coco, images = to_coco(root, "train", "voc")
    assert images == root / "JPEGImages"
    assert {k: coco[k] for k in EXPECTED_VOC_TRAIN} == EXPECTED_VOC_TRAIN
    assert coco["info"]["class_order"] == "sorted"
    val, _ = to_coco(root, "val", "voc")
    assert val["annotations"] == [{"id": 1, "image_id": 1, "category_id": 1,
                                   "bbox": [10.0, 2.0, 20.0, 18.0], "area": 360.0,
                                   "iscrowd": 0}]  # fmt: skip
    assert val["categories"] == EXPECTED_VOC_TRAIN["categories"]  # classes of the whole folder


def test_voc_lists_follow_voc2007s_protocol(tmp_path: Path) -> None:
    """With test.txt, val is test and train is trainval; without ImageSets every XML is train."""
    xml = voc_xml("x.png", (20, 20), [("cat", 1, 1, 10, 10)])
    files = {s: ((20, 20), xml) for s in ("p", "q", "r", "s")}
    root = _voc(tmp_path / "voc07", files,
                {"train": ["p"], "val": ["q"], "trainval": ["p", "q"], "test": ["r", "s"]})  # fmt: skip
    names = lambda split: [i["file_name"] for i in to_coco(root, split, "voc")[0]["images"]]  # noqa: E731
    assert names("train") == ["p.png", "q.png"] and names("val") == ["r.png", "s.png"]
    bare = _voc(tmp_path / "bare", files, {})
    assert [i["file_name"] for i in to_coco(bare, "train", "voc")[0]["images"]] == [
        "p.png", "q.png", "r.png", "s.png"]  # fmt: skip
    with pytest.raises(InputError, match="no val annotations"):
        to_coco(bare, "val", "voc")


def _yolo(root: Path) -> Path:
    png(root / "images" / "train" / "a.png", 40, 20)
    png(root / "images" / "train" / "sub" / "b.png", 10, 10)  # empty label file: background
    png(root / "images" / "train" / "c.png", 8, 8)  # no label file: background
    (root / "labels" / "train" / "sub").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.125 0.25 0.25 0.5\n")
    (root / "labels" / "train" / "sub" / "b.txt").write_text("")
    return root


# _yolo's COCO form by hand: a.png is 40x20; "1 0.5 0.5 0.5 0.5" is a 20x10 box centred at
# (20, 10), so x = 10, y = 5; "0 0.125 0.25 0.25 0.5" is 10x10 centred at (5, 5).
EXPECTED_YOLO_TRAIN = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
        {"id": 2, "file_name": "c.png", "width": 8, "height": 8},
        {"id": 3, "file_name": "sub/b.png", "width": 10, "height": 10},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 5.0, 20.0, 10.0],
         "area": 200.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 0, "bbox": [0.0, 0.0, 10.0, 10.0],
         "area": 100.0, "iscrowd": 0},
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("names_file", "text"),
    [
        ("data.yaml", "path: .\nnames: [person, bicycle]\n"),
        ("data.yaml", "names:\n  0: person\n  1: bicycle\n"),
        ("classes.txt", "person\nbicycle\n"),
    ],
)
def test_yolo_semantics_by_hand(tmp_path: Path, names_file: str, text: str) -> None:
    root = _yolo(tmp_path / "yolo")
    (root / names_file).write_text(text)
    coco, images = to_coco(root, "train", "yolo")
    assert images == root / "images" / "train"
    assert {k: coco[k] for k in EXPECTED_YOLO_TRAIN} == EXPECTED_YOLO_TRAIN
    assert coco["categories"] == [{"id": 0, "name": "person"}, {"id": 1, "name": "bicycle"}]


def test_roboflow_layout_and_valid_folder(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        png(root / split / "images" / "x.jpg", 20, 20)
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("names: [card]\n")
    ann, images = resolve_split(root, "val")
    assert images == root / "valid" / "images"
    assert json.loads(ann.read_text())["annotations"][0]["bbox"] == [5.0, 5.0, 10.0, 10.0]


# --- bad input: one line naming the file, exit code 2 (through the CLI), or a counted warning


def _show(root: Path, split: str = "train"):
    return invoke("data", "show", "--data", root, "--split", split, "--out", root.parent / "g.png")


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    "<annotation><object><name>&lol2;</name></object></annotation>"
)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><object><name>cat</name>", "not well-formed XML"),
        (BILLION_LAUGHS, "refused: XML declaring entities"),
        ("<annotation><object><name>cat</name></object></annotation>", "lacks <bndbox>"),
        (voc_xml("a.png", (40, 30), [("cat", 1, 1, "ten", 8)]), "not a number"),
        (voc_xml("a.png", (41, 30), [("cat", 1, 1, 10, 8)]), "<size> says 41x30"),
        ("<html/>", "not a Pascal VOC annotation"),
    ],
)
def test_bad_voc_xml_is_one_line(tmp_path: Path, xml: str, message: str) -> None:
    root = _voc(tmp_path / "voc", {"a": ((40, 30), xml)}, {})
    line = assert_one_line_error(_show(root), str(root / "Annotations" / "a.xml"))
    assert message in line


def test_list_naming_a_missing_image_is_one_line(tmp_path: Path) -> None:
    xml = voc_xml("a.png", (40, 30), [("cat", 1, 1, 10, 8)])
    root = _voc(tmp_path / "voc", {"a": ((40, 30), xml)}, {"train": ["a", "ghost"]})
    line = assert_one_line_error(_show(root), "train.txt")
    assert "'ghost'" in line and "Annotations/ghost.xml" in line
    (root / "Annotations" / "ghost.xml").write_text(xml)  # an XML, but still no image
    line = assert_one_line_error(_show(root), "train.txt")
    assert "'ghost'" in line and "no image" in line


def test_bad_boxes_and_missing_images_are_counted(tmp_path: Path) -> None:
    """Degenerate and outside boxes are dropped, overshooting ones clipped, an XML without its
    image skipped: each counted once with the first file named, the rest trains."""
    xml = voc_xml("a.png", (40, 30), [
        ("cat", 10, 5, 10, 20),  # xmax == xmin: 1 px wide in VOC, kept
        ("cat", 12, 5, 9, 20),  # xmax < xmin: dropped
        ("cat", 45, 5, 60, 20),  # right of the image: dropped
        ("cat", 30, 20, 42, 31),  # 2 px past the right edge, 1 px below: clipped
        ("cat", 0, 0, 40, 30),  # 0-based writers' edge: within tolerance, clipped silently
    ])  # fmt: skip
    root = _voc(tmp_path / "voc", {"a": ((40, 30), xml)}, {})
    (root / "Annotations" / "lost.xml").write_text(voc_xml("lost.png", (8, 8), []))
    with LogRecorder() as logs:
        coco, _ = to_coco(root, "train", "voc")
    assert [a["bbox"] for a in coco["annotations"]] == [
        [9.0, 4.0, 1.0, 16.0], [29.0, 19.0, 11.0, 11.0], [0.0, 0.0, 40.0, 30.0]]  # fmt: skip
    assert [i["file_name"] for i in coco["images"]] == ["a.png"]
    text = "\n".join(logs.lines)
    assert "2 degenerate boxes dropped" in text and "object 2 (cat)" in text
    assert "1 boxes clipped" in text and "object 4 (cat)" in text
    assert "1 labelled images not found" in text and "lost.xml" in text


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("0 0.5 0.5 0.5\n", "4 values; a YOLO box is 'class cx cy w h'"),
        ("7 0.5 0.5 0.5 0.5\n", "class id 7 is not one of the named [0]"),
        ("0 0.5 half 0.5 0.5\n", "is not five numbers"),
        ("0.5 0.5 0.5 0.5 0.5\n", "the class must be an integer id"),
    ],
)
def test_bad_yolo_label_is_one_line(tmp_path: Path, label: str, message: str) -> None:
    root = tmp_path / "yolo"
    png(root / "images" / "train" / "a.png", 20, 20)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + label)
    (root / "data.yaml").write_text("names: [card]\n")
    line = assert_one_line_error(_show(root), f"{root / 'labels' / 'train' / 'a.txt'}:2")
    assert message in line


def test_yolo_without_names_or_with_bad_yaml_is_one_line(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo")
    assert "data.yaml or classes.txt" in assert_one_line_error(_show(root), str(root))
    (root / "data.yaml").write_text("names: [a, b\n")
    assert "not readable YAML" in assert_one_line_error(_show(root), "data.yaml")
    (root / "data.yaml").write_text("nc: 2\n")
    assert "no 'names'" in assert_one_line_error(_show(root), "data.yaml")


def test_yolo_orphan_labels_and_unreadable_images_are_counted(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo")
    (root / "data.yaml").write_text("names: [person, bicycle]\n")
    (root / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "images" / "train" / "broken.png").write_bytes(b"not a png")
    with LogRecorder() as logs:
        coco, _ = to_coco(root, "train", "yolo")
    assert len(coco["images"]) == 3
    text = "\n".join(logs.lines)
    assert "1 labelled images not found" in text and "gone.txt" in text
    assert "1 unreadable images skipped" in text and "broken.png" in text


# --- data convert, and the direct path equal to the converted one


def _dataset_items(ann: Path, images: Path) -> list[tuple]:
    dataset = CocoDetection(ann, images, img_size=64)
    items = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        items.append((image.numpy(), target["boxes"].numpy(), target["labels"].numpy(),
                      target["crowd_boxes"].numpy()))  # fmt: skip
    return items


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_direct_path_equals_converted(tmp_path: Path, layout: str) -> None:
    if layout == "voc":
        root = _hand_made_voc(tmp_path / "src")
    else:
        root = _yolo(tmp_path / "src")
        (root / "data.yaml").write_text("names: [person, bicycle]\n")
    out = tmp_path / "coco"
    result = invoke("data", "convert", "--from", layout, "--data", root, "--out", out)
    assert result.exit_code == 0, result.output
    for split in ("train", "val") if layout == "voc" else ("train",):
        direct = _dataset_items(*resolve_split(root, split))
        converted = _dataset_items(out / "annotations" / f"instances_{split}.json", out / split)
        assert len(direct) == len(converted) > 0
        for a, b in zip(direct, converted, strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
    assert torch.is_tensor(CocoDetection(*resolve_split(root, "train"), img_size=64)[0][0])


def test_convert_refuses_an_existing_out_and_the_wrong_layout(tmp_path: Path) -> None:
    root = _hand_made_voc(tmp_path / "src")
    out = tmp_path / "coco"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "exists" in assert_one_line_error(
        invoke("data", "convert", "--from", "voc", "--data", root, "--out", out), str(out)
    )
    assert (out / "keep.txt").read_text() == "mine"
    line = assert_one_line_error(
        invoke("data", "convert", "--from", "yolo", "--data", root, "--out", tmp_path / "n"),
        str(root),
    )
    assert "looks like voc" in line and not (tmp_path / "n").exists()
