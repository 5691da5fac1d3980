"""Without --data, eval and export use the dataset the model was trained on while it is on disk
(analyze did already), and say when they fall back to the built-in one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import pipeline.datasets
from pipeline.datasets import model_dataset, model_split
from tests.cli_support import TINY, invoke, make_tiny_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a checkpoint trained on its own tiny dataset, that dataset)."""
    data = make_tiny_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("run") / "run"
    result = invoke("train", "--data", data, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out / "best.pt", data


def test_eval_and_export_default_to_the_models_own_dataset(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, data = trained
    val_images = len(
        json.loads((data / "annotations" / "instances_val.json").read_text())["images"]
    )
    for model in (weights, weights.parent / "model.onnx"):
        if model.suffix == ".onnx":
            result = invoke("export", "--weights", weights)  # no --data: its parity images
            assert result.exit_code == 0, result.output
            assert f"parity on {min(4, val_images)} images" in result.output
        report = tmp_path / f"{model.suffix}.json"
        result = invoke("eval", "--model", model, "--json", report, "--warmup", 0)
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["num_images"] == val_images  # not the built-in 200


def test_a_dataset_gone_from_disk_falls_back_to_the_built_in_one_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pipeline.datasets, "ensure_synthetic_dataset", lambda: tmp_path / "builtin")
    gone = tmp_path / "moved-away"
    with caplog.at_level(logging.INFO):
        assert model_dataset(None, str(gone)) == tmp_path / "builtin"
    assert f"{gone}: the model's dataset is not on disk" in caplog.text
    (tmp_path / "here").mkdir()
    assert model_dataset(None, tmp_path / "here") == tmp_path / "here"
    assert model_dataset(tmp_path / "asked", tmp_path / "here") == tmp_path / "asked"
    assert model_dataset(None, None) == tmp_path / "builtin"  # trained on the built-in set


def test_a_models_own_split_files_win_unless_data_is_given_or_they_have_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = tmp_path / "own.json"
    own.write_text("{}")
    (tmp_path / "imgs").mkdir()
    dataset = tmp_path / "dataset"
    (dataset / "annotations").mkdir(parents=True)
    (dataset / "val").mkdir()
    (dataset / "annotations/instances_val.json").write_text("{}")
    extra = {"data": str(dataset), "splits": {"val": [str(own), str(tmp_path / "imgs")]}}
    assert model_split(None, extra, "val") == (own, tmp_path / "imgs")
    assert model_split(dataset, extra, "val")[0] == dataset / "annotations/instances_val.json"
    own.unlink()
    with caplog.at_level(logging.WARNING):
        assert model_split(None, extra, "val")[0] == dataset / "annotations/instances_val.json"
    assert f"{own}: the model's val split is not on disk" in caplog.text
    for malformed in ("oops", {"val": "oops"}, {"val": [1, 2]}, {"val": ["", ""]}, {"val": []}):
        bad = {"data": str(dataset), "splits": malformed}  # a foreign model file's metadata
        assert model_split(None, bad, "val")[0] == dataset / "annotations/instances_val.json"
