"""Data side: synthetic generator, layouts, letterbox, COCO loader and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from common.datasets.layout import resolve_split
from common.errors import InputError
from common.image import letterbox, letterbox_size, to_rgb
from train.data import synthetic
from train.data.coco import CocoDetection, collate_detections
from train.data.synthetic import CATEGORY_IDS, ensure_synthetic_dataset, generate_synthetic_dataset
from train.data.transforms import hflip_boxes


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "a", 12, 4, seed=3)


# --- synthetic generator -------------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_dependent(tiny: Path, tmp_path: Path) -> None:
    again = generate_synthetic_dataset(tmp_path / "b", 12, 4, seed=3)
    assert _tree_bytes(tiny) == _tree_bytes(again)
    other = generate_synthetic_dataset(tmp_path / "c", 12, 4, seed=4)
    assert _load(other, "train") != _load(tiny, "train")
    assert (other / "train" / "000000.png").read_bytes() != (
        tiny / "train" / "000000.png"
    ).read_bytes()


def test_parallel_generation_matches_serial(tmp_path: Path) -> None:
    serial = generate_synthetic_dataset(tmp_path / "s", 60, 4, seed=5, workers=1)
    parallel = generate_synthetic_dataset(tmp_path / "p", 60, 4, seed=5, workers=2)
    assert _tree_bytes(serial) == _tree_bytes(parallel)


def test_train_and_val_images_differ(tiny: Path) -> None:
    assert (tiny / "train" / "000000.png").read_bytes() != (
        tiny / "val" / "000000.png"
    ).read_bytes()


def test_generated_json_is_valid_coco_with_boxes_inside(tiny: Path) -> None:
    for split in ("train", "val"):
        data = _load(tiny, split)
        coco = COCO(str(tiny / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == list(CATEGORY_IDS) == [1, 3, 7, 10, 12]
        images = {img["id"]: img for img in data["images"]}
        assert data["annotations"]
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == pytest.approx(w * h)
        for img in images.values():
            with Image.open(tiny / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
        assert not any(a["iscrowd"] for a in data["annotations"] if split == "val")


def test_box_is_tight_around_drawn_pixels(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 30), (0, 0, 0))
    pts = np.array([[10.2, 5.5], [20.7, 5.5], [20.7, 12.3], [10.2, 12.3]])
    box = synthetic._fill_polygon(img, pts, (255, 255, 255))
    ys, xs = np.nonzero(np.asarray(img)[..., 0])
    assert box == [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def test_label_noise_changes_only_train_labels(tiny: Path, tmp_path: Path) -> None:
    noisy = generate_synthetic_dataset(tmp_path / "n", 12, 4, seed=3, label_noise=0.3)
    assert _load(noisy, "val") == _load(tiny, "val")
    clean, dirty = _load(tiny, "train")["annotations"], _load(noisy, "train")["annotations"]
    assert len(clean) == len(dirty)
    changed = 0
    for a, b in zip(clean, dirty, strict=True):
        assert {k: v for k, v in a.items() if k != "category_id"} == {
            k: v for k, v in b.items() if k != "category_id"
        }
        changed += a["category_id"] != b["category_id"]
    assert changed == round(0.3 * sum(not a["iscrowd"] for a in clean))
    assert (noisy / "train" / "000005.png").read_bytes() == (
        tiny / "train" / "000005.png"
    ).read_bytes()
    with pytest.raises(InputError, match="label_noise"):
        generate_synthetic_dataset(tmp_path / "bad", 1, 1, label_noise=1.5)


def test_crowd_regions_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "P_CROWD", 1.0)
    root = generate_synthetic_dataset(tmp_path / "crowd", 3, 1, seed=1)
    anns = _load(root, "train")["annotations"]
    assert sum(a["iscrowd"] for a in anns) == 3
    assert not any(a["iscrowd"] for a in _load(root, "val")["annotations"])
    ds = CocoDetection(*resolve_split(root, "train"), img_size=128)
    assert all(ds[i][1]["crowd_boxes"].shape == (1, 4) for i in range(len(ds)))


def test_ensure_generates_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.generate_synthetic_dataset
    calls = []

    def small(out_dir: Path) -> Path:
        calls.append(out_dir)
        return real(out_dir, 2, 1)

    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", small)
    root = tmp_path / "cache" / "synthetic-v1"
    assert ensure_synthetic_dataset(root) == root
    assert ensure_synthetic_dataset(root) == root
    assert len(calls) == 1 and calls[0] != root
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic-v1"]

    def killed(out_dir: Path) -> Path:
        real(out_dir, 1, 0)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path / "other" / "synthetic-v1")
    assert list((tmp_path / "other").iterdir()) == []


def test_default_dataset_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    assert synthetic.default_dataset_dir() == tmp_path / "synthetic-v1"


# --- layouts -------------------------------------------------------------------------------------


def test_resolve_split_layouts(tiny: Path, tmp_path: Path) -> None:
    assert resolve_split(tiny, "val") == (tiny / "annotations" / "instances_val.json", tiny / "val")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    (tmp_path / "val2017").mkdir()
    assert resolve_split(tmp_path, "val") == (
        tmp_path / "annotations" / "instances_val2017.json",
        tmp_path / "val2017",
    )
    with pytest.raises(InputError, match="instances_train2017.json"):
        resolve_split(tmp_path, "train")
    with pytest.raises(InputError, match="split"):
        resolve_split(tmp_path, "test")
    with pytest.raises(InputError, match="not found"):
        resolve_split(tmp_path / "nope", "val")


# --- letterbox -----------------------------------------------------------------------------------


def test_letterbox_hand_worked() -> None:
    canvas, scale = letterbox(Image.new("RGB", (100, 50), (10, 200, 30)), 64)
    assert scale == pytest.approx(0.64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    assert (canvas[:32, :64] == [10, 200, 30]).all()  # content 64 x 32 at the top-left
    assert (canvas[32:] == 114).all()
    tall, scale = letterbox(Image.new("RGB", (50, 100), (1, 2, 3)), 64, pad_value=0)
    assert (tall[:, :32] == [1, 2, 3]).all() and (tall[:, 32:] == 0).all()
    assert letterbox_size(3, 1000, 64) == (1, 64, 0.064)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1"])
def test_letterbox_converts_modes(mode: str, tmp_path: Path) -> None:
    Image.new("RGB", (20, 10), (40, 40, 40)).convert(mode).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        canvas, scale = letterbox(image, 16)
    assert canvas.shape == (16, 16, 3) and scale == pytest.approx(0.8)


def test_letterbox_scales_16_bit(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 0x1234, dtype=np.uint16)).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode in ("I;16", "I")
        canvas, _ = letterbox(image, 8)
    assert (canvas == 0x12).all()


def test_letterbox_keeps_at_least_one_row_of_a_very_wide_image() -> None:
    # 3 px high at scale 0.064 rounds to 0 rows; the content keeps one row
    assert letterbox_size(1000, 3, 64) == (64, 1, 0.064)


def test_rgb_images_pass_through_without_a_copy() -> None:
    image = Image.new("RGB", (4, 2), (1, 2, 3))
    assert to_rgb(image) is image


def test_32_bit_integer_images_are_clipped_to_16_bits_then_shifted() -> None:
    values = np.array([[-5, 255, 7 * 256 + 3, 65535, 70000]], dtype=np.int32)
    image = Image.fromarray(values, "I")
    assert image.mode == "I"
    rgb = np.asarray(to_rgb(image))
    # clip to 0..65535, >> 8: -5 -> 0, 255 -> 0, 1795 -> 7, 65535 -> 255, 70000 -> 255
    assert rgb.shape == (1, 5, 3)
    assert rgb[0].tolist() == [[0] * 3, [0] * 3, [7] * 3, [255] * 3, [255] * 3]


def test_float_images_are_clipped_to_0_255_and_truncated() -> None:
    values = np.array([[-5.0, 0.5, 12.7, 254.9, 300.0]], dtype=np.float32)
    rgb = np.asarray(to_rgb(Image.fromarray(values, "F")))
    assert rgb.shape == (1, 5, 3)
    assert rgb[0].tolist() == [[0] * 3, [0] * 3, [12] * 3, [254] * 3, [255] * 3]


def test_hflip_boxes_round_trip() -> None:
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 10.0, 3.0]])
    assert hflip_boxes(boxes, 10).tolist() == [[5.0, 2.0, 9.0, 6.0], [0.0, 0.0, 10.0, 3.0]]
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 10), 10), boxes)


# --- COCO loader ---------------------------------------------------------------------------------


def _write_coco2017(root: Path, data: dict, sizes: dict[str, tuple[int, int]]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 50, 50)).save(root / "val2017" / name)
    ann_file = root / "annotations" / "instances_val2017.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def _handwritten() -> dict:
    box = {"iscrowd": 0}
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 3, "file_name": "b.png", "width": 40, "height": 80},
            {"id": 9, "file_name": "missing.png", "width": 10, "height": 10},
        ],
        "categories": [
            {"id": 5, "name": "five"},
            {"id": 2, "name": "two"},
            {"id": 9, "name": "nine"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [10, 5, 20, 10], **box},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [90, 40, 30, 30], **box},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [50, 20, 10, 10], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 5, "bbox": [30, 30, 0.5, 8], **box},
            {"id": 5, "image_id": 7, "category_id": 5, "bbox": [1, 1, float("nan"), 8]},
        ],
    }


@pytest.fixture
def coco2017(tmp_path: Path) -> Path:
    _write_coco2017(tmp_path, _handwritten(), {"a.png": (100, 50), "b.png": (40, 80)})
    return tmp_path


def test_loader_on_coco2017_layout(coco2017: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = CocoDetection(*resolve_split(coco2017, "val"), img_size=64)
    assert ds.category_ids == [2, 5, 9] and ds.class_names == ["two", "five", "nine"]
    assert ds.image_ids == [7, 3] and len(ds) == 2  # missing.png skipped
    assert "2 degenerate" in caplog.text and "1 missing" in caplog.text
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    expected = torch.tensor([[10, 5, 30, 15], [90, 40, 100, 50]]) * 0.64  # 2nd clipped
    torch.testing.assert_close(target["boxes"], expected.float())
    assert target["labels"].tolist() == [2, 0]
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[32.0, 12.8, 38.4, 19.2]]))
    assert (target["image_id"], target["orig_size"]) == (7, (50, 100))
    assert target["scale"] == pytest.approx(0.64)
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    images, targets = collate_detections([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2
    assert ds.coco.getImgIds() and ds.coco.anns[4]["area"] == pytest.approx(4.0)


def test_loader_category_mapping_and_unknown_category(coco2017: Path) -> None:
    ann_file, img_dir = resolve_split(coco2017, "val")
    ds = CocoDetection(ann_file, img_dir, 64, category_ids=[9, 5, 2])
    assert ds[0][1]["labels"].tolist() == [0, 2]
    with pytest.raises(InputError, match=r"instances_val2017.json.*category_id 2"):
        CocoDetection(ann_file, img_dir, 64, category_ids=[9, 5])


def test_loader_strict_and_nothing_usable(coco2017: Path) -> None:
    ann_file, img_dir = resolve_split(coco2017, "val")
    with pytest.raises(InputError, match="degenerate"):
        CocoDetection(ann_file, img_dir, 64, strict=True)
    data = _handwritten()
    data["annotations"] = data["annotations"][:3]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match="missing.png: image file not found"):
        CocoDetection(ann_file, img_dir, 64, strict=True)
    data["images"] = data["images"][2:]
    data["annotations"] = []
    ann_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match="no usable images"):
        CocoDetection(ann_file, img_dir, 64)


def test_train_flip_mirrors_content_and_boxes(coco2017: Path) -> None:
    ann_file, img_dir = resolve_split(coco2017, "val")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (100, 50)), ("b.png", (40, 80))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img_dir / name)
    plain = CocoDetection(ann_file, img_dir, 64)
    flipping = CocoDetection(ann_file, img_dir, 64, train=True)
    for index, content_w in ((0, 64), (1, 32)):  # 100x50 -> 64 wide; 40x80 -> 32 wide
        base_image, base = plain[index]
        seen = set()
        for seed in range(12):
            torch.manual_seed(seed)
            image, target = flipping[index]
            flipped = not torch.equal(image, base_image)
            seen.add(flipped)
            if flipped:
                content = base_image[:, :, :content_w].flip(-1)
                assert torch.equal(image[:, :, :content_w], content)
                assert torch.equal(image[:, :, content_w:], base_image[:, :, content_w:])
                expected = hflip_boxes(base["boxes"], content_w)
                torch.testing.assert_close(target["boxes"], expected)
                crowd = hflip_boxes(base["crowd_boxes"], content_w)
                torch.testing.assert_close(target["crowd_boxes"], crowd)
            else:
                assert torch.equal(target["boxes"], base["boxes"])
            torch.manual_seed(seed)
            assert torch.equal(flipping[index][0], image)  # same seed, same sample
        assert seen == {True, False}


def test_path_traversal_rejected(tmp_path: Path) -> None:
    for bad in ("../evil.png", "/etc/passwd", "sub/../../x.png", "C:\\x.png"):
        data = _handwritten()
        data["images"][1]["file_name"] = bad
        ann_file = _write_coco2017(tmp_path, data, {"a.png": (100, 50)})
        with pytest.raises(InputError, match="escapes"):
            CocoDetection(ann_file, tmp_path / "val2017", 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [', "not valid JSON"),
        ("[1, 2]", "top level is not an object"),
        ('{"images": [], "annotations": []}', "missing categories"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        (
            '{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],'
            ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2]}],'
            ' "categories": [{"id": 1, "name": "x"}]}',
            r"bbox \[1, 2\] is not",
        ),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images\\[0\\] lacks"),
    ],
)
def test_malformed_json_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        CocoDetection(ann_file, tmp_path, 64)
    assert "broken.json" in str(info.value) and "\n" not in str(info.value)


def test_unreadable_or_mismatched_image_raises_on_load(coco2017: Path) -> None:
    ann_file, img_dir = resolve_split(coco2017, "val")
    ds = CocoDetection(ann_file, img_dir, 64)
    (img_dir / "b.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"b.png: cannot read image"):
        ds[1]
    Image.new("RGB", (10, 10)).save(img_dir / "a.png")
    with pytest.raises(InputError, match=r"a.png: image is 10x10 but"):
        ds[0]
