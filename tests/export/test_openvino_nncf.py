"""`export --openvino --precision int8 --int8-method nncf`: NNCF quantizes the fp32 IR of a
model that detects; the int8 IR keeps the AP, the post-processing stays float, the conversion is
recorded, and the options NNCF does not take are refused in one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run
from tests.train.test_detecting_model import MIN_RECALL, _evaluate, recall_with_category

openvino = pytest.importorskip("openvino")
pytest.importorskip("nncf")

RAW_OUTPUTS = {"cls_logits", "box_deltas"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


@pytest.fixture(scope="module")
def nncf_export(model: DetectingRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("nncf")
    shutil.copy(model.weights, out / "best.pt")
    result = invoke("export", "--weights", out / "best.pt", "--data", model.data, "--openvino",
                    "--precision", "int8", "--int8-method", "nncf", "--calib-images", 32)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out / "model.int8.xml", result.output


def _downstream_of_raw_outputs(model: object) -> list[object]:
    """Every op fed, directly or not, by cls_logits or box_deltas: the decode + NMS tail
    (found walking forward from the raw outputs, not the way the exporter walks back)."""
    frontier = [
        target.get_node()
        for op in model.get_ordered_ops()
        for output in op.outputs()
        if output.get_names() & RAW_OUTPUTS
        for target in output.get_target_inputs()
    ]
    seen: dict[str, object] = {}
    while frontier:
        op = frontier.pop()
        if op.get_friendly_name() not in seen:
            seen[op.get_friendly_name()] = op
            frontier += [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
    return list(seen.values())


@pytest.mark.slow
def test_nncf_int8_ir_keeps_the_ap_and_finds_the_objects(
    model: DetectingRun, nncf_export: tuple[Path, str], tmp_path: Path
) -> None:
    xml, output = nncf_export
    assert "int8 by NNCF" in output and not xml.with_name("model.int8.onnx").exists()
    fp32, _ = _evaluate(model, xml.with_name("model.onnx"), tmp_path)
    report, dets = _evaluate(model, xml, tmp_path)
    assert report["backend"] == "openvino-cpu" and report["precision"] == "int8"
    assert report["metrics"]["AP"] >= fp32["metrics"]["AP"] - 0.03
    assert recall_with_category(model.val_ann, dets) >= MIN_RECALL
    conversion = report["conversion"]
    assert conversion["int8_method"] == "nncf" and conversion["calibration_images"] == 32
    assert len(conversion["calibration_list_sha256"]) == 64


@pytest.mark.slow
def test_the_network_is_quantized_and_the_post_processing_is_not(
    nncf_export: tuple[Path, str],
) -> None:
    ir = openvino.Core().read_model(nncf_export[0])
    tail = _downstream_of_raw_outputs(ir)
    assert {op.get_type_name() for op in tail} >= {"NonMaxSuppression", "Sigmoid"}
    assert not [op.get_friendly_name() for op in tail if op.get_type_name() == "FakeQuantize"]
    convolutions_fed_by_fake_quantize = [
        op
        for op in ir.get_ordered_ops()
        if op.get_type_name() == "Convolution"
        and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    ]
    assert len(convolutions_fed_by_fake_quantize) >= 10  # the backbone, FPN and head run in int8


def test_the_ignored_scope_is_the_whole_post_processing_and_no_convolution(
    model: DetectingRun,
) -> None:
    """NNCF 3.4 leaves this tail alone even unasked; the ignored scope keeps it so whatever
    NNCF's defaults become: it must hold every op downstream of the raw outputs."""
    from export.openvino_nncf import tail_op_names

    fp32 = openvino.convert_model(str(model.run / "model.onnx"))
    ignored = set(tail_op_names(fp32))
    downstream = {
        op.get_friendly_name(): op.get_type_name() for op in _downstream_of_raw_outputs(fp32)
    }
    assert "NonMaxSuppression" in downstream.values()
    assert {name for name, kind in downstream.items() if kind != "Result"} <= ignored
    convolutions = {op.get_friendly_name() for op in fp32.get_ordered_ops()
                    if op.get_type_name() == "Convolution"}  # fmt: skip
    assert len(convolutions) >= 10 and not convolutions & ignored


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "int8"], "--int8-method nncf: only --openvino --precision int8"),
        (["--openvino", "--precision", "bf16"], "--int8-method nncf: only --openvino --precision"),
        (["--openvino", "--precision", "int8", "--calibration", "entropy"],
         "--calibration entropy: NNCF sets its ranges itself"),
        (["--openvino", "--precision", "int8", "--max-ap-drop", "1"],
         "--max-ap-drop: the budget search keeps layers of the QDQ model in float"),
    ],
)  # fmt: skip
def test_options_nncf_does_not_take_are_one_line(tmp_path: Path, extra, message) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"never read: the options are checked first")
    result = invoke("export", "--weights", weights, "--int8-method", "nncf", *extra)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert message in result.output and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_without_nncf_installed_the_export_says_what_to_install(
    model: DetectingRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf fails as if not installed
    shutil.copy(model.weights, tmp_path / "best.pt")
    result = invoke("export", "--weights", tmp_path / "best.pt", "--data", model.data,
                    "--openvino", "--precision", "int8", "--int8-method", "nncf")  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --int8-method nncf: NNCF is not installed: pip install '.[nncf]'"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # checked before any work
