"""VOC and YOLO folders end to end: a YOLO copy of the detecting model's dataset scores what the
COCO original scores (PyTorch and ONNX, detection by detection), and a VOC folder trains,
exports and scores through `pipeline run --data` with its class order in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.datasets.layout import resolve_split
from tests.cli_support import TINY, invoke, make_tiny_dataset
from tests.detecting_model import MIN_VAL_AP, DetectingRun, detecting_run
from tests.foreign_layouts import coco_to_voc, coco_to_yolo

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


def _coco_splits(data: Path) -> dict[str, tuple[Path, Path]]:
    return {split: (data / "annotations" / f"instances_{split}.json", data / split)
            for split in ("train", "val")}  # fmt: skip


def _scored(weights: Path, data: Path, out: Path) -> tuple[dict, dict[str, list]]:
    """`pipeline eval` on `data`'s val split: (metrics, file name -> sorted detections)."""
    report, dets = out / "report.json", out / "dets.json"
    result = invoke("eval", "--model", weights, "--data", data, "--json", report, "--results",
                    dets, "--warmup", 0, "--batch-size", 4, "--overwrite")  # fmt: skip
    assert result.exit_code == 0, result.output
    ann = resolve_split(data, "val")[0]
    names = {image["id"]: image["file_name"] for image in json.loads(ann.read_text())["images"]}
    by_file: dict[str, list] = {}
    for det in json.loads(dets.read_text()):
        by_file.setdefault(names[det["image_id"]], []).append(
            (det["category_id"], [round(v, 3) for v in det["bbox"]], round(det["score"], 5))
        )
    return json.loads(report.read_text())["metrics"], {k: sorted(v) for k, v in by_file.items()}


def test_yolo_copy_scores_what_the_coco_original_scores(
    model: DetectingRun, tmp_path: Path
) -> None:
    yolo = coco_to_yolo(_coco_splits(model.data), tmp_path / "yolo")
    for weights in (model.weights, model.run / "model.onnx"):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        coco_metrics, coco_dets = _scored(weights, model.data, tmp_path / "a")
        yolo_metrics, yolo_dets = _scored(weights, yolo, tmp_path / "b")
        assert coco_metrics["AP"] >= MIN_VAL_AP, weights.name
        assert yolo_dets == coco_dets, weights.name
        for metric in ("AP", "AP50", "AP75"):
            assert yolo_metrics[metric] == pytest.approx(coco_metrics[metric], abs=1e-6)


def test_voc_folder_trains_exports_and_scores(tmp_path_factory: pytest.TempPathFactory) -> None:
    """train -> export -> eval through --data on a VOC folder; the checkpoint records the
    sorted class order and the converted split files, which export and eval then default to."""
    data = make_tiny_dataset(tmp_path_factory)
    voc = coco_to_voc(_coco_splits(data), tmp_path_factory.mktemp("voc") / "voc")
    names = sorted(
        c["name"] for c in json.loads(_coco_splits(data)["train"][0].read_text())["categories"]
    )
    run = tmp_path_factory.mktemp("run")
    result = invoke("train", "--data", voc, "--out", run, *TINY, "--device", "cpu")
    assert result.exit_code == 0, result.output
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["class_names"] == names
    assert checkpoint["category_ids"] == list(range(1, len(names) + 1))
    assert checkpoint["dataset_info"]["source"] == "pascal-voc"
    assert checkpoint["dataset_info"]["class_order"] == "sorted"
    assert checkpoint["splits"]["val"][1] == str((voc / "JPEGImages").resolve())
    assert invoke("export", "--weights", run / "best.pt").exit_code == 0
    report = run / "eval.json"
    result = invoke("eval", "--model", run / "model.onnx", "--json", report, "--warmup", 0)
    assert result.exit_code == 0, result.output
    val_images = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert json.loads(report.read_text())["num_images"] == len(val_images)
