"""deploy/backends/tensorrt.py and cuda_memory.py on the CPU, through stand-ins for the packages.

FakeCudart follows cuda-python's runtime module (every call returns (status, values...)) and
backs "device" memory with real host memory, so copies really move bytes; stream capture records
the work enqueued while capturing and a graph launch replays it, as CUDA does. _fake_tensorrt
follows the TensorRT 10 tensor-name API, and _fake_pycuda pycuda.driver: each implements only
names the backend calls (tests/export/test_gpu_api_surface.py checks those exist in the real packages).
The fake engine computes detections from its input pixels, so what a call returns shows which
bytes went where. The checks are the backend's own logic: buffer sizes and dtypes, binding
addresses, output views for a smaller batch, error lines, teardown.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import logging
import re
import sys
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import deploy.backends.cuda_memory as cm
import deploy.backends.tensorrt as tb
from common.contract import EngineInfo
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata
from export.tensorrt import write_engine_metadata

SIZE = 8
DETS = 3
MAX_BATCH = 4
VERSION = "10.16.1.11"


# ------------------------------------------------------------------------ fake cuda-python


class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-python's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureInvalidated = 901


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart:
    """cuda.bindings.runtime: real host memory as device memory, calls logged by name."""

    cudaError_t = cudaError_t
    cudaStreamNonBlocking = 1

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1
        cudaStreamCaptureModeRelaxed = 2

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.fail: dict[str, cudaError_t] = {}  # call name -> the status it returns
        self.memory: dict[int, Any] = {}
        self.capturing: list[Callable[[], None]] | None = None
        self.graphs = 0

    def _status(self, name: str, *args: Any) -> cudaError_t:
        self.log.append((name, *args))
        return self.fail.get(name, cudaError_t.cudaSuccess)

    def _buffer(self, nbytes: int) -> int:
        buffer = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    def enqueue(self, work: Callable[[], None]) -> None:
        """Run `work` now, or record it while a stream capture is open."""
        if self.capturing is None:
            work()
        else:
            self.capturing.append(work)

    def cudaGetErrorName(self, status: cudaError_t) -> tuple:
        return cudaError_t.cudaSuccess, status.name.encode()

    def cudaGetLastError(self) -> tuple:
        return (self._status("cudaGetLastError"),)

    def cudaSetDevice(self, device: int) -> tuple:
        return (self._status("cudaSetDevice", device),)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        props = SimpleNamespace(name=b"NVIDIA H200\0\0\0\0", major=9, minor=0)
        return self._status("cudaGetDeviceProperties", device), props

    def cudaMalloc(self, nbytes: int) -> tuple:
        return self._status("cudaMalloc", nbytes), self._buffer(nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple:
        return self._status("cudaMallocHost", nbytes), self._buffer(nbytes)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple:
        return self._status("cudaStreamCreateWithFlags", flags), FakeStream(77)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any, stream: int) -> tuple:
        self.enqueue(lambda: ctypes.memmove(dst, src, nbytes))
        return (self._status("cudaMemcpyAsync", kind.name, nbytes, stream),)

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        return (self._status("cudaStreamSynchronize", stream),)

    def cudaStreamBeginCapture(self, stream: int, mode: Any) -> tuple:
        status = self._status("cudaStreamBeginCapture", stream, mode.name)
        if status == cudaError_t.cudaSuccess:
            self.capturing = []
        return (status,)

    def cudaStreamEndCapture(self, stream: int) -> tuple:
        status = self._status("cudaStreamEndCapture", stream)
        work, self.capturing = self.capturing, None
        if work is None:  # the stream is not capturing
            return cudaError_t.cudaErrorIllegalState, None
        if status != cudaError_t.cudaSuccess:
            return status, None
        self.graphs += 1
        return status, SimpleNamespace(name=f"graph{self.graphs}", work=work)

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple:
        status = self._status("cudaGraphInstantiate", graph.name, flags)
        return status, SimpleNamespace(name=f"exec-{graph.name}", work=graph.work)

    def cudaGraphLaunch(self, graph_exec: Any, stream: int) -> tuple:
        for work in graph_exec.work:
            work()
        return (self._status("cudaGraphLaunch", graph_exec.name, stream),)

    def cudaGraphDestroy(self, graph: Any) -> tuple:
        return (self._status("cudaGraphDestroy", graph.name),)

    def cudaGraphExecDestroy(self, graph_exec: Any) -> tuple:
        return (self._status("cudaGraphExecDestroy", graph_exec.name),)

    def cudaStreamDestroy(self, stream: Any) -> tuple:
        return (self._status("cudaStreamDestroy", int(stream)),)

    def cudaFree(self, pointer: int) -> tuple:
        return (self._status("cudaFree", pointer),)

    def cudaFreeHost(self, pointer: int) -> tuple:
        return (self._status("cudaFreeHost", pointer),)

    def calls(self, name: str) -> list[tuple]:
        return [entry[1:] for entry in self.log if entry[0] == name]


# -------------------------------------------------------------------------- fake TensorRT


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 12


NPTYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32}
NPTYPES[DataType.INT64] = np.int64

# What a detection engine built by the exporter exposes (TensorRT's NMS counts are int32).
TENSORS = [
    ("images", TensorIOMode.INPUT, DataType.FLOAT),
    ("num_dets", TensorIOMode.OUTPUT, DataType.INT32),
    ("boxes", TensorIOMode.OUTPUT, DataType.FLOAT),
    ("scores", TensorIOMode.OUTPUT, DataType.HALF),
    ("labels", TensorIOMode.OUTPUT, DataType.INT32),
]


def _output_shapes(batch: int) -> dict[str, tuple[int, ...]]:
    return {
        "images": (batch, 3, SIZE, SIZE),
        "num_dets": (batch, 1),
        "boxes": (batch, DETS, 4),
        "scores": (batch, DETS),
        "labels": (batch, DETS),
    }


class FakeContext:
    """IExecutionContext. Image b's detections are read from its pixels: num_dets from
    channel 0 pixel (0, 0), box j from channel 0 pixels 8+4j..8+4j+3 (row-major, from row 1), score j from channel 1
    row 0 pixel j, label j from channel 2 row 0 pixel j."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.batch: int | None = None
        self.addresses: dict[str, int] = {}
        self.shapes_set: list[int] = []
        self.refuse_batch: int | None = None
        self.refuse_address = False
        self.execute_ok = True
        self.raise_while_capturing: Exception | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        assert name == "images" and tuple(shape[1:]) == (3, SIZE, SIZE)
        if not 1 <= shape[0] <= MAX_BATCH or shape[0] == self.refuse_batch:
            return False
        self.batch = shape[0]
        self.shapes_set.append(shape[0])
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return _output_shapes(-1 if self.batch is None else self.batch)[name]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        if self.refuse_address:
            return False
        self.addresses[name] = pointer
        return True

    def _array(self, name: str) -> np.ndarray:
        dtype = np.dtype(NPTYPES[self.engine.dtypes[name]])
        shape = self.get_tensor_shape(name)
        count = int(np.prod(shape))
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _run(self) -> None:
        images = self._array("images")
        self._array("num_dets")[:, 0] = images[:, 0, 0, 0]
        flat = images[:, 0].reshape(len(images), -1)
        self._array("boxes")[:] = flat[:, SIZE : SIZE + DETS * 4].reshape(-1, DETS, 4)
        self._array("scores")[:] = images[:, 1, 0, :DETS]
        self._array("labels")[:] = images[:, 2, 0, :DETS]

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.raise_while_capturing is not None and self.engine.cudart.capturing is not None:
            raise self.raise_while_capturing
        if self.execute_ok:
            self.engine.cudart.enqueue(self._run)
        return self.execute_ok


class FakeEngine:
    """ICudaEngine with one optimization profile for batches 1..MAX_BATCH."""

    def __init__(self, cudart: FakeCudart, tensors: list = TENSORS, profile_size: int = SIZE):
        self.cudart = cudart
        self.names = [name for name, _, _ in tensors]
        self.modes = {name: mode for name, mode, _ in tensors}
        self.dtypes = {name: dtype for name, _, dtype in tensors}
        self.profile_size = profile_size
        self.context: FakeContext | None = FakeContext(self)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        shapes = [(b, 3, self.profile_size, self.profile_size) for b in (1, 2, MAX_BATCH)]
        return shapes

    def create_execution_context(self) -> FakeContext | None:
        return self.context


def _fake_tensorrt(engine: FakeEngine | None) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            self.base_initialized = True

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            if not getattr(logger, "base_initialized", False):  # pybind11's own check
                raise TypeError("tensorrt.ILogger.__init__() must be called when overriding")

        def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
            return engine if plan == b"plan" else None

    trt.ILogger, trt.Runtime = ILogger, Runtime
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.nptype = lambda dtype: NPTYPES[dtype]
    return trt


@pytest.fixture()
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """cuda-python installed as `cuda.bindings.runtime`, backed by FakeCudart."""
    runtime = FakeCudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    return runtime


@pytest.fixture()
def engine(cudart: FakeCudart, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(fake))
    return fake


def _engine_file(tmp_path: Path, plan: bytes = b"plan", **info: Any) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(plan)
    metadata = ModelMetadata(class_names=["a", "b", "c"], category_ids=[1, 2, 3], img_size=SIZE)
    values = {"tensorrt_version": VERSION, "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
    values |= {"precision": "fp16", "max_batch": MAX_BATCH} | info
    write_engine_metadata(path, metadata.to_props(), EngineInfo(**values))
    return path


def _images(batch: int, first: int = 0) -> np.ndarray:
    """Image b (numbered from `first`) holds b+1 detections whose numbers start at 10 * (b+1)."""
    images = np.zeros((batch, 3, SIZE, SIZE), np.float32)
    for b in range(batch):
        n = first + b + 1
        images[b, 0, 0, 0] = min(n, DETS)
        images[b, 0].reshape(-1)[SIZE : SIZE + DETS * 4] = 10 * n + np.arange(DETS * 4)
        images[b, 1, 0, :DETS] = [0.5, 0.25, 0.125]
        images[b, 2, 0, :DETS] = [n % 3, (n + 1) % 3, (n + 2) % 3]
    return images


def _check_detections(out: Any, batch: int, first: int = 0) -> None:
    for b in range(batch):
        n = first + b + 1
        assert out.num_dets[b] == min(n, DETS)
        assert out.boxes[b].tolist() == (10 * n + np.arange(DETS * 4)).reshape(DETS, 4).tolist()
        assert out.scores[b].tolist() == [0.5, 0.25, 0.125]
        assert out.labels[b].tolist() == [n % 3, (n + 1) % 3, (n + 2) % 3]
    assert out.num_dets.shape == (batch,) and out.num_dets.dtype == np.int64
    assert out.boxes.shape == (batch, DETS, 4) and out.boxes.dtype == np.float32
    assert out.scores.dtype == np.float32 and out.labels.dtype == np.int64


# -------------------------------------------------------------------------------- the runtime


def test_buffers_are_sized_for_the_largest_batch_in_each_tensors_dtype(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path), cuda_api="cuda-python")
    assert predictor.cuda_graph_status == "off" and not predictor.cuda_graph  # the default
    assert (predictor.max_batch, predictor.precision, predictor.backend_name) == (
        4,
        "fp16",
        "tensorrt",
    )
    assert predictor.cuda_api == "cuda-python"
    # images fp32 (4,3,8,8), num_dets int32 (4,1), boxes fp32 (4,3,4), scores fp16, labels int32
    sizes = [4 * 3 * 8 * 8 * 4, 4 * 1 * 4, 4 * 3 * 4 * 4, 4 * 3 * 2, 4 * 3 * 4]
    assert [n for (n,) in cudart.calls("cudaMalloc")] == sizes
    assert [n for (n,) in cudart.calls("cudaMallocHost")] == sizes
    context = engine.context
    assert context is not None and context.shapes_set == [4]  # output shapes read at batch 4
    assert list(context.addresses) == ["images", "num_dets", "boxes", "scores", "labels"]
    assert len(set(context.addresses.values())) == 5
    assert set(context.addresses.values()) <= set(cudart.memory)
    assert cudart.calls("cudaSetDevice") == [(0,)]
    assert cudart.calls("cudaStreamCreateWithFlags") == [(1,)]  # non-blocking


def test_each_call_sets_its_batch_and_reads_outputs_at_that_batchs_shape(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path))
    _check_detections(predictor(_images(4)), 4)
    cudart.log.clear()
    _check_detections(predictor(_images(2, first=4)), 2, first=4)
    copies = cudart.calls("cudaMemcpyAsync")
    assert copies == [
        ("cudaMemcpyHostToDevice", 2 * 3 * 8 * 8 * 4, 77),
        ("cudaMemcpyDeviceToHost", 2 * 1 * 4, 77),
        ("cudaMemcpyDeviceToHost", 2 * 3 * 4 * 4, 77),
        ("cudaMemcpyDeviceToHost", 2 * 3 * 2, 77),
        ("cudaMemcpyDeviceToHost", 2 * 3 * 4, 77),
    ]
    assert cudart.calls("cudaStreamSynchronize") == [(77,)]
    assert engine.context is not None and engine.context.shapes_set == [4, 4, 2]
    _check_detections(predictor(_images(1, first=1)), 1, first=1)


def test_calls_outside_the_engines_batch_range_or_shape_are_refused(
    tmp_path: Path, engine: FakeEngine
) -> None:
    path = _engine_file(tmp_path)
    predictor = tb.TensorRTPredictor(path)
    for batch in (0, 5):
        with pytest.raises(
            DeployError, match=f"{path}: batch {batch} outside the engine's range 1..4"
        ):
            predictor(np.zeros((batch, 3, SIZE, SIZE), np.float32))
    for shape in [(3, SIZE, SIZE), (1, 1, SIZE, SIZE), (1, 3, SIZE, 4)]:
        with pytest.raises(DeployError, match=r"expected input \(B, 3, 8, 8\), got"):
            predictor(np.zeros(shape, np.float32))
    assert engine.context is not None
    engine.context.refuse_batch = 3
    with pytest.raises(
        DeployError, match=r"rejected input shape \(3, 3, 8, 8\) .engine batch range 1..4"
    ):
        predictor(np.zeros((3, 3, SIZE, SIZE), np.float32))
    engine.context.execute_ok = False
    with pytest.raises(DeployError, match=f"{path}: TensorRT execute_async_v3 failed"):
        predictor(np.zeros((2, 3, SIZE, SIZE), np.float32))


def test_close_frees_every_allocation_once(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path))
    assert engine.context is not None
    device = sorted(engine.context.addresses.values())  # the five cudaMalloc'd buffers
    host = sorted(binding.host.ctypes.data for binding in predictor._bindings.values())
    cudart.log.clear()
    predictor.close()
    predictor.close()  # a second close (and __del__ later) frees nothing twice
    assert cudart.calls("cudaStreamDestroy") == [(77,)]
    assert sorted(p for (p,) in cudart.calls("cudaFree")) == device
    assert sorted(p for (p,) in cudart.calls("cudaFreeHost")) == host
    assert len(device) == len(host) == 5
    assert predictor._cuda is None and predictor._context is None and predictor._engine is None


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "no-tensorrt",
            "running a TensorRT engine needs an NVIDIA GPU with TensorRT, which is not",
        ),
        ("no-cuda", "cuda-python and pycuda not installed: the TensorRT runtime needs CUDA Python"),
        ("no-device", "no usable CUDA device 0 .CUDA cudaSetDevice failed: cudaErrorInvalidDevice"),
        ("other-plan", "TensorRT 10.16.1.11 cannot deserialize this engine"),
        ("no-context", "TensorRT could not create an execution context"),
        ("two-inputs", r"expected one input named 'images', got \['images', 'scale'\]"),
        ("no-labels", r"missing outputs \['labels'\] .the model has \['images', 'num_dets'"),
        ("profile-16", r"engine input \(4, 3, 16, 16\) does not match the metadata's image size 8"),
        ("address", "TensorRT rejected the address for 'images'"),
        (
            "other-gpu",
            "engine built for NVIDIA A100 .compute capability 8.0., this GPU is NVIDIA H200",
        ),
    ],
)
def test_engines_that_cannot_run_here_are_one_line_naming_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cudart: FakeCudart,
    engine: FakeEngine,
    setup: str,
    message: str,
) -> None:
    plan, info = b"plan", {}
    if setup == "no-tensorrt":
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    elif setup == "no-cuda":
        for name in ("cuda", "cuda.bindings", "pycuda"):
            monkeypatch.setitem(sys.modules, name, None)
    elif setup == "no-device":
        cudart.fail["cudaSetDevice"] = cudaError_t.cudaErrorInvalidDevice
    elif setup == "other-plan":
        plan = b"another plan"
    elif setup == "no-context":
        engine.context = None
    elif setup == "two-inputs":
        tensors = [*TENSORS, ("scale", TensorIOMode.INPUT, DataType.FLOAT)]
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(FakeEngine(cudart, tensors)))
    elif setup == "no-labels":
        tensors = TENSORS[:-1]
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(FakeEngine(cudart, tensors)))
    elif setup == "profile-16":
        wide = FakeEngine(cudart, profile_size=16)
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(wide))
    elif setup == "address":
        assert engine.context is not None
        engine.context.refuse_address = True
    elif setup == "other-gpu":
        info = {"gpu_name": "NVIDIA A100", "compute_capability": "8.0"}
    path = _engine_file(tmp_path, plan, **info)
    with pytest.raises(DeployError) as caught:
        tb.TensorRTPredictor(path, cuda_api="auto")
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and "\n" not in line
    assert re.search(message, line), line


def test_close_and_garbage_collection_drop_the_context_and_free_the_memory(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path), cuda_graph=True)
    context = weakref.ref(engine.context)
    engine.context = None  # from here only the predictor holds it
    predictor.close()
    gc.collect()
    assert context() is None  # neither the predictor nor its graph launcher keeps it
    assert predictor.cuda_graph_status == "pending"  # the status outlives close
    cudart.log.clear()
    engine.context = FakeContext(engine)
    tb.TensorRTPredictor(_engine_file(tmp_path))  # dropped at once: __del__ closes it
    gc.collect()
    assert len(cudart.calls("cudaFree")) == len(cudart.calls("cudaMalloc")) == 5
    assert len(cudart.calls("cudaFreeHost")) == 5


def test_an_empty_tensor_still_gets_a_one_byte_device_buffer(cudart: FakeCudart) -> None:
    binding = tb._Binding("boxes", np.dtype(np.float32), (4, 0, 4), cm.open_cuda("cuda-python"))
    assert binding.host.shape == (4, 0, 4)
    assert cudart.calls("cudaMalloc") == [(1,)]  # cudaMalloc(0) would give a null address


def test_a_missing_engine_file_is_refused_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="nope.engine: engine file not found"):
        tb.TensorRTPredictor(tmp_path / "nope.engine")


def test_start_failure_without_an_exception_names_the_factory_and_the_driver() -> None:
    def Runtime(logger: object) -> None:  # noqa: N802 (TensorRT's name)
        return None

    with pytest.raises(DeployError) as caught:
        tb.start_tensorrt(Runtime, None, "10.3")
    assert str(caught.value) == (
        f"TensorRT 10.3 could not start: Runtime() failed; likely cause: {cm.NO_DRIVER_HINT} "
        "(TensorRT's cu13 wheels need driver >= 580; see nvidia-smi)"
    )

    class Unnamed:  # a callable without __name__ (a pybind factory object, say)
        def __call__(self, logger: object) -> None:
            return None

    with pytest.raises(DeployError, match="^TensorRT 10.3 could not start: TensorRT.. failed;"):
        tb.start_tensorrt(Unnamed(), None, "10.3")
    assert tb.start_tensorrt(lambda logger: ("runtime", logger), "log", "10.3") == (
        "runtime",
        "log",
    )


def test_tensorrt_log_levels_and_the_last_error_kept_for_graph_fallbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trt = _fake_tensorrt(None)
    trt_log = tb._python_logger(trt)
    assert isinstance(trt_log, trt.ILogger) and trt_log.last_error is None
    with caplog.at_level(logging.DEBUG, logger="deploy.backends.tensorrt"):
        trt_log.log(Severity.WARNING, "w")
        assert trt_log.last_error is None
        trt_log.log(Severity.ERROR, "e")
        assert trt_log.last_error == "e"
        trt_log.log(Severity.INTERNAL_ERROR, "ie")
        assert trt_log.last_error == "ie"
        for severity, text in [(Severity.INFO, "i"), (Severity.VERBOSE, "v"), (99, "odd")]:
            trt_log.log(severity, text)
    assert trt_log.last_error == "ie"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "TensorRT: w"),
        (logging.ERROR, "TensorRT: e"),
        (logging.ERROR, "TensorRT: ie"),
        (logging.DEBUG, "TensorRT: i"),
        (logging.DEBUG, "TensorRT: v"),
        (logging.INFO, "TensorRT: odd"),
    ]


# ------------------------------------------------------------------- CUDA graphs, cuda-python


def test_batch_1_calls_replay_a_captured_graph_that_computes_the_new_input(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="deploy.backends.tensorrt"):
        predictor = tb.TensorRTPredictor(_engine_file(tmp_path), cuda_graph=True)
    assert "batch <= 4, cuda-python, CUDA graph for batch 1" in caplog.text
    assert predictor.cuda_graph and predictor.cuda_graph_status == "pending"
    for first in range(3):  # each replay must see its own image
        _check_detections(predictor(_images(1, first=first)), 1, first=first)
    assert predictor.cuda_graph_status == "replayed"
    assert cudart.calls("cudaStreamBeginCapture") == [(77, "cudaStreamCaptureModeThreadLocal")]
    assert cudart.calls("cudaGraphInstantiate") == [("graph1", 0)]
    assert cudart.calls("cudaGraphLaunch") == [("exec-graph1", 77)] * 3
    _check_detections(predictor(_images(2)), 2)  # another batch size: the graph is dropped
    assert cudart.calls("cudaGraphExecDestroy") == [("exec-graph1",)]
    assert cudart.calls("cudaGraphDestroy") == [("graph1",)]
    predictor(_images(1))
    cudart.log.clear()
    predictor.close()
    assert cudart.calls("cudaGraphExecDestroy") == [("exec-graph2",)]
    assert cudart.calls("cudaGraphDestroy") == [("graph2",)]


def test_a_graph_that_fails_to_instantiate_is_freed_and_calls_run_plainly(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    cudart.fail["cudaGraphInstantiate"] = cudaError_t.cudaErrorStreamCaptureInvalidated
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path), cuda_graph=True)
    _check_detections(predictor(_images(1)), 1)
    _check_detections(predictor(_images(1, first=1)), 1, first=1)
    assert predictor.cuda_graph_status == (
        "fallback: CUDA cudaGraphInstantiate failed: cudaErrorStreamCaptureInvalidated"
    )
    assert not predictor.cuda_graph
    assert cudart.calls("cudaGraphDestroy") == [("graph1",)]  # the captured, never launched one
    assert cudart.calls("cudaGraphLaunch") == []
    assert cudart.calls("cudaGetLastError") == [()]  # the sticky error cleared once


def test_an_exception_while_capturing_ends_the_capture_and_propagates(
    tmp_path: Path, cudart: FakeCudart, engine: FakeEngine
) -> None:
    predictor = tb.TensorRTPredictor(_engine_file(tmp_path), cuda_graph=True)
    assert engine.context is not None
    engine.context.raise_while_capturing = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        predictor(_images(1))
    assert cudart.capturing is None  # ended, so the stream takes plain launches again
    assert cudart.calls("cudaGraphDestroy") == [("graph1",)]
    assert len(cudart.calls("cudaGetLastError")) == 1
    engine.context.raise_while_capturing = None
    _check_detections(predictor(_images(2)), 2)


def test_abort_capture_frees_a_graph_it_ends_and_clears_the_error(cudart: FakeCudart) -> None:
    cuda = cm.open_cuda("cuda-python")
    stream = cuda.stream()
    cuda.begin_capture(stream)
    cuda.abort_capture(stream)
    assert cudart.calls("cudaGraphDestroy") == [("graph1",)]
    cudart.fail["cudaStreamEndCapture"] = cudaError_t.cudaErrorStreamCaptureInvalidated
    cuda.begin_capture(stream)
    cuda.abort_capture(stream)
    assert cudart.calls("cudaGraphDestroy") == [("graph1",)]  # nothing came back to free
    assert len(cudart.calls("cudaGetLastError")) == 2


# ----------------------------------------------------------------------- cuda-python details


def test_cuda_python_device_info_and_failing_calls(
    cudart: FakeCudart, caplog: pytest.LogCaptureFixture
) -> None:
    cuda = cm.open_cuda("cuda-python", device=1)
    assert cuda.name == "cuda-python" and cudart.calls("cudaSetDevice") == [(1,)]
    assert cuda.device_info() == ("NVIDIA H200", "9.0")
    assert cudart.calls("cudaGetDeviceProperties") == [(1,)]
    cudart.fail["cudaMalloc"] = cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(DeployError, match="^CUDA cudaMalloc failed: cudaErrorMemoryAllocation$"):
        cuda.malloc(16)
    host = cuda.host_empty((2, 3), np.float16)
    assert host.shape == (2, 3) and host.dtype == np.float16
    assert cudart.calls("cudaMallocHost") == [(12,)]
    assert cuda.host_empty((0, 4), np.float32).shape == (0, 4)  # asks CUDA for one byte
    assert cudart.calls("cudaMallocHost")[-1] == (1,)
    cudart.fail = {"cudaFreeHost": cudaError_t.cudaErrorInvalidValue}
    with caplog.at_level(logging.WARNING, logger="deploy.backends.cuda_memory"):
        cuda.close()
    assert caplog.text.count("CUDA cudaFreeHost failed at teardown") == 2


def test_cuda_python_before_12_6_is_imported_as_cuda_cudart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = FakeCudart()
    cuda = types.ModuleType("cuda")
    cuda.cudart = runtime  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", runtime)
    assert cm.open_cuda("auto").name == "cuda-python"
    assert runtime.calls("cudaSetDevice") == [(0,)]


# ------------------------------------------------------------------------------ fake pycuda


class FakeDriverError(Exception):
    pass


class FakeAllocation:
    def __init__(self, nbytes: int) -> None:
        self.buffer = ctypes.create_string_buffer(nbytes)

    def __int__(self) -> int:
        return ctypes.addressof(self.buffer)


def _fake_pycuda(log: list[tuple], fail: set[str], created: list[weakref.ref]) -> types.ModuleType:
    """pycuda.driver: host memory as device memory; `fail` names the calls that raise;
    `created` holds weak references to every allocation and stream made."""
    drv = types.ModuleType("pycuda.driver")
    drv.Error = FakeDriverError

    def call(name: str, *args: Any) -> None:
        log.append((name, *args))
        if name in fail:
            raise FakeDriverError(f"{name}: cuda error")

    class Context:
        def push(self) -> None:
            call("push")

        def pop(self) -> None:
            call("pop")

    class Device:
        def __init__(self, ordinal: int) -> None:
            call("Device", ordinal)

        def compute_capability(self) -> tuple[int, int]:
            return 8, 9

        def name(self) -> str:
            return "NVIDIA L4 "

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        handle = 55

        def __init__(self) -> None:
            call("Stream")
            created.append(weakref.ref(self))

        def synchronize(self) -> None:
            call("Stream.synchronize")

    def mem_alloc(nbytes: int) -> FakeAllocation:
        call("mem_alloc", nbytes)
        allocation = FakeAllocation(nbytes)
        created.append(weakref.ref(allocation))
        return allocation

    def pagelocked_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        call("pagelocked_empty", tuple(shape), np.dtype(dtype).name)
        return np.empty(shape, dtype)

    def memcpy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
        call("memcpy_htod_async", src.nbytes, stream.handle)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dst: np.ndarray, src: int, stream: Stream) -> None:
        call("memcpy_dtoh_async", dst.nbytes, stream.handle)
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)

    drv.init = lambda: call("init")
    drv.Device, drv.Stream, drv.mem_alloc, drv.pagelocked_empty = (
        Device,
        Stream,
        mem_alloc,
        pagelocked_empty,
    )
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return drv


CREATED: list[weakref.ref] = []


@pytest.fixture()
def pycuda_log(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], set[str]]:
    """pycuda installed (and cuda-python not); returns (call log, names of calls that fail)."""
    log: list[tuple] = []
    fail: set[str] = set()
    CREATED.clear()
    drv = _fake_pycuda(log, fail, CREATED)
    package = types.ModuleType("pycuda")
    package.driver = drv  # type: ignore[attr-defined]
    for name in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return log, fail


def test_pycuda_runs_the_engine_and_cannot_capture_graphs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pycuda_log: tuple[list[tuple], set[str]],
) -> None:
    log, _ = pycuda_log
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(FakeEngine(FakeCudart())))
    path = _engine_file(tmp_path, gpu_name="NVIDIA L4", compute_capability="8.9")
    predictor = tb.TensorRTPredictor(path, cuda_api="auto", cuda_graph=True, device=2)
    assert predictor.cuda_api == "pycuda"
    assert log[:3] == [("init",), ("Device", 2), ("push",)]
    assert [e[1] for e in log if e[0] == "mem_alloc"] == [3072, 16, 192, 24, 48]
    assert ("pagelocked_empty", (4, 3), "float16") in log  # scores, in the engine's dtype
    log.clear()
    _check_detections(predictor(_images(1)), 1)
    assert log[0] == ("memcpy_htod_async", 1 * 3 * 8 * 8 * 4, 55)
    assert predictor.cuda_graph_status == (
        "fallback: CUDA graph capture needs cuda-python; pass cuda_api='cuda-python'"
    )
    log.clear()
    _check_detections(predictor(_images(2, first=1)), 2, first=1)
    assert log == [
        ("memcpy_htod_async", 2 * 3 * 8 * 8 * 4, 55),
        ("memcpy_dtoh_async", 2 * 1 * 4, 55),
        ("memcpy_dtoh_async", 2 * 3 * 4 * 4, 55),
        ("memcpy_dtoh_async", 2 * 3 * 2, 55),
        ("memcpy_dtoh_async", 2 * 3 * 4, 55),
        ("Stream.synchronize",),  # the outputs are read only after the stream finished
    ]
    predictor.close()
    assert log[-1] == ("pop",)


def test_pycuda_failures_are_one_line(
    pycuda_log: tuple[list[tuple], set[str]], caplog: pytest.LogCaptureFixture
) -> None:
    log, fail = pycuda_log
    fail.add("init")
    with pytest.raises(DeployError, match=r"^CUDA \(pycuda\) cannot open device 0: init: cuda"):
        cm.open_cuda("pycuda")
    fail.clear()
    cuda = cm.open_cuda("pycuda")
    assert cuda.device_info() == ("NVIDIA L4", "8.9")
    fail.add("mem_alloc")
    with pytest.raises(DeployError, match=r"^CUDA \(pycuda\) mem_alloc failed: mem_alloc: cuda"):
        cuda.malloc(8)
    fail.add("pop")
    with caplog.at_level(logging.WARNING, logger="deploy.backends.cuda_memory"):
        cuda.close()
    assert "pycuda: popping the context failed at teardown: pop: cuda error" in caplog.text
    for graph_call in (cuda.end_capture, lambda s: cuda.launch("g", s)):
        with pytest.raises(DeployError, match="CUDA graph capture needs cuda-python"):
            graph_call(55)


@pytest.mark.parametrize(
    ("name", "use"),
    [
        ("pagelocked_empty", lambda cuda, stream: cuda.host_empty((2,), np.float32)),
        ("Stream", lambda cuda, stream: cuda.stream()),
        ("memcpy_htod_async", lambda cuda, stream: cuda.h2d(cuda.malloc(4), np.ones(1), stream)),
        ("memcpy_dtoh_async", lambda cuda, stream: cuda.d2h(np.ones(1), cuda.malloc(8), stream)),
        ("Stream.synchronize", lambda cuda, stream: cuda.synchronize(stream)),
    ],
)
def test_each_failing_pycuda_call_is_named(
    pycuda_log: tuple[list[tuple], set[str]], name: str, use: Callable[[Any, int], Any]
) -> None:
    _, fail = pycuda_log
    cuda = cm.open_cuda("pycuda")
    stream = cuda.stream()
    fail.add(name)
    with pytest.raises(DeployError, match=f"^CUDA \\(pycuda\\) {name} failed: {name}: cuda error$"):
        use(cuda, stream)


def test_pycuda_close_releases_its_allocations_and_streams(
    pycuda_log: tuple[list[tuple], set[str]],
) -> None:
    cuda = cm.PyCuda()  # device 0 unless told
    assert pycuda_log[0][:2] == [("init",), ("Device", 0)]
    cuda.malloc(16)
    cuda.stream()
    assert len(CREATED) == 2 and all(ref() is not None for ref in CREATED)
    cuda.close()
    gc.collect()
    assert all(ref() is None for ref in CREATED)  # pycuda frees memory when the objects go


def test_the_defaults_open_cuda_python_on_device_0(cudart: FakeCudart) -> None:
    assert cm.open_cuda().name == "cuda-python"
    cm.CudaPython()
    assert cudart.calls("cudaSetDevice") == [(0,), (0,)]


def test_a_model_opened_with_no_settings_runs_cuda_python_without_a_graph(
    engine: FakeEngine, tmp_path: Path
) -> None:
    """Detector.load and a bare open_deployed run an engine as `pipeline eval` does by default:
    the CUDA bindings found (cuda-python here), plain launches (no CUDA graph)."""
    from deploy.runtimes import open_deployed

    predictor = open_deployed(_engine_file(tmp_path))
    assert predictor.cuda_api == "cuda-python"
    assert predictor.cuda_graph_status == "off"
