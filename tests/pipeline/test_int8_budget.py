"""`pipeline export --precision int8 --max-ap-drop POINTS`: int8 within an accuracy budget.

The loop on scripted scores and layer errors: which convolutions it keeps in float, in which
order, how many per round, and the one-line refusal when nothing is left to keep float. Then on
the model built to detect, calibrated badly on purpose (one image, percentile): the written int8
model's AP on the held-out slice, scored again here through `pipeline eval`, is within the
budget, and every convolution it names as float has float weights in the file.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import pipeline.int8_budget as budget_module
from export.quantize import QuantizeOptions
from pipeline.errors import PipelineError
from pipeline.int8_budget import Layer
from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run

# 12 quantized layers in a chain from the image (2 kept float per round): conv_i reads t_{i-1}
CONVS = {f"t{i}": Layer(f"conv{i}", (f"t{i - 1}",) if i else ("images",)) for i in range(12)}


def scripted(
    monkeypatch, aps: list[float], sqnr: dict[str, float], layers: dict[str, Layer] = CONVS
) -> list[tuple[str, ...]]:
    """Fake scores (fp32 first, then one per round) and layer errors; returns the float_nodes
    each quantization was asked for."""
    asked: list[tuple[str, ...]] = []
    scores = iter(aps)
    monkeypatch.setattr(budget_module, "quantizable_layers", lambda path, ops: dict(layers))
    monkeypatch.setattr(budget_module, "_image_ids", lambda ann: list(range(10)))
    monkeypatch.setattr(budget_module, "slice_score",
                        lambda path, val, n: {"AP": next(scores), "p50_ms": 1.0})  # fmt: skip

    def quantize(src, dst, images, options):
        asked.append(options.float_nodes)
        return {"quantize_nodes": 1}

    monkeypatch.setattr(budget_module, "quantize_int8", quantize)

    def layer_errors(a, b, probe, worst, tensors):  # only what was asked for, worst first
        rows = [{"tensor": t, "sqnr_db": sqnr[t]} for t in tensors if t in sqnr]
        return sorted(rows, key=lambda row: row["sqnr_db"])[:worst]

    monkeypatch.setattr(budget_module, "layer_errors", layer_errors)
    return asked


def run(budget: float) -> dict:
    return budget_module.quantize_within_budget(
        Path("m.onnx"), Path("m.int8.onnx"), lambda: [], (Path("v.json"), Path("v")),
        np.zeros((1, 3, 8, 8), np.float32), budget, QuantizeOptions(),
    )  # fmt: skip


def test_the_layers_that_add_the_most_error_stay_float_until_the_budget_holds(monkeypatch):
    # image -> conv0 -> t0 -> conv1 -> t1 -> conv2 -> t2 -> conv3 -> t3 -> add4(t1, t3) -> t4
    # -> conv5 -> t5 (6 layers: one kept float per round)
    chain = {"t0": ("conv0", ("images",)), "t1": ("conv1", ("t0",)), "t2": ("conv2", ("t1",)),
             "t3": ("conv3", ("t2",)), "t4": ("add4", ("t1", "t3")), "t5": ("conv5", ("t4",))}  # fmt: skip
    layers = {out: Layer(name, inputs) for out, (name, inputs) in chain.items()}
    sqnr = {"images": math.inf, "t0": 40.0, "t1": 38.0, "t2": 20.0, "t3": 19.0, "t4": 18.0,
            "t5": 17.0}  # fmt: skip
    # added: conv0 inf - 40 = inf, conv1 40 - 38 = 2, conv2 38 - 20 = 18, conv3 20 - 19 = 1,
    # add4 min(38, 19) - 18 = 1, conv5 18 - 17 = 1; the ties by lower output SQNR: conv5, add4
    assert budget_module.rank_by_added_error(layers, sqnr) == [
        "conv0", "conv2", "conv1", "conv5", "add4", "conv3"]  # fmt: skip
    # fp32 60; int8 57 (drop 3), then 58.6 (drop 1.4), then 59.6 (drop 0.4 <= 0.5)
    asked = scripted(monkeypatch, [60.0, 57.0, 58.6, 59.6], sqnr, layers)
    result = run(0.5)["budget"]
    assert asked == [(), ("conv0",), ("conv0", "conv2")]
    assert result["float_layers"] == ["conv0", "conv2"]
    assert (result["rounds"], result["ap_fp32"], result["ap_int8"]) == (3, 60.0, 59.6)
    assert result["slice"] == "first 5 of 10 images of v.json"


def test_two_per_round_when_there_are_twelve_layers(monkeypatch):
    # a chain whose SQNR falls by 1, 5, 1, 3, 1, ... dB per layer: conv0 first (it reads the
    # exact image: infinite loss), then conv1 (5 dB); conv3 (3 dB) and the rest next round
    drops = [1.0, 5.0, 1.0, 3.0] + [1.0] * 8
    sqnr = {f"t{i}": 50.0 - sum(drops[: i + 1]) for i in range(12)}
    asked = scripted(monkeypatch, [60.0, 57.0, 58.0, 59.9], sqnr)
    run(0.5)
    assert asked[1:] == [("conv0", "conv1"), ("conv0", "conv1", "conv3", "conv11")]


def test_a_budget_that_holds_at_once_keeps_everything_int8(monkeypatch):
    asked = scripted(monkeypatch, [60.0, 59.95], {"t0": 10.0})
    assert run(0.1)["budget"]["float_layers"] == [] and asked == [()]


def test_when_nothing_is_left_to_keep_float_it_says_so_in_one_line(monkeypatch):
    # one finite layer: kept float after round 1; round 2 still misses, nothing left
    only_two = {"t0": CONVS["t0"], "t1": CONVS["t1"]}
    asked = scripted(monkeypatch, [60.0, 55.0, 56.0], {"t0": 10.0, "t1": math.inf}, only_two)
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


def test_the_summary_line_says_when_the_budgeted_model_is_no_faster_than_fp32():
    from pipeline.exporting import _budget_line

    budget = {"max_ap_drop": 0.2, "ap_fp32": 55.88, "ap_int8": 55.92, "p50_ms_fp32": 24.33,
              "p50_ms_int8": 26.01, "slice": "first 100 of 200 images of v.json",
              "float_layers": ["conv0", "conv1"]}  # fmt: skip
    line = _budget_line(budget)
    assert line.startswith("int8 within --max-ap-drop 0.2: AP 55.92 vs fp32 55.88 on the first 100")
    assert line.endswith(
        "2 layer(s) kept in float: conv0, conv1; no faster than fp32 here: ship fp32"
    )
    faster = _budget_line({**budget, "p50_ms_int8": 17.59})
    assert faster.endswith("kept in float: conv0, conv1")
