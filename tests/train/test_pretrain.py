"""`pipeline pretrain`: crops cut where the annotations say, a classifier that learns, and a file
that `--pretrained` loads in full."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from pipeline.cli import cli
from train.model.backbone import Backbone
from train.pretrain import (
    PretrainConfig,
    background_boxes,
    collect_crops,
    context_box,
    run_pretrain,
)

RED, BLUE, GREY = (220, 30, 30), (30, 30, 220), (128, 128, 128)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Plain IoU of two xyxy boxes, written out."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _write_split(root: Path, split: str, images: int, crowd: bool = False) -> None:
    """Grey 96x80 images, each with a red square (category 5) and a blue one (category 9)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    infos, anns = [], []
    rng = np.random.default_rng(len(split))
    for i in range(images):
        image = Image.new("RGB", (96, 80), GREY)
        draw = ImageDraw.Draw(image)
        for colour, category, left in ((RED, 5, 0), (BLUE, 9, 50)):  # red left, blue right
            x, y = left + int(rng.integers(0, 17)), int(rng.integers(0, 51))
            draw.rectangle([x, y, x + 29, y + 29], fill=colour)
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": category,
                 "bbox": [x, y, 30, 30], "iscrowd": 0, "area": 900.0}
            )  # fmt: skip
        if crowd:
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 5,
                 "bbox": [0, 0, 10, 10], "iscrowd": 1, "area": 100.0}
            )  # fmt: skip
        image.save(root / split / f"{i}.png")
        infos.append({"id": i + 1, "file_name": f"{i}.png", "width": 96, "height": 80})
    categories = [{"id": 5, "name": "red"}, {"id": 9, "name": "blue"}]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": infos, "annotations": anns, "categories": categories})
    )


@pytest.fixture
def squares(tmp_path: Path) -> Path:
    root = tmp_path / "squares"
    _write_split(root, "train", 12, crowd=True)
    _write_split(root, "val", 4)
    return root


def test_context_box_grows_each_side_by_a_tenth_and_clips() -> None:
    # [10, 20, 30, 40] grows 3 px left/right and 4 px up/down: x 7..43, y 16..64
    assert context_box([10, 20, 30, 40], 100, 100) == (7, 16, 43, 64)
    # at the corner it is clipped to the image
    assert context_box([0, 0, 30, 40], 32, 42) == (0, 0, 32, 42)
    assert context_box([5, 5, 0.5, 30], 100, 100) is None  # under a pixel wide: degenerate


def test_background_boxes_overlap_no_object() -> None:
    objects = np.array([[10.0, 10.0, 40.0, 40.0], [50.0, 30.0, 80.0, 60.0]])
    boxes = background_boxes(objects, 96, 80, 50, np.random.default_rng(0))
    assert len(boxes) >= 20  # plenty of free room in this image
    for box in boxes:
        assert 0 <= box[0] < box[2] <= 96 and 0 <= box[1] < box[3] <= 80
        assert all(_iou(box, tuple(o)) < 0.1 for o in objects)


def test_crops_are_the_annotated_objects_with_their_category_and_backgrounds(
    squares: Path,
) -> None:
    crops = collect_crops(squares, "train", 32, 2, seed=0)
    labels = crops.labels.tolist()
    assert crops.num_categories == 2
    # 12 images: one red (index 0) and one blue (index 1) each, the crowd box left out
    assert labels.count(0) == 12 and labels.count(1) == 12
    assert 12 <= labels.count(2) <= 24  # up to two backgrounds per image
    centre = crops.images[:, 12:20, 12:20].reshape(len(labels), -1, 3).mean(1)
    for label, (r, _g, b) in zip(labels, centre, strict=True):
        if label == 0:
            assert r > 200 and b < 60, "a red-square crop must be red in the middle"
        elif label == 1:
            assert b > 200 and r < 60, "a blue-square crop must be blue in the middle"


@pytest.mark.slow
def test_pretrain_learns_and_writes_weights_the_detector_loads_in_full(
    squares: Path, tmp_path: Path
) -> None:
    out = tmp_path / "backbone.pth"
    config = PretrainConfig(
        data=squares, out=out, crop_size=32, epochs=4, batch_size=16, lr=3e-3, seed=0
    )
    summary = run_pretrain(config)
    accuracies = [r["val_accuracy"] for r in summary["history"]]
    assert accuracies[-1] >= 0.9  # red vs blue vs grey: chance is about 1/3

    stored = torch.load(out, weights_only=True)
    assert [r["epoch"] for r in stored["pretrain"]["history"]] == [1, 2, 3, 4]
    saved = stored["state_dict"]
    assert "conv1.weight" in saved and not any(k.startswith("fc.") for k in saved)
    backbone = Backbone("resnet18", pretrained=out)
    loaded = backbone.body.state_dict()
    assert set(loaded) == set(saved)  # every tensor the detector keeps, and nothing else
    assert torch.equal(loaded["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
    assert not torch.equal(  # and they are not a fresh initialization
        Backbone("resnet18").body.state_dict()["conv1.weight"], saved["conv1.weight"]
    )


def test_an_interrupted_pretraining_keeps_its_last_finished_epoch(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.pretrain

    real = train.pretrain.accuracy
    calls: list[int] = []

    def ctrl_c_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train.pretrain, "accuracy", ctrl_c_in_epoch_2)
    out = tmp_path / "backbone.pth"
    config = PretrainConfig(data=squares, out=out, crop_size=32, epochs=3, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(config)
    stored = torch.load(out, weights_only=True)
    assert [r["epoch"] for r in stored["pretrain"]["history"]] == [1]
    Backbone("resnet18", pretrained=out)  # and it loads


def test_pretrain_refuses_to_overwrite_with_one_line(squares: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.pth"
    out.write_bytes(b"keep me")
    result = CliRunner().invoke(
        cli, ["pretrain", "--data", str(squares), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert f"{out}: already exists" in result.output and "Traceback" not in result.output
    assert out.read_bytes() == b"keep me"
