"""TensorRT: the op list the exporter may emit, build plans per TensorRT version, metadata sidecars,
one-line errors on machines without a GPU, and (marked `gpu`) engine builds and runs.

The `gpu` tests are skipped by tests/conftest.py where TensorRT or a CUDA GPU is missing; on a GPU
runner `pytest -m gpu` runs them (scripts/gpu_check.sh runs them with the end-to-end table).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from deploy.engine_metadata import (
    EngineInfo,
    check_engine_compat,
    read_engine_metadata,
    sidecar_path,
    write_engine_metadata,
)
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata
from export.compat import MIN_OPSET, TENSORRT_OPS, check_tensorrt_compat
from export.onnx import export_onnx, run_onnxruntime
from export.tensorrt import (
    TAIL_PREFIX,
    describe_parser_error,
    pin_tail_fp32,
    plan_build,
    tensorrt_major,
)
from pipeline.cli import cli
from pipeline.exporting import ExportOptions, agreement
from tests.test_quantize import IMG_SIZE, make_tiny_run, tiny_detector
from train.errors import InputError

REPO = Path(__file__).parents[1]

# Every op type `pipeline export` may write (network + decode/NMS tail), then the reduced-precision
# copies' extras. A new op here is a deliberate change: check it against TensorRT's ONNX parser
# support matrix (onnx-tensorrt docs/operators.md) at opset 17 before adding it.
EXPORTED_OPS = frozenset(
    """
    Add Cast Clip Concat Constant ConstantOfShape Conv Div Equal Exp Gather GatherElements
    GatherND Greater Identity InstanceNormalization MaxPool Min Mul NonMaxSuppression ReduceSum
    Relu Reshape Resize ScatterND Shape Sigmoid Slice Sub TopK Transpose Unsqueeze Where
    """.split()  # noqa: SIM905
)
PAD_WHEN_FEW_CANDIDATES = frozenset({"Pad"})  # tail pads when candidates < max detections
REDUCED_PRECISION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "model.onnx"
    return export_onnx(tiny_detector(5), out, _tiny_props())


def _tiny_props() -> dict[str, str]:
    """Pipeline metadata for the 5-class tiny detector (what `pipeline export` writes)."""
    names = [f"c{i}" for i in range(5)]
    metadata = ModelMetadata(class_names=names, category_ids=list(range(1, 6)), img_size=IMG_SIZE)
    return metadata.to_props()


def invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------- CPU: graph checks and plans


def test_exported_ops_are_the_listed_ones_and_tensorrt_parses_them(exported: Path) -> None:
    model = onnx.load(str(exported))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {MIN_OPSET}
    assert {node.op_type for node in model.graph.node} == EXPORTED_OPS
    allowed = EXPORTED_OPS | PAD_WHEN_FEW_CANDIDATES | REDUCED_PRECISION_OPS
    assert allowed <= TENSORRT_OPS, sorted(allowed - TENSORRT_OPS)
    assert check_tensorrt_compat(model) == []  # static dims after batch, TopK's K constant


def test_tail_is_named_for_precision_pinning(exported: Path) -> None:
    """TensorRT 10 pins the tail to FP32 by layer-name prefix; the exporter must keep it."""
    from export.quantize import split_raw_and_tail

    _, tail, tail_inits = split_raw_and_tail(onnx.load(str(exported)))
    assert tail and all(node.name.startswith(TAIL_PREFIX) for node in tail)
    assert all(init.name.startswith(TAIL_PREFIX) for init in tail_inits)


def test_build_plan_per_tensorrt_version() -> None:
    assert tensorrt_major("10.3.0") == 10 and tensorrt_major("11.0.1.4") == 11
    v10 = {p: plan_build(10, p) for p in ("fp32", "fp16", "int8")}
    assert [v10[p].builder_flags for p in v10] == [(), ("FP16",), ("FP16", "INT8")]
    assert v10["int8"].int8_calibrator and not v10["fp16"].int8_calibrator
    assert v10["fp16"].pin_tail_fp32 and not v10["fp32"].pin_tail_fp32
    assert {v10[p].onnx_conversion for p in v10} == {"none"}
    v11 = {p: plan_build(11, p) for p in ("fp32", "fp16", "int8")}
    assert [v11[p].onnx_conversion for p in v11] == ["none", "fp16", "int8-qdq"]
    assert all(v11[p].builder_flags == () and not v11[p].int8_calibrator for p in v11)
    with pytest.raises(InputError, match="too old"):
        plan_build(8, "fp16")
    with pytest.raises(InputError, match="fp32, fp16, int8"):
        plan_build(10, "bf16")


def test_parser_errors_name_the_failing_node(exported: Path) -> None:
    model = onnx.load(str(exported))
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "NonMaxSuppression")
    error = SimpleNamespace(node=lambda: index, desc=lambda: "unsupported attribute")
    line = describe_parser_error(error, model)
    assert model.graph.node[index].name in line and "(NonMaxSuppression)" in line
    assert line.endswith("unsupported attribute")
    graph_level = SimpleNamespace(node=lambda: -1, desc=lambda: "bad model")
    assert describe_parser_error(graph_level, model) == "the graph: bad model"


def _fake_layer(name: str, dtypes: list[str]) -> SimpleNamespace:
    layer = SimpleNamespace(name=name, num_outputs=len(dtypes), precision=None, types={})
    layer.get_output = lambda j: SimpleNamespace(dtype=dtypes[j])
    layer.set_output_type = lambda j, t: layer.types.__setitem__(j, t)
    return layer


def test_pin_tail_fp32_touches_only_float_tail_layers() -> None:
    trt = SimpleNamespace(
        float32="f32", BuilderFlag=SimpleNamespace(PREFER_PRECISION_CONSTRAINTS=7)
    )
    layers = [
        _fake_layer("/backbone/conv1/Conv", ["f32"]),
        _fake_layer("post/sigmoid_12", ["f32"]),
        _fake_layer("post/topk_3", ["f32", "i64"]),
        _fake_layer("post/shape_9", ["i64"]),
    ]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    flags: list[int] = []
    config = SimpleNamespace(set_flag=flags.append)
    assert pin_tail_fp32(trt, network, config) == 2 and flags == [7]
    assert [layer.precision for layer in layers] == [None, "f32", "f32", None]
    assert layers[2].types == {0: "f32"}


# ------------------------------------------------------------------- CPU: engine metadata


def _metadata() -> ModelMetadata:
    return ModelMetadata(class_names=["a", "b"], category_ids=[3, 7], img_size=IMG_SIZE)


def _info(**changes: object) -> EngineInfo:
    base = {
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "max_batch": 4,
    }
    return EngineInfo(**{**base, **changes})


def test_sidecar_round_trip_and_errors(tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    path = write_engine_metadata(engine, _metadata().to_props(), _info())
    assert path == sidecar_path(engine) and path.name == "model.fp16.engine.json"
    metadata, info = read_engine_metadata(engine)
    assert metadata == _metadata() and info == _info()
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DeployError, match="not an engine sidecar"):
        read_engine_metadata(engine)
    path.unlink()
    with pytest.raises(DeployError, match="no metadata sidecar model.fp16.engine.json"):
        read_engine_metadata(engine)


def test_engine_from_another_tensorrt_or_gpu_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    check_engine_compat(_info(), "10.3.0", "NVIDIA H100", "9.0", "m.engine")
    with pytest.raises(DeployError, match=r"built with TensorRT 10.3.0, this machine has 10.4.0"):
        check_engine_compat(_info(), "10.4.0", "NVIDIA H100", "9.0", "m.engine")
    with pytest.raises(DeployError, match=r"built for NVIDIA H100 \(compute capability 9.0\)"):
        check_engine_compat(_info(), "10.3.0", "NVIDIA A100", "8.0", "m.engine")
    with caplog.at_level(logging.WARNING):
        check_engine_compat(_info(), "10.3.0", "NVIDIA H200", "9.0", "m.engine")
    assert "engine built on NVIDIA H100, running on NVIDIA H200" in caplog.text


# --------------------------------------------------------- CPU: missing GPU, one clear line


def _one_line_exit_2(result: object) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_gpu_options_without_a_gpu_are_one_clear_error(exported: Path, tmp_path: Path) -> None:
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
        pytest.skip("this machine has GPU providers")
    for provider, name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "Tensorrt")):
        line = _one_line_exit_2(invoke("eval", "--model", exported, "--provider", provider))
        assert name in line and "pip install '.[gpu]'" in line
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    line = _one_line_exit_2(invoke("eval", "--model", engine))
    assert str(engine) in line and "pip install '.[gpu]'" in line


def test_trt_export_without_tensorrt_fails_before_exporting(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    out = tmp_path / "model.onnx"
    line = _one_line_exit_2(
        invoke("export", "--weights", tmp_path / "none.pt", "--out", out, "--trt")
    )
    assert "TensorRT is not installed" in line and "pip install '.[gpu]'" in line
    assert not out.exists()


def test_runtime_imports_without_tensorrt_cuda_or_torch() -> None:
    code = (
        "import sys, deploy.backends.tensorrt, deploy.backends.cuda_memory, "
        "deploy.engine_metadata; "
        "bad = {'torch', 'tensorrt', 'pycuda', 'cuda'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cuda_bindings_report_missing_driver_or_package() -> None:
    from deploy.backends.cuda_memory import open_cuda

    with pytest.raises(DeployError, match="unknown CUDA API 'cupy'; valid: auto, cuda-python"):
        open_cuda("cupy")
    try:
        open_cuda("cuda-python").close()
    except DeployError as exc:  # cuda-python absent, or no driver/GPU: either way one clear line
        assert "pip install" in str(exc) or "no usable CUDA device 0 (CUDA cudaSetDevice" in str(
            exc
        )
    else:
        pytest.skip("this machine has a CUDA device")


def test_every_export_option_reaches_run_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.exporting

    seen: list[tuple] = []
    monkeypatch.setattr(pipeline.exporting, "run_export", lambda *a: seen.append(a) or "ok")
    args = [
        "export",
        "--weights",
        "w.pt",
        "--out",
        "m.onnx",
        "--opset",
        "18",
        "--data",
        "d",
        "--trt",
        "--precision",
        "int8",
        "--batch",
        "8",
        "--workspace",
        "2.5",
        "--calib-images",
        "32",
        "--overwrite",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    options = ExportOptions(trt=True, precision="int8", batch=8, workspace_gb=2.5, calib_images=32)
    assert seen == [(Path("w.pt"), Path("m.onnx"), 18, Path("d"), True, options)]
    flags = {f for p in cli.commands["export"].params for f in p.opts}
    assert flags == {a for a in args if a.startswith("--")}


# ------------------------------------------------------------- GPU: build, run, reload, refuse


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_run(tmp_path_factory.mktemp("gpu"))


@pytest.fixture(scope="module")
def engines(gpu_run: tuple[Path, Path], exported: Path) -> dict[str, Path]:
    """fp32/fp16/int8 engines of the tiny model (max batch 4), built once for the module."""
    from export.quantize import calibration_images
    from export.tensorrt import EngineOptions, build_engine

    data, _ = gpu_run
    built = {}
    for precision in ("fp32", "fp16", "int8"):
        path = exported.with_name(f"model.{precision}.engine")
        images = calibration_images(data, IMG_SIZE, 8) if precision == "int8" else None
        build = build_engine(exported, path, EngineOptions(precision, max_batch=4), images)
        info = EngineInfo(
            build.tensorrt_version,
            build.gpu_name,
            build.compute_capability,
            precision,
            build.min_batch,
            build.opt_batch,
            build.max_batch,
        )
        write_engine_metadata(path, _tiny_props(), info)
        built[precision] = path
    return built


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 3, IMG_SIZE, IMG_SIZE)) * 255).astype(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("precision", "min_found"), [("fp32", 0.95), ("fp16", 0.85), ("int8", 0.5)]
)
def test_engine_matches_onnxruntime(
    engines: dict[str, Path], exported: Path, precision: str, min_found: float
) -> None:
    from deploy.backends.tensorrt import TensorRTPredictor

    predictor = TensorRTPredictor(engines[precision])
    assert predictor.max_batch == 4 and predictor.precision == precision
    images = _images(3)
    ours, reference = predictor(images), run_onnxruntime(exported, images)
    assert ours.boxes.shape == (3, 100, 4) and ours.labels.dtype == np.int64
    found, total = agreement(reference, ours, min_score=0.05)
    assert total > 0 and found >= min_found * total, (found, total)
    one = predictor(images[:1])
    assert np.array_equal(one.num_dets, ours.num_dets[:1])
    with pytest.raises(DeployError, match="outside the engine's range 1..4"):
        predictor(_images(5))


@pytest.mark.gpu
def test_cuda_graph_replay_gives_the_same_detections(engines: dict[str, Path]) -> None:
    from deploy.backends.tensorrt import TensorRTPredictor

    plain = TensorRTPredictor(engines["fp16"])(_images(1, seed=3))
    graphed = TensorRTPredictor(engines["fp16"], cuda_graph=True)
    for _ in range(3):  # capture on the first call, replay after (or fall back with a warning)
        again = graphed(_images(1, seed=3))
    assert np.array_equal(again.num_dets, plain.num_dets)
    np.testing.assert_allclose(again.boxes, plain.boxes, atol=1e-4)


@pytest.mark.gpu
def test_engine_reloads_in_a_fresh_process(engines: dict[str, Path], tmp_path: Path) -> None:
    from deploy.backends.tensorrt import TensorRTPredictor

    images = _images(2, seed=4)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, numpy as np; from deploy.backends.tensorrt import TensorRTPredictor; "
        f"d = TensorRTPredictor({str(engines['fp32'])!r})(np.load({str(tmp_path / 'images.npy')!r}));"
        f" np.save({str(tmp_path / 'boxes.npy')!r}, d.boxes); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    expected = TensorRTPredictor(engines["fp32"])(images).boxes
    np.testing.assert_allclose(np.load(tmp_path / "boxes.npy"), expected, atol=1e-4)


@pytest.mark.gpu
def test_engine_from_another_version_fails_with_one_line(
    engines: dict[str, Path], tmp_path: Path
) -> None:
    from deploy.backends.tensorrt import TensorRTPredictor

    engine = tmp_path / "old.engine"
    engine.write_bytes(engines["fp32"].read_bytes())
    sidecar = json.loads(sidecar_path(engines["fp32"]).read_text())
    sidecar["engine"]["tensorrt_version"] = "9.9.9"
    sidecar_path(engine).write_text(json.dumps(sidecar))
    with pytest.raises(DeployError, match="built with TensorRT 9.9.9"):
        TensorRTPredictor(engine)
    line = _one_line_exit_2(invoke("eval", "--model", engine))
    assert "rebuild it here" in line
    engine.write_bytes(b"not a plan")
    sidecar["engine"]["tensorrt_version"] = TensorRTPredictor(engines["fp32"]).info.tensorrt_version
    sidecar_path(engine).write_text(json.dumps(sidecar))
    with pytest.raises(DeployError, match="cannot deserialize"):
        TensorRTPredictor(engine)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_export_and_eval_through_the_cli(
    gpu_run: tuple[Path, Path], tmp_path: Path, precision: str
) -> None:
    data, weights = gpu_run
    out = tmp_path / "model.onnx"
    result = invoke(
        "export",
        "--weights",
        weights,
        "--out",
        out,
        "--data",
        data,
        "--trt",
        "--precision",
        precision,
        "--batch",
        2,
        "--calib-images",
        8,
    )
    assert result.exit_code == 0, result.output
    engine = tmp_path / f"model.{precision}.engine"
    assert engine.is_file() and sidecar_path(engine).is_file()
    assert (tmp_path / "trt_timing.cache").is_file()
    report = tmp_path / "report.json"
    result = invoke("eval", "--model", engine, "--data", data, "--json", report, "--warmup", 1)
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    assert saved["backend"] == "tensorrt" and saved["precision"] == precision
