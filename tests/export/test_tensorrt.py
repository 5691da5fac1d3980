"""TensorRT: the op list the exporter may emit, build plans per TensorRT version, metadata sidecars,
one-line errors on machines without a GPU, the runtime's CUDA graph bookkeeping on stand-ins for
TensorRT and CUDA, and (marked `gpu`) engine builds and runs, and engine AP on a trained model.

The `gpu` tests are skipped by tests/conftest.py where TensorRT or a CUDA GPU is missing; on a GPU
runner `pytest -m gpu` runs them (scripts/gpu_check.sh runs them with the end-to-end table).
"""

from __future__ import annotations

import importlib
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

from common.contract import Detections, EngineInfo
from common.engine_files import sidecar_path
from common.errors import InputError
from deploy.engine_metadata import check_engine_compat, read_engine_metadata
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata
from export.compat import MIN_OPSET, TENSORRT_OPS, check_tensorrt_compat
from export.errors import ExportError
from export.onnx import compare_detections, export_onnx, run_onnxruntime
from export.options import ExportOptions
from export.tensorrt import (
    TAIL_PREFIX,
    describe_parser_error,
    pin_tail_fp32,
    plan_build,
    tensorrt_major,
    write_engine_metadata,
)
from pipeline.cli import cli
from pipeline.exporting import agreement
from tests.export.test_quantize import IMG_SIZE, make_tiny_run, tiny_detector

REPO = Path(__file__).parents[2]

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
    for plans in (v10, v11):  # TensorRT's default TF32 would make an fp32 engine drift from ORT
        assert [plans[p].allow_tf32 for p in ("fp32", "fp16", "int8")] == [False, True, True]
    with pytest.raises(ExportError, match="too old"):
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


def _importable(name: str) -> bool:
    """`import name` works here (an installed but broken TensorRT counts as missing)."""
    try:
        importlib.import_module(name)
    except (ImportError, OSError):
        return False
    return True


def _expected_engine_error() -> list[str]:
    """What `pipeline eval --model X.engine` must say on this machine, found independently of
    the runtime: the first missing piece of TensorRT -> CUDA bindings -> a usable CUDA device."""
    import torch

    install = "pip install '.[gpu]'"
    if not _importable("tensorrt"):
        return ["TensorRT, which is not installed here", install]
    if _importable("cuda.bindings.runtime") or _importable("cuda.cudart"):
        if not torch.cuda.is_available():  # the package is there, the driver or GPU is not
            return ["no usable CUDA device 0", "needs an NVIDIA GPU and driver"]
    elif _importable("pycuda.driver"):
        if not torch.cuda.is_available():
            return ["CUDA (pycuda) cannot open device 0"]
    else:
        return ["not installed: the TensorRT runtime needs CUDA Python bindings", install]
    return ["no metadata sidecar model.engine.json"]  # everything is there: the file is the problem


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
    assert str(engine) in line
    for expected in _expected_engine_error():
        assert expected in line, (expected, line)


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


def test_cuda_marker_needs_only_a_cuda_device_and_gpu_marker_needs_tensorrt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tests/conftest.py: the losses' CUDA tests run on any CUDA machine, TensorRT or not."""
    import torch

    import tests.train.test_losses_gpu
    from tests import conftest

    marks = tests.train.test_losses_gpu.pytestmark
    assert [mark.name for mark in (marks if isinstance(marks, list) else [marks])] == ["cuda"]
    monkeypatch.setattr(conftest, "_installed", lambda name: False)  # no TensorRT, no bindings
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert conftest.HARDWARE_MARKERS["cuda"]() is None
    assert conftest.HARDWARE_MARKERS["gpu"]() == "TensorRT is not installed"
    monkeypatch.setattr(conftest, "_installed", lambda name: True)
    assert conftest.HARDWARE_MARKERS["gpu"]() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in conftest.HARDWARE_MARKERS["cuda"]()
    assert "no CUDA device" in conftest.HARDWARE_MARKERS["gpu"]()


# ------------------------------------------- CPU: the CUDA graph state, on fake TensorRT / CUDA


class _FakeContext:
    """An execution context whose execute_async_v3 records whether the stream was capturing."""

    def __init__(self, cuda: _FakeCuda, refuse_capture: str | None = None) -> None:
        self.cuda, self.refuse_capture = cuda, refuse_capture
        self.launches: list[str] = []  # "plain" or "captured", in call order
        self.trt_log: object = None  # the TensorRT logger, to report an error through

    def execute_async_v3(self, stream: int) -> bool:
        if not self.cuda.capturing:
            self.launches.append("plain")
            return True
        self.launches.append("captured")
        if self.refuse_capture is None:
            return True
        self.trt_log.log(self.trt_log.severity_error, self.refuse_capture)
        return False


class _FakeCuda:
    """The CudaApi calls the graph path makes, with failures on request."""

    def __init__(self, begin_error: str | None = None, end_error: str | None = None) -> None:
        self.begin_error, self.end_error = begin_error, end_error
        self.capturing = False
        self.calls: list[str] = []
        self.graphs = 0

    def synchronize(self, stream: int) -> None:
        self.calls.append("synchronize")

    def begin_capture(self, stream: int) -> None:
        if self.begin_error:
            raise DeployError(self.begin_error)
        self.capturing = True
        self.calls.append("begin")

    def end_capture(self, stream: int) -> str:
        self.calls.append("end")
        if self.end_error:  # CUDA ends the capture, then reports it invalid
            self.capturing = False
            raise DeployError(self.end_error)
        self.capturing = False
        self.graphs += 1
        return f"graph{self.graphs}"

    def abort_capture(self, stream: int) -> None:
        self.calls.append("abort")
        self.capturing = False

    def destroy_graph(self, graph: str) -> None:
        self.calls.append(f"destroy {graph}")

    def launch(self, graph: str, stream: int) -> None:
        assert not self.capturing
        self.calls.append(f"launch {graph}")


def _fake_trt_logger() -> object:
    """The runtime's own logger class (deploy/backends/tensorrt.py) on a stand-in trt module."""
    from deploy.backends.tensorrt import _python_logger

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    trt_log = _python_logger(SimpleNamespace(ILogger=ILogger))
    trt_log.severity_error = ILogger.Severity.ERROR
    return trt_log


def _launcher(use_graph: bool = True, refuse: str | None = None, **cuda_errors: str) -> tuple:
    from deploy.backends.tensorrt import GraphLauncher

    cuda = _FakeCuda(**cuda_errors)
    context = _FakeContext(cuda, refuse)
    context.trt_log = _fake_trt_logger()
    launcher = GraphLauncher(context, cuda, 7, "m.engine", use_graph, context.trt_log)
    return launcher, context, cuda


def test_cuda_graph_off_launches_plainly() -> None:
    launcher, context, cuda = _launcher(use_graph=False)
    for batch in (1, 1, 2):
        launcher.execute(batch)
    assert launcher.status == "off" and not launcher.active
    assert context.launches == ["plain"] * 3 and cuda.calls == []


def test_cuda_graph_is_captured_once_then_replayed() -> None:
    launcher, context, cuda = _launcher()
    assert launcher.status == "pending" and launcher.active
    launcher.execute(2)  # batch 2 never goes through the graph
    assert launcher.status == "pending" and cuda.calls == []
    for _ in range(3):
        launcher.execute(1)
    # one plain launch at the new shape, the captured one, then only graph launches
    assert context.launches == ["plain", "plain", "captured"]
    assert cuda.calls == ["synchronize", "begin", "end"] + ["launch graph1"] * 3
    assert launcher.status == "replayed" and launcher.replays == 3


def test_cuda_graph_is_captured_again_after_another_batch_size() -> None:
    launcher, context, cuda = _launcher()
    launcher.execute(1)
    launcher.execute(2)  # the context's shapes move: the batch-1 graph must not be replayed
    launcher.execute(1)
    assert cuda.calls == [
        "synchronize", "begin", "end", "launch graph1",
        "destroy graph1",
        "synchronize", "begin", "end", "launch graph2",
    ]  # fmt: skip
    assert context.launches == ["plain", "captured", "plain", "plain", "captured"]
    assert launcher.status == "replayed" and launcher.replays == 2


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            {"refuse": "stream capture is not supported with data-dependent shapes"},
            "returned False while capturing; TensorRT: stream capture is not supported with "
            "data-dependent shapes",
        ),
        (
            {"end_error": "CUDA cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated"},
            "CUDA cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated",
        ),
        (
            {"begin_error": "CUDA graph capture needs cuda-python"},
            "CUDA graph capture needs cuda-python",
        ),
    ],
    ids=["tensorrt-refuses", "capture-invalidated", "pycuda"],
)
def test_cuda_graph_capture_failure_is_reported_with_its_reason(
    failure: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    launcher, context, cuda = _launcher(**failure)
    with caplog.at_level(logging.WARNING, logger="deploy.backends.tensorrt"):
        for _ in range(3):
            launcher.execute(1)
    assert launcher.status.startswith("fallback: ") and launcher.status.endswith(reason)
    assert not launcher.active and launcher.replays == 0
    assert not any(call.startswith("launch") for call in cuda.calls) and not cuda.capturing
    if "begin_error" not in failure:
        assert cuda.calls.count("abort") == 1  # the failed capture was ended, once
    # every call still ran the engine: the failed capture ran nothing, so it is launched plainly
    assert context.launches.count("plain") == 1 + 3
    assert f"m.engine: CUDA graph capture failed ({launcher.status[10:]})" in caplog.text


class _StatusPredictor:
    """The smallest predictor `benchmark_latency` scores, with a CUDA graph status or none."""

    def __init__(self, status: str | None) -> None:
        self.metadata = _metadata()
        if status is not None:
            self.cuda_graph_status = status

    def __call__(self, images: np.ndarray) -> object:
        batch = len(images)
        return SimpleNamespace(
            num_dets=np.zeros(batch, np.int64),
            boxes=np.zeros((batch, 1, 4), np.float32),
            scores=np.zeros((batch, 1), np.float32),
            labels=np.full((batch, 1), -1, np.int64),
        )


@pytest.mark.parametrize(
    ("status", "reported"),
    [(None, "off"), ("replayed", "replayed"), ("fallback: no capture", "fallback: no capture")],
)
def test_eval_report_says_whether_a_cuda_graph_ran(status: str | None, reported: str) -> None:
    from deploy.evaluate import benchmark_latency

    report = benchmark_latency(_StatusPredictor(status), iterations=1, warmup=0)
    assert report["cuda_graph"] == reported


def test_every_export_option_reaches_run_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.exporting

    seen: list[tuple] = []
    monkeypatch.setattr(pipeline.exporting, "run_export", lambda *a: seen.append(a) or "ok")
    args = [
        "export",
        "--model",
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
        "--batch-size",
        "8",
        "--workspace",
        "2.5",
        "--calib-images",
        "32",
        "--calibration",
        "entropy",
        "--img-size",
        "96",
        "--conf",
        "0.3",
        "--iou",
        "0.6",
        "--max-dets",
        "20",
        "--overwrite",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    options = ExportOptions(
        opset=18, trt=True, precision="int8", batch=8, workspace_gb=2.5, calib_images=32, img_size=96,
        score_threshold=0.3, nms_iou=0.6, max_detections=20, calibration="entropy",
    )  # fmt: skip
    assert seen == [(Path("w.pt"), Path("m.onnx"), Path("d"), True, options)]
    openvino = ["export", "--weights", "w.pt", "--openvino", "--precision", "int8",
                "--int8-method", "nncf"]  # fmt: skip
    assert invoke(*openvino).exit_code == 0
    assert seen[1] == (
        Path("w.pt"),
        None,
        None,
        False,
        ExportOptions(openvino=True, precision="int8", int8_method="nncf"),
    )
    budget = ["export", "--weights", "w.pt", "--precision", "int8", "--max-ap-drop", "0.5"]
    assert invoke(*budget).exit_code == 0
    assert seen[2][4] == ExportOptions(precision="int8", max_ap_drop=0.5)
    flags = {f for p in cli.commands["export"].params for f in p.opts}
    # the old name of --batch-size and the long name of --calib-images, both accepted
    aliases = {"--batch", "--calibration-images"}
    assert flags == {a for a in [*args, *openvino, *budget] if a.startswith("--")} | aliases
    old_names = ["export", "--weights", "w.pt", "--trt", "--batch", "8"]
    assert invoke(*old_names).exit_code == 0 and seen[3][4].batch == 8


# ------------------------------------------------------------- GPU: build, run, reload, refuse


# Engine AP within this much of the float32 ONNX / PyTorch AP (scripts/gpu_check.sh's targets:
# fp16 0.3 points, int8 1.0 point; fp32 is the same arithmetic, so 0.1 point).
AP_TOLERANCE = {"fp32": 0.001, "fp16": 0.003, "int8": 0.01}
# A trained model must detect, or the AP comparison is 0 against 0.
MIN_TRAINED_AP = 0.3
# The demo reaches AP 0.60 after 525 steps at 192 px (README); 800 images / 16 x 12 epochs = 600
# steps, about a minute on a recent GPU.
GPU_TRAIN_ARGS = ["--device", "cuda", "--img-size", "192", "--epochs", "12", "--batch-size", "16",
                  "--workers", "4", "--cache-images", "--max-val-images", "50", "--seed", "0"]  # fmt: skip
NUM_TRAIN, NUM_VAL = 800, 100


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A few images and the untrained tiny detector: enough to build and compare engines."""
    return make_tiny_run(tmp_path_factory.mktemp("gpu"))


def _succeeded(result: object) -> None:
    """A CLI run exited 0; otherwise its output and exception say why."""
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture(scope="module")
def trained_on_gpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, best.pt) of a resnet18 trained on the built-in dataset until it detects."""
    root = tmp_path_factory.mktemp("trained")
    data, run = root / "data", root / "run"
    result = invoke("data", "synth", "--out", data, "--num-train", NUM_TRAIN, "--num-val", NUM_VAL)
    _succeeded(result)
    result = invoke("train", "--data", data, "--out", run, *GPU_TRAIN_ARGS)
    _succeeded(result)
    return data, run / "best.pt"


def _eval_report(model: Path, data: Path, report: Path, *options: object) -> dict:
    """`pipeline eval` of `model` on every validation image; the report it wrote."""
    result = invoke(
        "eval", "--model", model, "--data", data, "--json", report, "--warmup", 1, *options
    )
    _succeeded(result)
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def reference_aps(trained_on_gpu: tuple[Path, Path]) -> dict[str, float]:
    """AP of the trained model in float32: PyTorch and ONNX Runtime, both on the CPU (no TF32)."""
    data, weights = trained_on_gpu
    onnx_path = weights.with_name("model.onnx")
    result = invoke("export", "--weights", weights, "--out", onnx_path, "--data", data)
    _succeeded(result)
    reports = weights.parent / "reports"
    pytorch = _eval_report(weights, data, reports / "pytorch.json", "--device", "cpu")
    onnx_cpu = _eval_report(onnx_path, data, reports / "onnx.json", "--provider", "cpu")
    return {"pytorch": pytorch["metrics"]["AP"], "onnx": onnx_cpu["metrics"]["AP"]}


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
        info = build_engine(exported, path, EngineOptions(precision, max_batch=4), images)
        assert (info.precision, info.max_batch, info.source_onnx) == (precision, 4, exported.name)
        write_engine_metadata(path, _tiny_props(), info)
        built[precision] = path
    return built


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 3, IMG_SIZE, IMG_SIZE)) * 255).astype(np.float32)


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime_as_tightly_as_onnxruntime_matches_torch(
    engines: dict[str, Path], exported: Path
) -> None:
    """The tolerances of tests/export/test_export.py's ONNX Runtime vs PyTorch check: same detections,
    boxes within 1e-2 px, scores within 1e-4. An fp32 engine computing in TF32 fails here."""
    from deploy.backends.tensorrt import TensorRTPredictor

    predictor = TensorRTPredictor(engines["fp32"])
    assert predictor.max_batch == 4 and predictor.precision == "fp32"
    images = _images(3)
    ours, reference = predictor(images), run_onnxruntime(exported, images)
    assert ours.boxes.shape == (3, 100, 4) and ours.labels.dtype == np.int64
    result = compare_detections(reference, ours)
    assert result["match"] and result["num_dets_reference"] > 0, result
    assert result["max_box_diff"] < 1e-2 and result["max_score_diff"] < 1e-4, result
    one = predictor(images[:1])
    assert compare_detections(Detections.from_arrays(*_first(ours)), one)["match"]
    with pytest.raises(DeployError, match="outside the engine's range 1..4"):
        predictor(_images(5))


def _first(detections: object) -> tuple[np.ndarray, ...]:
    """The first image of batched detections, as (num_dets, boxes, scores, labels)."""
    return tuple(
        getattr(detections, name)[:1] for name in ("num_dets", "boxes", "scores", "labels")
    )


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "min_found"), [("fp16", 0.85), ("int8", 0.5)])
def test_reduced_precision_engine_finds_onnxruntimes_detections(
    engines: dict[str, Path], exported: Path, precision: str, min_found: float
) -> None:
    """Reduced precision moves scores, so detections are matched by class and IoU, not exactly;
    AP itself is compared on a trained model (test_trt_export_and_eval_through_the_cli)."""
    from deploy.backends.tensorrt import TensorRTPredictor

    predictor = TensorRTPredictor(engines[precision])
    assert predictor.max_batch == 4 and predictor.precision == precision
    images = _images(3)
    ours, reference = predictor(images), run_onnxruntime(exported, images)
    found, total = agreement(reference, ours, min_score=0.05)
    assert total > 0 and found >= min_found * total, (found, total)


@pytest.mark.gpu
def test_cuda_graph_state_is_recorded_and_replays_match_plain_launches(
    engines: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Either the graph really ran (counted at the CUDA launch) and gave plain launches' results
    on every image, or the fallback is reported with its reason: never a silent fallback."""
    from deploy.backends.tensorrt import TensorRTPredictor

    plain = TensorRTPredictor(engines["fp16"])
    graphed = TensorRTPredictor(engines["fp16"], cuda_graph=True)
    assert plain.cuda_graph_status == "off" and graphed.cuda_graph_status == "pending"
    launches: list[object] = []
    launch = graphed._cuda.launch
    monkeypatch.setattr(graphed._cuda, "launch", lambda *a: launches.append(a) or launch(*a))
    calls = [1, 1, 1, 2, 1]  # the batch-2 call moves the shapes: the next batch-1 call re-captures
    with caplog.at_level(logging.WARNING, logger="deploy.backends.tensorrt"):
        for seed, batch in enumerate(calls):  # new images each call: nothing baked into the graph
            images = _images(batch, seed=seed)
            result = compare_detections(plain(images), graphed(images))
            assert result["match"], (seed, result)
    status = graphed.cuda_graph_status
    if status == "replayed":
        assert graphed.cuda_graph and len(launches) == calls.count(1)
    else:
        reason = status.removeprefix("fallback: ")
        assert status.startswith("fallback: ") and len(reason) > 10, status
        assert not graphed.cuda_graph and launches == []
        assert f"CUDA graph capture failed ({reason})" in caplog.text


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
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt_export_and_eval_through_the_cli(
    trained_on_gpu: tuple[Path, Path],
    reference_aps: dict[str, float],
    tmp_path: Path,
    precision: str,
) -> None:
    """The engine `pipeline export --trt` builds scores the float32 model's AP, within the
    precision's tolerance, on a model that detects; the fp16 run replays a CUDA graph or says
    why not."""
    data, weights = trained_on_gpu
    assert reference_aps["pytorch"] > MIN_TRAINED_AP, reference_aps
    assert abs(reference_aps["onnx"] - reference_aps["pytorch"]) <= AP_TOLERANCE["fp32"]
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
        128,
    )
    assert result.exit_code == 0, result.output
    engine = tmp_path / f"model.{precision}.engine"
    assert engine.is_file() and sidecar_path(engine).is_file()
    assert (tmp_path / "trt_timing.cache").is_file()
    graph = precision == "fp16"
    options = ["--cuda-graph"] if graph else []
    saved = _eval_report(engine, data, tmp_path / "report.json", *options)
    assert saved["backend"] == "tensorrt" and saved["precision"] == precision
    assert saved["num_images"] == NUM_VAL
    drop = abs(saved["metrics"]["AP"] - reference_aps["onnx"])
    assert drop <= AP_TOLERANCE[precision], (precision, saved["metrics"]["AP"], reference_aps)
    if graph:
        state = saved["cuda_graph"]
        assert state == "replayed" or (state.startswith("fallback: ") and len(state) > 20), state
    else:
        assert saved["cuda_graph"] == "off"
