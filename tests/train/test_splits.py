"""Any COCO layout: split files named on the command line, a dataset without a val split
(validation off, said once), and --val-fraction carving a seeded val split out of train."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.cli_support import TINY, invoke, make_tiny_dataset
from train.config import TrainConfig
from train.data.splits import training_splits


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


def _history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


@pytest.mark.slow
def test_split_files_in_a_layout_of_their_own_train_and_validate(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    (mine / "labels").mkdir(parents=True)
    shutil.copytree(tiny_data / "train", mine / "pictures" / "a")
    shutil.copytree(tiny_data / "val", mine / "pictures" / "b")
    shutil.copy(tiny_data / "annotations/instances_train.json", mine / "labels/fit.json")
    shutil.copy(tiny_data / "annotations/instances_val.json", mine / "labels/check.json")
    out = tmp_path / "run"
    monkeypatch.chdir(mine)  # paths relative to where training ran
    result = invoke("train", "--out", out, "--train-ann", "labels/fit.json",
                    "--train-images", "pictures/a", "--val-ann", "labels/check.json",
                    "--val-images", "pictures/b", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "AP" in _history(out)[-1]  # validated on check.json
    # from another folder, no --data: export calibrates on fit.json's 12 images (not the
    # built-in set's 128 it would take), and eval of the .pt and the .onnx scores check.json's 6
    # (not 200); --data still chooses another dataset
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "--model", out / "best.pt", "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert '"calibration_images": 12,' in result.output
    for model in (out / "best.pt", out / "model.onnx"):
        report = tmp_path / f"report{model.suffix}.json"
        result = invoke("eval", "--model", model, "--json", report, "--warmup", 0)
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["num_images"] == 6
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    ann = other / "annotations/instances_val.json"
    coco = json.loads(ann.read_text())
    ann.write_text(json.dumps({**coco, "images": coco["images"][:2]}))
    result = invoke("eval", "--model", out / "model.onnx", "--data", other, "--json",
                    tmp_path / "other.json", "--warmup", 0)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "other.json").read_text())["num_images"] == 2


def test_a_dataset_without_val_trains_with_validation_off_and_says_so(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "train-only"
    shutil.copytree(tiny_data, data)
    (data / "annotations/instances_val.json").unlink()
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        result = invoke("train", "--data", data, "--out", out, *TINY, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "no val split: validation is off" in caplog.text
    assert all("AP" not in r for r in _history(out))
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == len(_history(out))  # the latest weights, not the first epoch's


@pytest.mark.slow
def test_val_fraction_carves_a_seeded_disjoint_val_split_and_validates_on_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    source = json.loads((tiny_data / "annotations/instances_train.json").read_text())
    all_ids = {im["id"] for im in source["images"]}
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_data, "--out", out, "--val-fraction", "0.25", *TINY)
    assert result.exit_code == 0, result.output
    assert "AP" in _history(out)[-1]
    train = json.loads((out / "splits/instances_train.json").read_text())
    val = json.loads((out / "splits/instances_val.json").read_text())
    train_ids, val_ids = {im["id"] for im in train["images"]}, {im["id"] for im in val["images"]}
    assert len(val_ids) == round(0.25 * len(all_ids)) and not train_ids & val_ids
    assert train_ids | val_ids == all_ids
    for part, ids in ((train, train_ids), (val, val_ids)):
        expected = [a for a in source["annotations"] if a["image_id"] in ids]
        assert part["annotations"] == expected and part["categories"] == source["categories"]
    # export, eval and analyze default to the carved files, not the dataset's train (12) / val (6)
    result = invoke("export", "--model", out / "best.pt", "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert f'"calibration_images": {len(train_ids)},' in result.output
    result = invoke("eval", "--model", out / "model.onnx", "--json", tmp_path / "r.json",
                    "--warmup", 0)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == len(val_ids)
    result = invoke("analyze", "--model", out / "best.pt", "--max-images", 2)
    assert result.exit_code == 0, result.output
    analysis = json.loads((out / "analysis/analysis.json").read_text())
    assert analysis["val_annotations"] == str((out / "splits/instances_val.json").resolve())

    def carved(folder: str, **options: object) -> set[int]:
        config = TrainConfig(out=tmp_path / folder, data=tiny_data, **options)
        _, val_split = training_splits(config)
        return {im["id"] for im in json.loads(val_split.ann.read_text())["images"]}

    # the split belongs to the dataset: every --seed (every run of a comparison) gets the same
    assert all(carved(f"s{s}", val_fraction=0.25, seed=s) == val_ids for s in (1, 2, 3))
    assert len(carved("half", val_fraction=0.5)) == 6


@pytest.mark.slow
def test_run_with_a_carved_split_of_a_dataset_without_val_exports_and_scores_on_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train-only"
    shutil.copytree(tiny_data, data)
    (data / "annotations/instances_val.json").unlink()
    out = tmp_path / "run"
    result = invoke("run", "--data", data, "--out", out, "--val-fraction", "0.25", *TINY)
    assert result.exit_code == 0, result.output  # parity images from the carved val split
    for name in ("pytorch", "onnxruntime"):
        assert json.loads((out / f"report_{name}.json").read_text())["num_images"] == 3


@pytest.mark.parametrize(
    "flags,complaint",
    [
        (["--train-ann", "x.json"], "--train-ann needs --train-images too"),
        (["--val-images", "."], "--val-images needs --val-ann too"),
        (["--train-ann", "missing.json", "--train-images", "."],
         "missing.json: annotation file not found (--train-ann)"),
        (["--val-fraction", "0.2", "--val-ann", "{val}", "--val-images", "."],
         "--val-fraction carves a val split out of train: drop --val-ann"),
        (["--val-fraction", "0.01"], "0 of 12 images would be validation"),
    ],
)  # fmt: skip
def test_bad_split_options_are_one_line_and_exit_2(
    tiny_data: Path, tmp_path: Path, flags: list[str], complaint: str
) -> None:
    flags = [f.replace("{val}", str(tiny_data / "annotations/instances_val.json")) for f in flags]
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_data, "--out", out, *flags, *TINY)
    assert result.exit_code == 2
    assert complaint in result.output and "Traceback" not in result.output
    assert not (out / "last.pt").exists()
