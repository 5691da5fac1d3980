"""The two-stage detector through the whole product on the easy colour-coded set: it learns,
exports to one ONNX graph (RPN, RoIAlign, NMS inside) that ONNX Runtime and OpenVINO run as
PyTorch does, and the one evaluator scores every file alike."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from export.compat import all_nodes
from tests.cli_support import invoke
from tests.detecting_model import write_easy_dataset


def train_args(sampler: str = "random", epochs: int = 10) -> list[str]:
    """Small and fast: 10 epochs of `random` reached val AP 0.67 (AP50 1.00) in about 3 minutes
    on two busy CPU cores."""
    return [
        "--detector", "faster-rcnn", "--loss", sampler, "--loss-opt", "num_samples=64",
        "--img-size", "72", "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.004",
        "--warmup-iters", "10", "--fpn-channels", "32", "--workers", "0", "--seed", "0",
        "--device", "cpu", "--threads", "1",
    ]  # fmt: skip


MIN_AP = 0.4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two-stage")
    data = write_easy_dataset(root / "data")
    run = root / "run"
    result = invoke("train", "--data", data, "--out", run, *train_args())
    assert result.exit_code == 0, result.output
    return data, run


def _ap(model: Path, data: Path, report: Path) -> float:
    result = invoke("eval", "--model", model, "--data", data, "--json", report, "--warmup", 0)
    assert result.exit_code == 0, result.output
    return float(json.loads(report.read_text())["metrics"]["AP"])


def test_faster_rcnn_learns_exports_and_scores_the_same_everywhere(trained) -> None:
    data, run = trained
    exported = invoke("export", "--weights", run / "best.pt", "--openvino")
    assert exported.exit_code == 0, exported.output
    assert "detections match: True" in exported.output.splitlines()[1]  # PyTorch vs ONNX
    assert "OpenVINO fp32 vs ONNX Runtime fp32" in exported.output
    assert exported.output.rstrip().endswith("detections match: True")
    ops = {n.op_type for n in all_nodes(onnx.load(str(run / "model.onnx")).graph.node)}
    assert {"RoiAlign", "NonMaxSuppression"} <= ops
    ap_torch = _ap(run / "best.pt", data, run / "pt.json")
    assert ap_torch >= MIN_AP
    assert _ap(run / "model.onnx", data, run / "onnx.json") == pytest.approx(ap_torch, abs=0.005)
    assert _ap(run / "model.fp32.xml", data, run / "ov.json") == pytest.approx(ap_torch, abs=0.005)


def test_a_fixed_batch_graph_is_fed_image_by_image(trained) -> None:
    """The two-stage graph takes one image; eval at batch 4 still scores every image."""
    data, run = trained
    if not (run / "model.onnx").exists():
        assert invoke("export", "--weights", run / "best.pt").exit_code == 0
    single = _ap(run / "model.onnx", data, run / "b1.json")
    result = invoke("eval", "--model", run / "model.onnx", "--data", data, "--batch-size", 4,
                    "--json", run / "b4.json", "--warmup", 0)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "b4.json").read_text())["metrics"]["AP"] == single


def test_int8_quantizes_the_fpn_and_keeps_the_ap(trained, tmp_path: Path) -> None:
    """--precision int8 quantizes the backbone and FPN (the RPN, RoI stage and NMS stay float);
    ONNX Runtime and the OpenVINO IR converted from it keep the AP within 0.05."""
    data, run = trained
    out = tmp_path / "model.onnx"
    result = invoke("export", "--weights", run / "best.pt", "--out", out, "--openvino",
                    "--precision", "int8", "--calib-images", 32)  # fmt: skip
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("wrote") and "int8.onnx" in x)
    assert '"quantize_nodes": ' in line and '"quantize_nodes": 0' not in line
    ap_torch = _ap(run / "best.pt", data, tmp_path / "pt.json")
    assert _ap(tmp_path / "model.int8.onnx", data, tmp_path / "i8.json") == pytest.approx(
        ap_torch, abs=0.05
    )
    assert _ap(tmp_path / "model.int8.xml", data, tmp_path / "ov8.json") == pytest.approx(
        ap_torch, abs=0.05
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [(["--precision", "int8", "--max-ap-drop", "1"], "--max-ap-drop"),
     (["--openvino", "--precision", "int8", "--int8-method", "nncf"], "--int8-method nncf")],
)  # fmt: skip
def test_one_stage_only_int8_routes_are_refused_in_one_line(trained, tmp_path, args, names):
    _, run = trained
    result = invoke("export", "--weights", run / "best.pt", "--out", tmp_path / "m.onnx", *args)
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {names}") and result.output.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_analyze_refuses_a_two_stage_checkpoint_in_one_line(trained, tmp_path) -> None:
    data, run = trained
    result = invoke("analyze", "--weights", run / "best.pt", "--data", data,
                    "--out", tmp_path / "analysis")  # fmt: skip
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "two-stage detector" in result.output


@pytest.mark.parametrize("sampler", ["ohem", "pisa"])
def test_every_head_sampler_trains(trained, tmp_path, sampler) -> None:
    """Two epochs from the trained random model's weights: the head losses are finite and PISA
    adds its CARL term."""
    data, run = trained
    result = invoke("train", "--data", data, "--out", tmp_path / sampler,
                    "--init-from", run / "best.pt", *train_args(sampler, epochs=2))  # fmt: skip
    assert result.exit_code == 0, result.output
    last = json.loads((tmp_path / sampler / "history.json").read_text())[-1]
    parts = {k for k in last if k.startswith("loss_")}
    expected = {"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}
    assert parts == expected | ({"loss_rcnn_carl"} if sampler == "pisa" else set())
    assert all(0 < last[k] < 10 for k in parts)
    assert last["AP"] > 0.3  # it still detects after two epochs of its own sampler
