"""deploy/backends/onnxruntime.py: the predictor on a real CPU session of a tiny graph whose
outputs are slices of its input (so values can be followed through), plus the TensorRT-library
lookup and ONNX Runtime's fallback text, on plain files and fakes where a GPU would be needed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deploy.backends.onnxruntime as ob
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata
from tests.oracles.model_files import write_onnx_metadata

SIZE = 8
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _metadata(**extra: Any) -> ModelMetadata:
    return ModelMetadata(class_names=["a", "b"], category_ids=[1, 2], img_size=SIZE, extra=extra)


def _slicing_model(
    path: Path,
    input_type: int = TensorProto.FLOAT,
    input_name: str = "images",
    op: str = "Identity",
    metadata: ModelMetadata | None = None,
) -> Path:
    """images (N, 3, 8, 8) -> num_dets = images[:, 0, 0, 0], boxes = images[:, 0:1, 0, 0:4],
    scores = images[:, 0:1, 0, 4], labels = images[:, 0:1, 0, 5]: every output is input pixels."""
    ints = {
        "s_num": [0, 0, 0, 0],
        "e_num": [sys.maxsize, 1, 1, 1],
        "s_box": [0, 0, 0, 0],
        "e_box": [sys.maxsize, 1, 1, 4],
        "s_score": [0, 0, 0, 4],
        "e_score": [sys.maxsize, 1, 1, 5],
        "s_label": [0, 0, 0, 5],
        "e_label": [sys.maxsize, 1, 1, 6],
        "ax_num": [1, 2, 3],
        "ax_pair": [2, 3],
        "ax_two": [2],
    }
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    nodes = [
        helper.make_node(op, [input_name], ["pass"]),
        helper.make_node("Cast", ["pass"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["x", "s_num", "e_num"], ["num4"]),
        helper.make_node("Squeeze", ["num4", "ax_num"], ["numf"]),
        helper.make_node("Cast", ["numf"], ["num_dets"], to=TensorProto.INT64),
        helper.make_node("Slice", ["x", "s_box", "e_box"], ["box4"]),
        helper.make_node("Squeeze", ["box4", "ax_two"], ["boxes"]),
        helper.make_node("Slice", ["x", "s_score", "e_score"], ["score4"]),
        helper.make_node("Squeeze", ["score4", "ax_pair"], ["scores"]),
        helper.make_node("Slice", ["x", "s_label", "e_label"], ["label4"]),
        helper.make_node("Squeeze", ["label4", "ax_pair"], ["labelf"]),
        helper.make_node("Cast", ["labelf"], ["labels"], to=TensorProto.INT64),
    ]
    outputs = [
        helper.make_tensor_value_info("num_dets", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 1]),
    ]
    images = helper.make_tensor_value_info(input_name, input_type, ["N", 3, SIZE, SIZE])
    graph = helper.make_graph(nodes, "slices", [images], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_onnx_metadata(model, metadata or _metadata())
    if op == "Identity":
        onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _images(batch: int) -> np.ndarray:
    """Image b: row 0 of channel 0 reads 2, 10+b, 20, 30+b, 0.5, 1, ... (count, box, score,
    label); everything else 255."""
    images = np.full((batch, 3, SIZE, SIZE), 255.0, np.float32)
    for b in range(batch):
        images[b, 0, 0, :6] = [2, 10 + b, 20, 30 + b, 0.5, 1]
    return images


@pytest.mark.parametrize("io_binding", [False, True])
def test_outputs_are_read_by_name_and_cast_to_the_contract(
    tmp_path: Path, io_binding: bool
) -> None:
    predictor = ob.OnnxRuntimePredictor(
        _slicing_model(tmp_path / "m.onnx"), provider="cpu", io_binding=io_binding
    )
    assert predictor.io_binding is io_binding
    out = predictor(_images(2))
    assert out.num_dets.tolist() == [2, 2] and out.num_dets.dtype == np.int64
    assert out.boxes.tolist() == [[[2, 10, 20, 30]], [[2, 11, 20, 31]]]
    assert out.scores.tolist() == [[0.5], [0.5]] and out.scores.dtype == np.float32
    assert out.labels.tolist() == [[1], [1]] and out.labels.dtype == np.int64


def test_cpu_session_defaults_threads_and_log_level(tmp_path: Path) -> None:
    path = _slicing_model(tmp_path / "m.onnx")
    predictor = ob.OnnxRuntimePredictor(path, provider="cpu", threads=1)
    assert predictor.io_binding is False  # IO binding is on by default only on a GPU
    assert (predictor.provider, predictor.providers_ran) == (CPU, [CPU])
    assert predictor.backend_name == "onnxruntime-cpu" and predictor.precision == "fp32"
    options = predictor._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.log_severity_level == 3  # errors only: its warnings are not ours to print
    default = ob.OnnxRuntimePredictor(path, provider="cpu")._session.get_session_options()
    assert default.intra_op_num_threads == 0  # ONNX Runtime's own choice


def test_fp16_input_model_is_fed_half_precision_and_reported_fp16(tmp_path: Path) -> None:
    half = _slicing_model(tmp_path / "h.onnx", input_type=TensorProto.FLOAT16)
    predictor = ob.OnnxRuntimePredictor(half, provider="cpu")
    assert predictor.precision == "fp16"
    out = predictor(_images(1))  # float32 in: the predictor casts to the model's fp16
    assert out.boxes.tolist() == [[[2, 10, 20, 30]]]
    stated = _slicing_model(tmp_path / "s.onnx", metadata=_metadata(precision="int8"))
    assert ob.OnnxRuntimePredictor(stated, provider="cpu").precision == "int8"


def test_input_of_the_wrong_rank_or_size_is_refused(tmp_path: Path) -> None:
    predictor = ob.OnnxRuntimePredictor(_slicing_model(tmp_path / "m.onnx"), provider="cpu")
    for shape in [(3, SIZE, SIZE), (1, 1, SIZE, SIZE), (1, 3, SIZE, SIZE + 1)]:
        with pytest.raises(DeployError, match=r"expected input \(B, 3, 8, 8\), got"):
            predictor(np.zeros(shape, np.float32))


def test_a_graph_whose_input_is_not_images_is_refused(tmp_path: Path) -> None:
    path = _slicing_model(tmp_path / "m.onnx", input_name="pixels")
    with pytest.raises(DeployError, match="m.onnx: expected one input named 'images', got"):
        ob.OnnxRuntimePredictor(path, provider="cpu")


def test_a_graph_onnx_runtime_cannot_load_is_one_line(tmp_path: Path) -> None:
    path = _slicing_model(tmp_path / "m.onnx", op="NoSuchOperator")
    with pytest.raises(DeployError) as caught:
        ob.OnnxRuntimePredictor(path, provider="cpu")
    line = str(caught.value)
    assert line.startswith(f"{path}: ONNX Runtime cannot load this model (")
    assert "NoSuchOperator" in line and "\n" not in line


def test_resolve_providers_with_the_installed_build_and_with_nothing_usable() -> None:
    assert ob.resolve_providers("cpu") == [CPU]  # this build's list: the CPU provider is in it
    with pytest.raises(DeployError, match="none of Tensorrt.*CPUExecutionProvider is available"):
        ob.resolve_providers("auto", ["AzureExecutionProvider"])


# ------------------------------------------------------------ TensorRT libraries for the provider


def test_provider_major_is_read_from_the_provider_file_else_10(tmp_path: Path) -> None:
    assert ob.provider_tensorrt_major(tmp_path) == 10
    (tmp_path / "libonnxruntime_providers_tensorrt.so").write_bytes(
        b"\x7fELF\0libcudart.so.12\0libnvinfer.so.11\0"
    )
    assert ob.provider_tensorrt_major(tmp_path) == 11


def test_tensorrt_libs_are_found_on_sys_path_by_default_and_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site" / "tensorrt_libs").mkdir(parents=True)
    (tmp_path / "cwd" / "tensorrt_libs").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "none"), str(tmp_path / "site")])
    assert ob.find_tensorrt_libs() == tmp_path / "site" / "tensorrt_libs"
    monkeypatch.chdir(tmp_path / "cwd")
    assert ob.find_tensorrt_libs(["", str(tmp_path / "site")]) == Path("tensorrt_libs")
    assert ob.find_tensorrt_libs([str(tmp_path / "none")]) is None


def _site_with_libs(tmp_path: Path, major: int) -> Path:
    site = tmp_path / "site"
    libs = site / "tensorrt_libs"
    libs.mkdir(parents=True)
    for name in ("nvinfer", "nvinfer_plugin", "nvonnxparser"):
        (libs / f"lib{name}.so.{major}").write_bytes(b"")  # empty: not loadable
    capi = site / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(f"libnvinfer.so.{major}".encode())
    return site


def test_preload_reads_the_installed_providers_major_and_reports_a_library_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = _site_with_libs(tmp_path, 11)
    fake_ort = SimpleNamespace(__file__=str(site / "onnxruntime" / "__init__.py"))
    monkeypatch.setattr(ob, "import_onnxruntime", lambda: fake_ort)
    # the empty files are real paths ctypes cannot load: the first one named in the error
    with pytest.raises(DeployError, match=r"cannot load .*tensorrt_libs/libnvinfer\.so\.11: "):
        ob.preload_tensorrt_libs(search_path=[str(site)])


def test_preload_returns_the_files_it_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = _site_with_libs(tmp_path, 10)
    monkeypatch.setattr(ob.ctypes, "CDLL", lambda path, mode=0: None)
    files = ob.preload_tensorrt_libs(site / "onnxruntime" / "capi", [str(site)])
    assert [f.name for f in files] == [
        "libnvinfer.so.10",
        "libnvinfer_plugin.so.10",
        "libnvonnxparser.so.10",
    ]


def test_first_line_of_onnx_runtimes_fallback_text() -> None:
    text = "*************** EP Error ***************\n\n  EP Error x: no CUDA  \nmore\n"
    assert ob._first_line(text) == "EP Error x: no CUDA"
    assert ob._first_line("  *** banner only ***\n\n") == ""
    assert ob._first_line("") == ""


# --------------------------------------------------- GPU providers, on a fake onnxruntime module


class _FakeBinding:
    def __init__(self, session: _FakeSession) -> None:
        self.session = session

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.session.log.append(("input", name, array.dtype.name))

    def bind_output(self, name: str, device: str) -> None:
        self.session.log.append(("output", name, device))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [np.array([1]), np.zeros((1, 1, 4)), np.ones((1, 1)), np.zeros((1, 1))]


class _FakeSession:
    """An InferenceSession on which the first of `runs` starts; no output is computed."""

    runs: tuple[str, ...] = (CUDA, CPU)
    error: Exception | None = None

    def __init__(self, path: str, options: Any, providers: list[str]) -> None:
        if self.error is not None:
            raise self.error
        self.log: list[tuple] = []
        self._ran = [p for p in providers if p in self.runs]

    def get_providers(self) -> list[str]:
        return self._ran

    def get_inputs(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(name="images", type="tensor(float)", shape=["batch", 3, SIZE, SIZE])
        ]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in ("labels", "scores", "boxes", "num_dets")]

    def io_binding(self) -> _FakeBinding:
        return _FakeBinding(self)

    def run_with_iobinding(self, binding: _FakeBinding) -> None:
        self.log.append(("run",))


@pytest.fixture()
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[_FakeSession]:
    fake = SimpleNamespace(
        get_available_providers=lambda: [TRT, CUDA, CPU],
        SessionOptions=lambda: SimpleNamespace(),
        InferenceSession=_FakeSession,
    )
    monkeypatch.setattr(ob, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(ob, "_HISTORY", ob._ProviderHistory())
    monkeypatch.setattr(ob, "preload_tensorrt_libs", lambda: [])
    monkeypatch.setattr(_FakeSession, "runs", (CUDA, CPU))
    monkeypatch.setattr(_FakeSession, "error", None)
    return _FakeSession


def test_on_cuda_calls_bind_the_input_on_the_host_and_the_outputs_on_the_device(
    tmp_path: Path, fake_ort: type[_FakeSession]
) -> None:
    predictor = ob.OnnxRuntimePredictor(_slicing_model(tmp_path / "m.onnx"), provider="cuda")
    assert predictor.provider == CUDA and predictor.backend_name == "onnxruntime-cuda"
    assert predictor.io_binding is True
    out = predictor(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert predictor._session.log == [
        ("input", "images", "float32"),
        ("output", "num_dets", "cuda"),
        ("output", "boxes", "cuda"),
        ("output", "scores", "cuda"),
        ("output", "labels", "cuda"),
        ("run",),
    ]
    assert out.num_dets.tolist() == [1] and out.scores.tolist() == [[1.0]]
    plain = ob.OnnxRuntimePredictor(tmp_path / "m.onnx", provider="cuda", io_binding=False)
    assert plain.io_binding is False


def test_auto_on_a_tensorrt_build_says_once_which_gpu_provider_did_not_start(
    tmp_path: Path, fake_ort: type[_FakeSession], caplog: pytest.LogCaptureFixture
) -> None:
    path = _slicing_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="deploy.backends.onnxruntime"):
        first = ob.OnnxRuntimePredictor(path, provider="auto")
        second = ob.OnnxRuntimePredictor(path, provider="auto")
    assert first.provider == second.provider == CUDA
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"ONNX Runtime: {TRT} not used (its start-up error is in ONNX Runtime's log above); "
        f"running on {CUDA}"
    ]


def test_explicit_provider_that_falls_back_without_a_message_points_at_the_libraries(
    tmp_path: Path, fake_ort: type[_FakeSession]
) -> None:
    fake_ort.runs = (CPU,)
    with pytest.raises(
        DeployError,
        match=f"asked for {CUDA} but ONNX Runtime fell back to {CPU} .check the CUDA/TensorRT",
    ):
        ob.OnnxRuntimePredictor(_slicing_model(tmp_path / "m.onnx"), provider="cuda")


def test_a_session_error_without_text_is_named_by_its_type(
    tmp_path: Path, fake_ort: type[_FakeSession]
) -> None:
    fake_ort.error = RuntimeError("  ")
    with pytest.raises(DeployError, match=r"cannot load this model \(RuntimeError\)$"):
        ob.OnnxRuntimePredictor(_slicing_model(tmp_path / "m.onnx"), provider="cuda")
    fake_ort.error = RuntimeError("first line\nsecond line")
    with pytest.raises(DeployError, match=r"cannot load this model \(first line\)$"):
        ob.OnnxRuntimePredictor(tmp_path / "m.onnx", provider="cuda")


def test_the_default_provider_is_auto_which_runs_on_what_this_build_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    monkeypatch.setattr(ob, "_HISTORY", ob._ProviderHistory())
    predictor = ob.OnnxRuntimePredictor(_slicing_model(tmp_path / "m.onnx"))
    assert predictor.provider in onnxruntime.get_available_providers()
    assert list(ob._HISTORY.ran.values()) == [predictor.providers_ran]  # only `auto` remembers
