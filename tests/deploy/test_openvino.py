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

from common.datasets.layout import resolve_split
from deploy.errors import DeployError
from export.onnx import compare_detections, run_onnxruntime
from pipeline.cli import cli
from pipeline.exporting import agreement, split_parity_images
from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run
from tests.train.test_detecting_model import MIN_RECALL, _evaluate, recall_with_category

openvino = pytest.importorskip("openvino")
from common.engine_files import IR_PRECISION_KEY, IR_RT_INFO_SECTION  # noqa: E402
from deploy.backends.openvino import (  # noqa: E402
    OpenVinoPredictor,
    cpu_capabilities,
    read_rt_info,
    shared_core,
)
from deploy.metadata import ModelMetadata  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.openvino import convert_onnx_to_ir  # noqa: E402
from train.model.retinanet import ModelConfig, RetinaDetector  # noqa: E402

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
        calibration = ["--calib-images", 32] if precision == "int8" else []
        result = invoke("export", "--weights", out / "best.pt", "--data", model.data,
                        "--openvino", "--precision", precision, *calibration)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"OpenVINO IR, {precision}" in result.output
        found[precision] = out / f"model.{precision}.xml"
    return found


@pytest.mark.slow
def test_fp32_ir_equals_onnxruntime_detection_by_detection(
    model: DetectingRun, irs: dict[str, Path]
) -> None:
    predictor = OpenVinoPredictor(irs["fp32"])
    images = split_parity_images(*resolve_split(model.data, "val"), predictor.metadata.img_size, 12)
    reference = run_onnxruntime(irs["fp32"].with_name("model.onnx"), images)
    assert int(reference.num_dets.sum()) >= 12  # a model that detects: at least one per image
    parity = compare_detections(reference, predictor(images))
    assert parity["match"], parity


@pytest.mark.slow
def test_every_precision_finds_the_objects_and_keeps_the_ap(
    model: DetectingRun, irs: dict[str, Path], tmp_path: Path
) -> None:
    fp32_report, _ = _evaluate(model, irs["fp32"].with_name("model.onnx"), tmp_path)
    for precision, allowed_drop in (("fp32", 1e-4), ("bf16", 0.01), ("int8", 0.03)):
        report, dets = _evaluate(model, irs[precision], tmp_path)
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
    images = split_parity_images(*resolve_split(model.data, "val"), fp32.metadata.img_size, 4)
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


# ------------------------------------------------- a tiny model built to detect, no training

TINY_METADATA = ModelMetadata(class_names=["a", "b"], category_ids=[4, 9], img_size=64)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny detector whose classifier bias is raised so that it scores many boxes (0.85 to
    0.9, varying with the image), exported to ONNX and to fp32 and bf16 IRs."""
    import torch

    torch.manual_seed(0)
    config = ModelConfig(num_classes=2, img_size=64, fpn_channels=16, head_convs=1)
    model = RetinaDetector(config).eval()
    with torch.no_grad():
        model.head.cls_out.bias.fill_(2.0)
    folder = tmp_path_factory.mktemp("built")
    onnx_path = export_onnx(model, folder / "model.onnx", TINY_METADATA.to_props())
    props = TINY_METADATA.to_props()
    for precision in ("fp32", "bf16"):
        convert_onnx_to_ir(onnx_path, folder / f"model.{precision}.xml",
                           {**props, IR_PRECISION_KEY: precision}, IR_RT_INFO_SECTION)  # fmt: skip
    return {"onnx": onnx_path, "fp32": folder / "model.fp32.xml", "bf16": folder / "model.bf16.xml"}


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, 3, 64, 64)).astype(np.float32)


def test_fp32_ir_equals_onnxruntime_on_a_model_built_to_detect(built: dict[str, Path]) -> None:
    images = _images(3)
    reference = run_onnxruntime(built["onnx"], images)
    assert (reference.num_dets > 10).all()  # it detects: many boxes in every image
    found = OpenVinoPredictor(built["fp32"])(images)
    parity = compare_detections(reference, found)
    assert parity["match"], parity
    assert found.labels.dtype == np.int64 and found.num_dets.dtype == np.int64
    assert found.boxes.dtype == np.float32 and found.boxes.shape == reference.boxes.shape


def test_the_ir_carries_the_metadata_and_the_precision(built: dict[str, Path]) -> None:
    fp32, bf16 = OpenVinoPredictor(built["fp32"]), OpenVinoPredictor(built["bf16"])
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.metadata == TINY_METADATA
    assert fp32.backend_name == "openvino-cpu" and fp32.hint == "latency"
    assert OpenVinoPredictor(built["bf16"], precision="fp32").precision == "fp32"  # overridden
    model = shared_core().read_model(str(built["bf16"]))
    assert read_rt_info(model) == {**TINY_METADATA.to_props(), IR_PRECISION_KEY: "bf16"}
    # the file format: where other tools (and older or newer versions of this one) look
    assert model.get_rt_info(["detector", "inference_precision"]).astype(str) == "bf16"
    assert model.get_rt_info(["detector", "softsample.category_ids"]).astype(str) == "[4, 9]"


def test_an_int8_ir_runs_its_float_parts_in_f32(built: dict[str, Path]) -> None:
    """int8 is the quantized convolutions; the float tail (decode, NMS inputs) stays f32 rather
    than OpenVINO's bf16 default, so int8 is compared with fp32 on the quantization alone."""
    as_int8 = OpenVinoPredictor(built["fp32"], precision="int8")
    assert as_int8._compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    with pytest.raises(DeployError, match="precision 'fp8' is not one of"):
        OpenVinoPredictor(built["fp32"], precision="fp8")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_ir_runs_with_a_static_batch_compiled_per_batch_size(
    built: dict[str, Path], precision: str
) -> None:
    """OpenVINO's CPU plugin crashes on int8 graphs with a dynamic batch on some CPUs, and static
    float graphs run faster, so each batch size met is compiled static; the detections stay
    ONNX Runtime's (exactly in fp32, by agreement otherwise)."""
    predictor = OpenVinoPredictor(built["fp32"], precision=precision)
    images = _images(3)
    reference, detections = run_onnxruntime(built["onnx"], images), predictor(images)
    if precision == "bf16":  # bf16 moves scores a little: the same boxes, found again
        found, total = agreement(reference, detections)
        assert total > 0 and found >= 0.9 * total, (found, total)
    else:  # "int8" on this float graph runs in f32: exact
        parity = compare_detections(reference, detections)
        assert parity["match"], parity
    predictor(images[:1])
    assert sorted(predictor._by_batch) == [1, 3]
    for batch, (compiled, _) in predictor._by_batch.items():
        assert compiled.input(0).get_partial_shape().to_shape() == [batch, 3, 64, 64]


def test_every_predictor_shares_one_openvino_core(
    built: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Core in one process can crash it; predictors and doctor reuse the first."""
    made = []
    real = openvino.Core

    def counting_core(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(openvino, "Core", counting_core)
    shared_core.cache_clear()
    for precision in PRECISIONS:
        OpenVinoPredictor(built["fp32"], precision=precision)
    cpu_capabilities()
    assert made == [1]


def test_cpu_capabilities_are_openvinos_own_words() -> None:
    core = shared_core()
    found = cpu_capabilities()
    assert found["version"] == openvino.__version__.split("-")[0] and "-" not in found["version"]
    assert found["capabilities"] == list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert "FP32" in found["capabilities"]


def test_the_throughput_hint_reaches_openvino(built: dict[str, Path]) -> None:
    predictor = OpenVinoPredictor(built["fp32"], hint="throughput", threads=1)
    assert str(predictor._compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert predictor._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    with pytest.raises(DeployError, match="hint 'fast': expected one of latency, throughput"):
        OpenVinoPredictor(built["fp32"], hint="fast")


def test_a_model_opened_with_no_settings_runs_as_eval_runs_it(built: dict[str, Path]) -> None:
    """A bare open_deployed (Detector.load's path) picks ONNX Runtime's provider itself and
    OpenVINO's latency hint, `pipeline eval`'s defaults."""
    import onnxruntime

    from deploy.runtimes import open_deployed

    onnx_predictor = open_deployed(built["onnx"])
    assert onnx_predictor.provider in onnxruntime.get_available_providers()
    ir_predictor = open_deployed(built["fp32"])
    assert str(ir_predictor._compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"


def test_a_wrong_input_shape_is_one_line(built: dict[str, Path]) -> None:
    with pytest.raises(DeployError, match=r"expected input \(B, 3, 64, 64\), got \(1, 3, 32, 32\)"):
        OpenVinoPredictor(built["fp32"])(np.zeros((1, 3, 32, 32), np.float32))


def test_an_ir_not_written_by_this_pipeline_is_refused(tmp_path: Path) -> None:
    """Another graph (input `x`, no detection outputs, no metadata) is one clear error."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "o.onnx"
    )
    convert_onnx_to_ir(tmp_path / "o.onnx", tmp_path / "o.xml", {}, IR_RT_INFO_SECTION)
    with pytest.raises(DeployError, match="o.xml"):
        OpenVinoPredictor(tmp_path / "o.xml")
    props = TINY_METADATA.to_props()
    convert_onnx_to_ir(tmp_path / "o.onnx", tmp_path / "m.xml", props, IR_RT_INFO_SECTION)
    with pytest.raises(DeployError, match="expected one input named 'images', got \\['x'\\]"):
        OpenVinoPredictor(tmp_path / "m.xml")


def test_the_ir_is_written_whole_or_not_at_all(built: dict[str, Path], tmp_path: Path) -> None:
    """The pair appears only when both are written; no .partial files are left behind."""
    convert_onnx_to_ir(
        built["onnx"], tmp_path / "m.xml", TINY_METADATA.to_props(), IR_RT_INFO_SECTION
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_a_broken_ir_is_one_line_with_openvinos_first_line(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net name='x' version='11'><layers>")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(RuntimeError) as raised:
        shared_core().read_model(str(tmp_path / "model.xml"))
    first = str(raised.value).strip().splitlines()[0]
    with pytest.raises(DeployError) as refused:
        OpenVinoPredictor(tmp_path / "model.xml")
    assert str(refused.value) == f"{tmp_path / 'model.xml'}: not an OpenVINO IR ({first})"


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
            "--precision fp16: OpenVINO takes fp32, bf16, int8",
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
