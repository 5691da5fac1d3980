"""OpenVINO: the IR export, its parity with ONNX Runtime on a model that detects, its metadata,
and one-line errors when OpenVINO or its weights file is missing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deploy.errors import DeployError
from export.onnx import compare_detections, run_onnxruntime
from pipeline.cli import cli
from pipeline.exporting import parity_images
from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run
from tests.test_detecting_model import MIN_RECALL, recall_with_category

openvino = pytest.importorskip("openvino")
from deploy.backends.openvino import OpenVinoPredictor, cpu_capabilities  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


@pytest.fixture(scope="module")
def irs(model: DetectingRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """best.pt exported by `pipeline export --openvino` at each precision, one folder each."""
    found = {}
    for precision in PRECISIONS:
        out = tmp_path_factory.mktemp(f"openvino-{precision}")
        shutil.copy(model.weights, out / "best.pt")
        result = invoke("export", "--weights", out / "best.pt", "--data", model.data,
                        "--openvino", "--precision", precision, "--calib-images", 32)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"OpenVINO IR, {precision}" in result.output
        found[precision] = out / f"model.{precision}.xml"
    return found


def _eval(model: DetectingRun, path: Path, out: Path) -> tuple[dict, list[dict]]:
    report, dets = out / f"{path.stem}.report.json", out / f"{path.stem}.dets.json"
    result = invoke("eval", "--model", path, "--data", model.data, "--json", report,
                    "--results", dets, "--warmup", 0, "--batch-size", 4)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text()), json.loads(dets.read_text())


@pytest.mark.slow
def test_fp32_ir_equals_onnxruntime_detection_by_detection(
    model: DetectingRun, irs: dict[str, Path]
) -> None:
    predictor = OpenVinoPredictor(irs["fp32"])
    images = parity_images(model.data, predictor.metadata.img_size, count=12)
    reference = run_onnxruntime(irs["fp32"].with_name("model.onnx"), images)
    assert int(reference.num_dets.sum()) >= 12  # a model that detects: at least one per image
    parity = compare_detections(reference, predictor(images))
    assert parity["match"], parity


@pytest.mark.slow
def test_every_precision_finds_the_objects_and_keeps_the_ap(
    model: DetectingRun, irs: dict[str, Path], tmp_path: Path
) -> None:
    fp32_report, _ = _eval(model, irs["fp32"].with_name("model.onnx"), tmp_path)
    for precision, allowed_drop in (("fp32", 1e-4), ("bf16", 0.01), ("int8", 0.03)):
        report, dets = _eval(model, irs[precision], tmp_path)
        assert report["backend"] == "openvino-cpu" and report["precision"] == precision
        assert report["metrics"]["AP"] >= fp32_report["metrics"]["AP"] - allowed_drop, precision
        assert recall_with_category(model.val_ann, dets) >= MIN_RECALL, precision


@pytest.mark.slow
def test_bf16_really_runs_in_bf16(model: DetectingRun, irs: dict[str, Path]) -> None:
    if "BF16" not in cpu_capabilities()["capabilities"]:
        pytest.skip("this CPU has no bf16 units: OpenVINO runs the bf16 IR in fp32")
    fp32, bf16 = OpenVinoPredictor(irs["fp32"]), OpenVinoPredictor(irs["bf16"])
    assert bf16._compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    assert fp32._compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    images = parity_images(model.data, fp32.metadata.img_size, count=4)
    a, b = fp32(images), bf16(images)
    n = int(min(a.num_dets[0], b.num_dets[0]))
    assert n > 0 and not np.array_equal(a.scores[0, :n], b.scores[0, :n])  # rounded differently
    assert np.allclose(a.scores[0, :n], b.scores[0, :n], atol=0.05)


@pytest.mark.slow
def test_the_ir_alone_carries_the_metadata(
    model: DetectingRun, irs: dict[str, Path], tmp_path: Path
) -> None:
    """Only model.bf16.xml and .bin, moved elsewhere: class names, ids and precision come along."""
    for suffix in (".xml", ".bin"):
        shutil.copy(irs["bf16"].with_suffix(suffix), tmp_path / f"alone{suffix}")
    predictor = OpenVinoPredictor(tmp_path / "alone.xml")
    assert predictor.precision == "bf16"
    assert predictor.metadata.class_names == ["red", "blue"]
    assert predictor.metadata.category_ids == [3, 8]
    result = invoke("predict", "--model", tmp_path / "alone.xml", "--out", tmp_path / "drawn",
                    model.val_images / "0001.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "drawn" / "detections.json").read_text())
    assert {d["category_id"] for image in found["images"] for d in image["detections"]} <= {3, 8}


def test_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(DeployError, match=r"model\.xml: its weights model\.bin are missing"):
        OpenVinoPredictor(tmp_path / "model.xml")


def test_without_openvino_asking_for_it_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not read: the check comes first")
    result = CliRunner().invoke(
        cli, ["export", "--weights", str(weights), "--openvino", "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 2 and "OpenVINO is not installed" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.onnx").exists()
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"")
    result = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "m.xml")])
    assert result.exit_code == 2 and "OpenVINO is not installed" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--precision", "bf16"],
            "--precision bf16: ONNX Runtime and TensorRT take fp32, fp16, int8",
        ),
        (
            ["--openvino", "--precision", "fp16"],
            "--precision fp16: --openvino takes fp32, bf16, int8",
        ),
        (["--openvino", "--trt"], "choose one engine per export"),
    ],
)
def test_precisions_each_target_does_not_know_are_refused(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not read: the check comes first")
    result = CliRunner().invoke(cli, ["export", "--weights", str(weights), *flags])
    assert result.exit_code == 2 and message in result.output
