"""The two-stage detector through the whole product on the easy colour-coded set: it learns,
exports to one ONNX graph (RPN, RoIAlign, NMS inside) that ONNX Runtime and OpenVINO run as
PyTorch does, and the one evaluator scores every file alike."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.cli_support import invoke
from tests.detecting_model import write_easy_dataset

# 10 epochs reached val AP 0.67 (AP50 1.00) on two busy CPU cores in about 3 minutes
TRAIN = [
    "--detector", "faster-rcnn", "--loss", "random", "--loss-opt", "num_samples=64",
    "--img-size", "72", "--epochs", "10", "--batch-size", "8", "--lr", "0.004",
    "--warmup-iters", "10", "--fpn-channels", "32", "--workers", "0", "--seed", "0",
    "--device", "cpu", "--threads", "1",
]  # fmt: skip
MIN_AP = 0.4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two-stage")
    data = write_easy_dataset(root / "data")
    run = root / "run"
    result = invoke("train", "--data", data, "--out", run, *TRAIN)
    assert result.exit_code == 0, result.output
    return data, run


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op of a graph, those inside If/Loop branches included (NMS sits in an If)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found |= _op_types(attribute.g)
    return found


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
    ops = _op_types(onnx.load(str(run / "model.onnx")).graph)
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
