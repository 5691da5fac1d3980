"""Device buffers, one stream, copies and CUDA graphs for the TensorRT runtime, without torch.

Two implementations of one small interface: NVIDIA's CUDA Python bindings (cuda-python, the
default, which the TensorRT samples use) and pycuda (an alternative some images ship instead).
Both are imported only when asked for, so this module imports on any machine. Every CUDA call's
status is checked; a failure is a DeployError naming the call and the CUDA error.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, Protocol

import numpy as np

from deploy.errors import DeployError

logger = logging.getLogger(__name__)

CUDA_APIS = ("auto", "cuda-python", "pycuda")
INSTALL_HINT = "pip install '.[gpu]' (or '.[pycuda]'), or use the Docker image"
NO_DRIVER_HINT = "no usable NVIDIA driver, or one too old for this CUDA"


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (pybind and CUDA messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class CudaApi(Protocol):
    """What the TensorRT runtime needs from CUDA. Pointers and stream handles are ints."""

    name: str

    def device_info(self) -> tuple[str, str]: ...  # (GPU name, "major.minor")
    def malloc(self, nbytes: int) -> int: ...
    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...  # pinned
    def stream(self) -> int: ...
    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None: ...
    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None: ...
    def synchronize(self, stream: int) -> None: ...
    def begin_capture(self, stream: int) -> None: ...
    def end_capture(self, stream: int) -> Any: ...  # an instantiated graph
    def abort_capture(self, stream: int) -> None: ...
    def destroy_graph(self, graph: Any) -> None: ...  # one end_capture returned
    def launch(self, graph: Any, stream: int) -> None: ...
    def close(self) -> None: ...


def _import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+) or `cuda.cudart` (older)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # raises ImportError when neither is installed
    return runtime


class CudaPython:
    """The CUDA runtime API through cuda-python (every call returns (status, values...))."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        self._rt = _import_cudart()
        self._device = device
        try:
            self._call("cudaSetDevice", device)
        except DeployError as exc:
            raise DeployError(
                f"no usable CUDA device {device} ({exc}): the TensorRT runtime needs an NVIDIA "
                "GPU and driver"
            ) from exc
        self._allocations: list[int] = []
        self._host: list[int] = []
        self._streams: list[Any] = []
        self._graphs: list[tuple[Any, Any]] = []

    def _call(self, name: str, *args: Any) -> Any:
        try:
            result = getattr(self._rt, name)(*args)
        except RuntimeError as exc:  # cuda-python <= 12.5 raises when it cannot reach a driver
            raise DeployError(f"CUDA {name} failed: {one_line(exc)} ({NO_DRIVER_HINT})") from exc
        status, values = result[0], result[1:]
        if status != self._rt.cudaError_t.cudaSuccess:
            error_name = self._rt.cudaGetErrorName(status)[1]
            error_name = error_name.decode() if isinstance(error_name, bytes) else str(error_name)
            raise DeployError(f"CUDA {name} failed: {error_name}")
        return values[0] if len(values) == 1 else values

    def device_info(self) -> tuple[str, str]:
        props = self._call("cudaGetDeviceProperties", self._device)
        raw = props.name
        name = raw.split(b"\0")[0].decode() if isinstance(raw, bytes) else str(raw)
        return name.strip(), f"{props.major}.{props.minor}"

    def malloc(self, nbytes: int) -> int:
        pointer = int(self._call("cudaMalloc", nbytes))
        self._allocations.append(pointer)
        return pointer

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        pointer = int(self._call("cudaMallocHost", nbytes))
        self._host.append(pointer)
        buffer = (ctypes.c_byte * nbytes).from_address(pointer)
        return np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def stream(self) -> int:
        stream = self._call("cudaStreamCreateWithFlags", self._rt.cudaStreamNonBlocking)
        self._streams.append(stream)
        return int(stream)

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", stream)

    def begin_capture(self, stream: int) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: int) -> Any:
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            graph_exec = self._call("cudaGraphInstantiate", graph, 0)
        except DeployError:  # the capture fell back: free the graph nobody will launch
            self._rt.cudaGraphDestroy(graph)
            raise
        self._graphs.append((graph, graph_exec))
        return graph_exec

    def abort_capture(self, stream: int) -> None:
        """End a failed capture and clear the sticky error, so plain launches still work."""
        result = self._rt.cudaStreamEndCapture(stream)
        if result[0] == self._rt.cudaError_t.cudaSuccess and result[1] is not None:
            self._rt.cudaGraphDestroy(result[1])
        self._rt.cudaGetLastError()

    def destroy_graph(self, graph: Any) -> None:
        """Free a graph end_capture made, before close (the runtime re-captures on a new shape)."""
        pairs = [pair for pair in self._graphs if pair[1] is graph]
        self._graphs = [pair for pair in self._graphs if pair[1] is not graph]
        for captured, graph_exec in pairs:
            self._call("cudaGraphExecDestroy", graph_exec)
            self._call("cudaGraphDestroy", captured)

    def launch(self, graph: Any, stream: int) -> None:
        self._call("cudaGraphLaunch", graph, stream)

    def close(self) -> None:
        """Free everything this object allocated (errors only logged: this runs at teardown)."""
        rt = self._rt
        calls = [(rt.cudaGraphExecDestroy, e) for _, e in self._graphs]
        calls += [(rt.cudaGraphDestroy, g) for g, _ in self._graphs]
        calls += [(rt.cudaStreamDestroy, s) for s in self._streams]
        calls += [(rt.cudaFree, p) for p in self._allocations]
        calls += [(rt.cudaFreeHost, p) for p in self._host]
        for func, handle in calls:
            status = func(handle)[0]
            if status != rt.cudaError_t.cudaSuccess:
                logger.warning("CUDA %s failed at teardown: %s", func.__name__, status)
        self._graphs, self._streams, self._allocations, self._host = [], [], [], []


class PyCuda:
    """The same through pycuda, on the device's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as drv

        self._drv = drv
        try:
            drv.init()
            self._dev = drv.Device(device)
            self._ctx = self._dev.retain_primary_context()
            self._ctx.push()
        except drv.Error as exc:
            raise DeployError(f"CUDA (pycuda) cannot open device {device}: {exc}") from exc
        self._keep: list[Any] = []  # allocations live as long as this object
        self._streams: dict[int, Any] = {}

    def _guard(self, what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except self._drv.Error as exc:
            raise DeployError(f"CUDA (pycuda) {what} failed: {exc}") from exc

    def device_info(self) -> tuple[str, str]:
        major, minor = self._dev.compute_capability()
        return str(self._dev.name()).strip(), f"{major}.{minor}"

    def malloc(self, nbytes: int) -> int:
        allocation = self._guard("mem_alloc", self._drv.mem_alloc, nbytes)
        self._keep.append(allocation)
        return int(allocation)

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self._guard("pagelocked_empty", self._drv.pagelocked_empty, shape, dtype)

    def stream(self) -> int:
        stream = self._guard("Stream", self._drv.Stream)
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._guard(
            "memcpy_htod_async", self._drv.memcpy_htod_async, dst, src, self._streams[stream]
        )

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._guard(
            "memcpy_dtoh_async", self._drv.memcpy_dtoh_async, dst, src, self._streams[stream]
        )

    def synchronize(self, stream: int) -> None:
        self._guard("Stream.synchronize", self._streams[stream].synchronize)

    def begin_capture(self, stream: int) -> None:
        raise DeployError("CUDA graph capture needs cuda-python; pass cuda_api='cuda-python'")

    def end_capture(self, stream: int) -> Any:
        raise DeployError("CUDA graph capture needs cuda-python")

    def abort_capture(self, stream: int) -> None:
        return None

    def destroy_graph(self, graph: Any) -> None:
        return None  # never made one

    def launch(self, graph: Any, stream: int) -> None:
        raise DeployError("CUDA graph capture needs cuda-python")

    def close(self) -> None:
        self._keep.clear()
        self._streams.clear()
        try:
            self._ctx.pop()
        except self._drv.Error as exc:
            logger.warning("pycuda: popping the context failed at teardown: %s", exc)


def open_cuda(api: str = "auto", device: int = 0) -> CudaApi:
    """The CUDA interface by name ("auto": cuda-python if installed, else pycuda).

    Raises DeployError naming what is missing (package, driver or GPU) and how to install it.
    """
    if api not in CUDA_APIS:
        raise DeployError(f"unknown CUDA API {api!r}; valid: {', '.join(CUDA_APIS)}")
    order = ["cuda-python", "pycuda"] if api == "auto" else [api]
    missing = []
    for name in order:
        try:
            return CudaPython(device) if name == "cuda-python" else PyCuda(device)
        except ImportError:
            missing.append(name)
    raise DeployError(
        f"{' and '.join(missing)} not installed: the TensorRT runtime needs CUDA Python "
        f"bindings ({INSTALL_HINT})"
    )
