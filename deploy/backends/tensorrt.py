"""TensorRT predictor: a `.engine` built by `pipeline export --trt` -> the predictor contract.

The tensor-name API of TensorRT 10 and 11 (num_io_tensors, set_input_shape, set_tensor_address,
execute_async_v3). Device buffers, pinned host buffers, one stream and the copies go through
deploy/backends/cuda_memory.py (cuda-python, or pycuda), never torch. Buffers are allocated once
for the engine's largest batch; each call sets the input shape and reads the output shapes back
from the execution context. With `cuda_graph=True`, batch-1 calls replay a captured CUDA graph
(less launch overhead for latency); an engine whose kernels cannot be captured (the exported
NonMaxSuppression has a data-dependent output size) falls back to plain launches with a warning.
`cuda_graph_status` records which of the two happened, and the eval report carries it.

Importing this module needs neither TensorRT nor CUDA: both are loaded by the constructor, which
raises DeployError naming what is missing and how to install it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, OUTPUT_NAMES, Detections
from deploy.backends.base import EngineBackend, RuntimeSettings
from deploy.backends.cuda_memory import NO_DRIVER_HINT, one_line, open_cuda
from deploy.engine_metadata import EngineInfo, check_engine_compat, read_engine_metadata
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[gpu]', or use the Docker image"

# What `cuda_graph_status` (and the eval report's "cuda_graph") says; a fallback reads
# f"{GRAPH_FALLBACK}<why>".
GRAPH_OFF = "off"  # not asked for
GRAPH_PENDING = "pending"  # asked for, no batch-1 call yet
GRAPH_REPLAYED = "replayed"  # captured, and every batch-1 call since launched the graph
GRAPH_FALLBACK = "fallback: "  # capture failed; plain launches


def import_tensorrt(what: str = "running a TensorRT engine") -> Any:
    """The tensorrt module, or DeployError saying it is missing (a broken install counts too)."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise DeployError(
            f"{what} needs an NVIDIA GPU with TensorRT, which is not installed here "
            f"({INSTALL_HINT})"
        ) from exc
    return tensorrt


def start_tensorrt(factory: Any, trt_logger: Any, version: str) -> Any:
    """`trt.Runtime(logger)` / `trt.Builder(logger)`, or one DeployError line naming the cause.

    When TensorRT cannot initialize CUDA, pybind raises TypeError ("factory function returned
    nullptr") instead of saying why; nearly always the driver is missing or too old for the CUDA
    this TensorRT was built with.
    """
    try:
        created = factory(trt_logger)
    except TypeError as exc:
        raise DeployError(tensorrt_start_failure(factory, version, exc)) from exc
    if created is None:
        raise DeployError(tensorrt_start_failure(factory, version, None))
    return created


def tensorrt_start_failure(factory: Any, version: str, exc: BaseException | None) -> str:
    name = getattr(factory, "__name__", "TensorRT")
    said = f" ({one_line(exc)})" if exc is not None else ""
    return (
        f"TensorRT {version} could not start: {name}() failed{said}; likely cause: {NO_DRIVER_HINT} "
        "(TensorRT's cu13 wheels need driver >= 580; see nvidia-smi)"
    )


def _python_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to `logging` (TensorRT keeps it for the runtime's life)."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error: str | None = None  # why a CUDA graph capture failed, if TensorRT says

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.last_error = str(msg)
            logger.log(level, "TensorRT: %s", msg)

    return _Logger()


class _Binding:
    """One IO tensor: its device buffer (sized for the largest batch) and pinned host mirror."""

    def __init__(self, name: str, dtype: np.dtype, max_shape: tuple[int, ...], cuda: Any) -> None:
        self.name = name
        self.host = cuda.host_empty(max_shape, dtype)
        self.device = cuda.malloc(max(1, self.host.nbytes))


class GraphLauncher:
    """Launches the execution context; with `use_graph`, batch-1 calls go through a CUDA graph.

    The graph is captured on the first batch-1 call (after one plain launch, which TensorRT needs
    after a shape change) and replayed from then on; a call of another batch size drops it, and
    the next batch-1 call captures again. If capture fails, every later call launches plainly and
    `status` keeps the reason, so a report never claims a graph that did not run.
    `status`: GRAPH_OFF, GRAPH_PENDING, GRAPH_REPLAYED or GRAPH_FALLBACK + why; `replays` counts
    graph launches.
    """

    def __init__(
        self, context: Any, cuda: Any, stream: int, where: str, use_graph: bool, trt_log: Any
    ) -> None:
        self._context, self._cuda, self._stream = context, cuda, stream
        self._where, self._trt_log = where, trt_log
        self.requested = use_graph
        self.replays = 0
        self._graph: Any = None
        self._fallback: str | None = None

    @property
    def active(self) -> bool:
        """Batch-1 calls (will) replay a graph: asked for, and no capture has failed."""
        return self.requested and self._fallback is None

    @property
    def status(self) -> str:
        if not self.requested:
            return GRAPH_OFF
        if self._fallback is not None:
            return GRAPH_FALLBACK + self._fallback
        return GRAPH_REPLAYED if self.replays else GRAPH_PENDING

    def execute(self, batch: int) -> None:
        """Enqueue one inference on the stream (graph launch or plain execute_async_v3)."""
        if not (self.active and batch == 1):
            if self._graph is not None:  # the context leaves the captured shapes: capture anew
                self._cuda.destroy_graph(self._graph)
                self._graph = None
            self._enqueue()
            return
        if self._graph is None:
            self._graph = self._capture()
        if self._graph is None:  # capture failed just now
            self._enqueue()
            return
        self._cuda.launch(self._graph, self._stream)
        self.replays += 1

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream):
            raise DeployError(f"{self._where}: TensorRT execute_async_v3 failed (see the log)")

    def _capture(self) -> Any:
        """The instantiated graph of one batch-1 launch, or None after recording why not.

        A capture TensorRT refuses (execute_async_v3 returns False) or CUDA invalidates (a host
        sync inside the launch, as data-dependent shapes need) is ended, its error cleared, and
        the reason kept; nothing of it ran, so the caller launches plainly.
        """
        self._enqueue()
        self._cuda.synchronize(self._stream)
        self._trt_log.last_error = None
        try:
            self._cuda.begin_capture(self._stream)
        except DeployError as exc:
            return self._fall_back(str(exc))
        try:
            enqueued = self._context.execute_async_v3(self._stream)
        except BaseException:
            self._cuda.abort_capture(self._stream)
            raise
        if not enqueued:
            self._cuda.abort_capture(self._stream)
            return self._fall_back("TensorRT's execute_async_v3 returned False while capturing")
        try:
            return self._cuda.end_capture(self._stream)
        except DeployError as exc:
            self._cuda.abort_capture(self._stream)
            return self._fall_back(str(exc))

    def release(self) -> None:
        """Drop the context and CUDA references (the predictor is closing); status stays."""
        self._context = self._cuda = self._graph = None

    def _fall_back(self, why: str) -> None:
        """Record why capture failed (with TensorRT's own error, if it logged one); no graph."""
        said = self._trt_log.last_error
        self._fallback = f"{why}; TensorRT: {said}" if said else why
        logger.warning(
            "%s: CUDA graph capture failed (%s); launching without it", self._where, self._fallback
        )
        return None


class TensorRTPredictor(EngineBackend):
    """Runs a serialized TensorRT engine; same call contract as the ONNX Runtime predictor.

    Attributes: metadata (from the sidecar), info (build info), precision, backend_name,
    max_batch, cuda_api ("cuda-python" or "pycuda"), cuda_graph (whether batch-1 calls replay,
    or will replay, a captured graph), cuda_graph_status (what happened: "off", "pending",
    "replayed" or "fallback: <why>"; the eval report's "cuda_graph").
    """

    def __init__(
        self,
        path: str | Path,
        cuda_api: str = "auto",
        cuda_graph: bool = False,
        device: int = 0,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeployError(f"{self.path}: engine file not found")
        self._trt = import_tensorrt(f"{self.path}: running a TensorRT engine")
        try:
            self._cuda = open_cuda(cuda_api, device)
        except DeployError as exc:
            raise DeployError(f"{self.path}: {exc}") from exc
        self.cuda_api: str = self._cuda.name
        metadata, info = read_engine_metadata(self.path)
        self.metadata: ModelMetadata = metadata
        self.info: EngineInfo = info
        check_engine_compat(info, self._trt.__version__, *self._cuda.device_info(), self.path)
        self._logger = _python_logger(self._trt)
        try:
            # the two-stage graph's RoiAlign runs as TensorRT's ROIAlign_TRT plugin
            init_plugins = getattr(self._trt, "init_libnvinfer_plugins", None)
            if init_plugins is not None:
                init_plugins(self._logger, "")
            self._runtime = start_tensorrt(self._trt.Runtime, self._logger, self._trt.__version__)
        except DeployError as exc:
            raise DeployError(f"{self.path}: {exc}") from exc
        self._engine = self._deserialize()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DeployError(f"{self.path}: TensorRT could not create an execution context")
        self.max_batch = self._check_io()
        self._bindings = self._allocate()
        self._stream = self._cuda.stream()
        self._launcher = GraphLauncher(
            self._context, self._cuda, self._stream, str(self.path), cuda_graph, self._logger
        )
        self.precision: str = info.precision
        self.backend_name = "tensorrt"
        logger.info(
            "%s: TensorRT %s, %s, batch <= %d, %s%s",
            self.path,
            self._trt.__version__,
            self.precision,
            self.max_batch,
            self.cuda_api,
            ", CUDA graph for batch 1" if cuda_graph else "",
        )

    @classmethod
    def open(cls, path: Path, settings: RuntimeSettings) -> TensorRTPredictor:
        return cls(path, cuda_api=settings.cuda_api, cuda_graph=settings.cuda_graph)

    def _deserialize(self) -> Any:
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise DeployError(
                f"{self.path}: TensorRT {self._trt.__version__} cannot deserialize this engine "
                "(corrupt, or built by another TensorRT/GPU); rebuild it with "
                "`pipeline export --trt`"
            )
        return engine

    def _check_io(self) -> int:
        """The engine must expose the exporter's tensor names; returns its largest batch."""
        engine, trt = self._engine, self._trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.check_io(inputs, names)
        _, _, max_shape = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        size = self.metadata.img_size
        if tuple(max_shape)[1:] != (3, size, size):
            raise DeployError(
                f"{self.path}: engine input {tuple(max_shape)} does not match the metadata's "
                f"image size {size}"
            )
        return int(max_shape[0])

    def _allocate(self) -> dict[str, _Binding]:
        """Buffers for the largest batch; output shapes come from the context at that batch."""
        size = self.metadata.img_size
        self._set_batch(self.max_batch)
        bindings = {}
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(self._context.get_tensor_shape(name))
            if name == INPUT_NAME:
                shape = (self.max_batch, 3, size, size)
            bindings[name] = _Binding(name, dtype, shape, self._cuda)
            if not self._context.set_tensor_address(name, bindings[name].device):
                raise DeployError(f"{self.path}: TensorRT rejected the address for {name!r}")
        return bindings

    def _set_batch(self, batch: int) -> None:
        size = self.metadata.img_size
        if not self._context.set_input_shape(INPUT_NAME, (batch, 3, size, size)):
            raise DeployError(
                f"{self.path}: TensorRT rejected input shape ({batch}, 3, {size}, "
                f"{size}) (engine batch range 1..{self.max_batch})"
            )

    def __call__(self, images: np.ndarray) -> Detections:
        """images: float32 (B, 3, S, S) raw 0..255 letterboxed RGB -> padded Detections."""
        self.check_input(images)
        batch = images.shape[0]
        if not 1 <= batch <= self.max_batch:
            raise DeployError(
                f"{self.path}: batch {batch} outside the engine's range 1..{self.max_batch} "
                "(rebuild with a larger --batch)"
            )
        self._set_batch(batch)
        binding = self._bindings[INPUT_NAME]
        host_in = binding.host[:batch]
        np.copyto(host_in, images, casting="same_kind")
        self._cuda.h2d(binding.device, host_in, self._stream)
        self._launcher.execute(batch)
        views = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self._context.get_tensor_shape(name))
            out = self._bindings[name]
            view = out.host.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            self._cuda.d2h(view, out.device, self._stream)
            views[name] = view
        self._cuda.synchronize(self._stream)
        return Detections.from_arrays(*(views[name].copy() for name in OUTPUT_NAMES))

    @property
    def cuda_graph(self) -> bool:
        """Whether batch-1 calls replay (or, before the first, will try) a captured CUDA graph."""
        return self._launcher.active

    @property
    def cuda_graph_status(self) -> str:
        """What batch-1 calls did: off, pending, replayed or "fallback: <why>" (GraphLauncher)."""
        return self._launcher.status

    def close(self) -> None:
        """Release the context, engine and CUDA memory (also done when garbage-collected)."""
        if getattr(self, "_cuda", None) is None:
            return
        launcher = getattr(self, "_launcher", None)  # None when the constructor failed early
        if launcher is not None:
            launcher.release()
        self._context = None
        self._engine = None
        self._cuda.close()
        self._cuda = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown: modules may be gone
            self.close()
