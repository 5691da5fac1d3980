"""`pipeline export --precision int8 --max-ap-drop POINTS`: int8 within an accuracy budget.

The loop on scripted scores and layer errors: which convolutions it keeps in float, in which
order, how many per round, and the one-line refusal when nothing is left to keep float. Then on
the model built to detect, calibrated badly on purpose (one image, percentile): the written int8
model's AP on the held-out slice, scored again here through `pipeline eval`, is within the
budget, and every convolution it names as float has float weights in the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import pipeline.int8_budget as budget_module
from export.quantize import QuantizeOptions
from pipeline.errors import PipelineError
from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run

CONVS = {f"t{i}": f"conv{i}" for i in range(12)}  # 12 quantized layers: 2 kept float per round


def scripted(monkeypatch, aps: list[float], sqnr: dict[str, float]) -> list[tuple[str, ...]]:
    """Fake scores (fp32 first, then one per round) and layer errors; returns the float_nodes
    each quantization was asked for."""
    asked: list[tuple[str, ...]] = []
    scores = iter(aps)
    monkeypatch.setattr(budget_module, "quantizable_nodes_by_output", lambda path, ops: dict(CONVS))
    monkeypatch.setattr(budget_module, "_image_ids", lambda ann: list(range(10)))
    monkeypatch.setattr(budget_module, "slice_score",
                        lambda path, val, n: {"AP": next(scores), "p50_ms": 1.0})  # fmt: skip

    def quantize(src, dst, images, options):
        asked.append(options.float_nodes)
        return {"quantize_nodes": 1}

    monkeypatch.setattr(budget_module, "quantize_int8", quantize)
    rows = [{"tensor": t, "sqnr_db": db} for t, db in sorted(sqnr.items(), key=lambda kv: kv[1])]
    monkeypatch.setattr(budget_module, "layer_errors", lambda a, b, probe, worst, tensors: rows)
    return asked


def run(budget: float) -> dict:
    return budget_module.quantize_within_budget(
        Path("m.onnx"), Path("m.int8.onnx"), lambda: [], (Path("v.json"), Path("v")),
        np.zeros((1, 3, 8, 8), np.float32), budget, QuantizeOptions(),
    )  # fmt: skip


def test_the_lowest_sqnr_convolutions_stay_float_until_the_budget_holds(monkeypatch):
    sqnr = {"t0": 30.0, "t1": 12.0, "t2": 25.0, "t3": 9.0, "t4": float("inf"), "t5": 40.0}
    # fp32 60; int8 57 (drop 3), then 58.6 (drop 1.4), then 59.6 (drop 0.4 <= 0.5)
    asked = scripted(monkeypatch, [60.0, 57.0, 58.6, 59.6], sqnr)
    result = run(0.5)["budget"]
    # ceil(12 / 10) = 2 per round, worst first: t3 (9 dB), t1 (12), then t2 (25), t0 (30)
    assert asked == [(), ("conv3", "conv1"), ("conv3", "conv1", "conv2", "conv0")]
    assert result["float_layers"] == ["conv3", "conv1", "conv2", "conv0"]
    assert (result["rounds"], result["ap_fp32"], result["ap_int8"]) == (3, 60.0, 59.6)
    assert result["slice"] == "first 5 of 10 images of v.json"


def test_a_budget_that_holds_at_once_keeps_everything_int8(monkeypatch):
    asked = scripted(monkeypatch, [60.0, 59.95], {"t0": 10.0})
    assert run(0.1)["budget"]["float_layers"] == [] and asked == [()]


def test_when_nothing_is_left_to_keep_float_it_says_so_in_one_line(monkeypatch):
    # one finite layer: kept float after round 1; round 2 still misses, nothing left
    asked = scripted(monkeypatch, [60.0, 55.0, 56.0], {"t0": 10.0, "t1": float("inf")})
    with pytest.raises(PipelineError) as caught:
        run(1.0)
    assert asked == [(), ("conv0",)]  # t1 loses nothing (infinite SQNR): never worth keeping
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--max-ap-drop 1: with every quantizable layer in float the int8 "
                              "model still loses 4.00 AP points on the first 5 val images")  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


@pytest.mark.slow
def test_the_written_model_meets_its_budget_and_its_float_layers_are_float(model, tmp_path):
    shutil.copy(model.weights, tmp_path / "best.pt")
    result = invoke("export", "--weights", tmp_path / "best.pt", "--data", model.data,
                    "--precision", "int8", "--calib-images", 1, "--calibration", "percentile",
                    "--max-ap-drop", 0.5)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "int8 within --max-ap-drop 0.5" in result.output
    int8 = tmp_path / "model.int8.onnx"
    conversion = json.loads(
        {p.key: p.value for p in onnx.load(str(int8)).metadata_props}["softsample.extra"]
    )["conversion"]
    budget = conversion["budget"]
    held_out = int(budget["slice"].split()[1])
    scores = {}
    for name in ("model.onnx", "model.int8.onnx"):  # scored again, independently of the loop
        report = tmp_path / f"{name}.json"
        done = invoke("eval", "--model", tmp_path / name, "--data", model.data, "--max-images",
                      held_out, "--warmup", 0, "--json", report)  # fmt: skip
        assert done.exit_code == 0, done.output
        scores[name] = 100 * json.loads(report.read_text())["metrics"]["AP"]
    assert scores["model.onnx"] - scores["model.int8.onnx"] <= 0.5 + 1e-9
    assert scores["model.int8.onnx"] == pytest.approx(budget["ap_int8"], abs=1e-9)
    graph = onnx.load(str(int8)).graph
    produced = {out: node for node in graph.node for out in node.output}
    kept = set(budget["float_layers"])
    named = {node.name: node for node in graph.node}
    assert kept <= set(named)  # every layer it names is in the written graph
    for name in kept:  # a convolution kept float has float weights (an add or a pooling may
        node = named[name]  # still read a neighbour's dequantized output)
        assert node.op_type in ("Conv", "Add", "MaxPool", "Resize"), name
        if node.op_type == "Conv":
            weight = produced.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear", name
    quantized = [
        n
        for n in graph.node
        if n.op_type == "Conv"
        and n.name not in kept
        and n.input[1] in produced
        and produced[n.input[1]].op_type == "DequantizeLinear"
    ]
    assert quantized or kept  # the rest stayed int8 (unless every layer had to go)
