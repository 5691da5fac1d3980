"""The whole flow through the CLI on a tiny synthetic dataset: data -> train -> export -> eval."""

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from tests.cli_support import TINY, invoke, make_tiny_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("train", "--data", tiny_data, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_checkpoints_and_history(tiny_run):
    assert (tiny_run / "best.pt").is_file() and (tiny_run / "last.pt").is_file()
    history = json.loads((tiny_run / "history.json").read_text())
    assert history[0]["epoch"] == 1 and "AP" in history[0] and history[0]["step"] == 3


# PyTorch vs ONNX Runtime through export and eval: tests/train/test_detecting_model.py, on a model that
# detects (this module's tiny run detects nothing, so its formats would agree trivially).


def test_existing_run_is_not_overwritten(tiny_run, tiny_data):
    before = (tiny_run / "best.pt").read_bytes()
    result = CliRunner().invoke(
        cli, ["train", "--data", str(tiny_data), "--out", str(tiny_run), *TINY]
    )
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "Traceback" not in result.output
    assert (tiny_run / "best.pt").read_bytes() == before


def test_missing_data_folder_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope"
    result = CliRunner().invoke(
        cli, ["train", "--data", str(missing), "--out", str(tmp_path / "r"), *TINY]
    )
    assert result.exit_code == 2
    assert str(missing) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_wrong_model_file_type(tmp_path):
    bogus = tmp_path / "model.txt"
    bogus.write_text("hello")
    result = CliRunner().invoke(cli, ["eval", "--model", str(bogus)])
    assert result.exit_code == 2 and "unsupported model file type" in result.output


def test_engine_without_gpu_is_a_clear_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    result = CliRunner().invoke(cli, ["eval", "--model", str(engine)])
    assert result.exit_code == 2 and "pip install" in result.output


@pytest.mark.parametrize("loss", sorted(__import__("train.losses", fromlist=["LOSSES"]).LOSSES))
def test_every_loss_trains_end_to_end_through_the_cli(loss, tiny_data, tmp_path):
    out = tmp_path / loss
    args = ["train", "--data", tiny_data, "--out", out, "--loss", loss, *TINY, "--max-steps", "2"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    history = json.loads((out / "history.json").read_text())
    parts = {k: v for k, v in history[-1].items() if k.startswith("loss_")}
    assert parts and all(math.isfinite(v) for v in parts.values())
    assert history[-1]["step"] == 2


def test_ghm_with_another_regression_loss_turns_ghm_r_off(tiny_data, tmp_path):
    out = tmp_path / "ghm-giou"
    result = invoke(
        "train", "--data", tiny_data, "--out", out, "--loss", "ghm", "--reg-loss", "giou", *TINY
    )
    assert result.exit_code == 0, result.output
    import torch

    payload = torch.load(out / "last.pt", weights_only=True)
    assert (
        payload["loss_options"]["ghm_r"] is False and payload["loss_options"]["reg_loss"] == "giou"
    )


def test_eval_engine_options_reach_the_loader(monkeypatch, tmp_path):
    import pipeline.evaluation
    from pipeline.errors import PipelineError

    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise PipelineError("stop here")

    monkeypatch.setattr(pipeline.evaluation, "load_predictor", fake_load)
    args = ["eval", "--model", tmp_path / "m.engine", "--cuda-api", "pycuda", "--cuda-graph",
            "--provider", "cpu", "--device", "cuda", "--openvino-hint", "throughput"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen == {"provider": "cpu", "device": "cuda", "cuda_api": "pycuda", "cuda_graph": True,
                    "openvino_hint": "throughput"}  # fmt: skip


def test_export_stores_the_parity_result_in_the_model(tiny_run, tiny_data):
    import onnx

    result = invoke("export", "--weights", tiny_run / "best.pt", "--data", tiny_data, "--overwrite")
    assert result.exit_code == 0, result.output
    props = {p.key: p.value for p in onnx.load(str(tiny_run / "model.onnx")).metadata_props}
    parity = json.loads(props["parity"])
    assert parity["match"] is True and parity["num_images"] > 0


def test_eval_never_replaces_a_report_without_overwrite(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("keep me")
    result = CliRunner().invoke(
        cli, ["eval", "--model", str(tmp_path / "m.onnx"), "--json", str(report)]
    )
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert report.read_text() == "keep me"


def test_coco_json_without_iscrowd_is_scored(tmp_path):
    from deploy.evaluate import load_coco

    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 3, "name": "c"}],
    }))  # fmt: skip
    coco = load_coco(ann)
    assert coco.anns[1]["iscrowd"] == 0 and coco.anns[1]["area"] == 16.0


def test_warmup_zero_means_no_warmup():
    from train.builders import warmup_cosine

    assert warmup_cosine(100, 0)(0) == 1.0
    assert warmup_cosine(100, 10)(0) == pytest.approx(0.1)


def test_eval_of_an_onnx_model_runs_without_torch(tiny_run, tiny_data, tmp_path):
    """Scoring a deployed model loads no torch: nothing of it shares the process being timed."""
    import subprocess
    import sys

    onnx_path = tmp_path / "model.onnx"
    exported = invoke("export", "--weights", tiny_run / "best.pt", "--out", onnx_path)
    assert exported.exit_code == 0, exported.output
    code = (
        "import sys; from pipeline.cli import cli\n"
        f"cli(['eval', '--model', {str(onnx_path)!r}, '--data', {str(tiny_data)!r}, "
        "'--warmup', '0'], standalone_mode=False)\n"
        "print('torch loaded:', 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "AP" in out.stdout and out.stdout.strip().endswith("torch loaded: False")
