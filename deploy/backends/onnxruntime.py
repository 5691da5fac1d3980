"""ONNX Runtime predictor: one exported .onnx file -> the predictor contract (deploy.metadata).

The exported graph already contains decoding and NMS, so this backend only feeds the letterboxed
batch and casts the four padded outputs; nothing model-specific lives here.

onnxruntime-gpu's TensorRT provider links TensorRT's libraries (libnvinfer.so.N) but looks for them
only beside itself and on the loader path, while pip puts them in site-packages/tensorrt_libs: they
are preloaded (RTLD_GLOBAL) before the first session that asks for TensorRT. `auto` tries its
providers once per process and then asks only for the ones that ran, so ONNX Runtime's fallback
message appears at most once, followed by one line saying why TensorRT's provider was not used.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, OUTPUT_NAMES, Detections, fixed_batch, in_batches_of
from deploy.backends.base import EngineBackend, RuntimeSettings
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata, read_onnx_metadata

logger = logging.getLogger(__name__)


CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)

NO_ONNXRUNTIME = (
    "ONNX Runtime is not installed: pip install '.[cpu]' (or '.[gpu]' on an NVIDIA machine; "
    "never both: they write the same `onnxruntime` package)"
)
# TensorRT's libraries as the provider needs them, in load order (the plugin and the parser link
# libnvinfer). onnxruntime-gpu 1.18 to 1.31 on PyPI all link major 10 (readelf -d on
# libonnxruntime_providers_tensorrt.so); the installed provider's own file is read first.
TENSORRT_LIBS_PACKAGE = "tensorrt_libs"
TENSORRT_PROVIDER_LIBS = ("nvinfer", "nvinfer_plugin", "nvonnxparser")
DEFAULT_TENSORRT_MAJOR = 10
TENSORRT_PROVIDER_FILE = "libonnxruntime_providers_tensorrt.so"

# Each choice lists the providers to hand ONNX Runtime, fastest first; CPU stays last so ops the
# accelerator lacks still run.
_CHOICES: dict[str, tuple[str, ...]] = {
    "auto": (TENSORRT, CUDA, CPU),
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or one DeployError line saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise DeployError(NO_ONNXRUNTIME) from exc
    return onnxruntime


def provider_tensorrt_major(capi_dir: Path) -> int:
    """The libnvinfer major the installed TensorRT provider links (its file names it)."""
    provider = capi_dir / TENSORRT_PROVIDER_FILE
    with contextlib.suppress(OSError):
        found = re.search(rb"libnvinfer\.so\.(\d+)", provider.read_bytes())
        if found:
            return int(found.group(1))
    return DEFAULT_TENSORRT_MAJOR


def find_tensorrt_libs(search_path: list[str] | None = None) -> Path | None:
    """site-packages/tensorrt_libs (pip's TensorRT libraries), found without importing it."""
    for entry in sys.path if search_path is None else search_path:
        folder = Path(entry or ".") / TENSORRT_LIBS_PACKAGE
        if folder.is_dir():
            return folder
    return None


def tensorrt_library_files(libs_dir: Path, major: int) -> list[Path]:
    """The provider's TensorRT libraries in load order, or DeployError naming what is missing."""
    files = [libs_dir / f"lib{name}.so.{major}" for name in TENSORRT_PROVIDER_LIBS]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        present = sorted(p.name for p in libs_dir.glob("libnvinfer.so.*"))
        raise DeployError(
            f"{libs_dir} lacks {', '.join(missing)} (has {', '.join(present) or 'no libnvinfer'}): "
            f"onnxruntime-gpu's TensorRT provider needs TensorRT {major} (pip install '.[gpu]')"
        )
    return files


def preload_tensorrt_libs(
    capi_dir: Path | None = None, search_path: list[str] | None = None
) -> list[Path]:
    """Load TensorRT's pip libraries process-wide, so the TensorRT provider's links resolve.

    Returns the files loaded; DeployError (one line) when they are absent or do not load.
    """
    libs_dir = find_tensorrt_libs(search_path)
    if libs_dir is None:
        raise DeployError(
            f"no {TENSORRT_LIBS_PACKAGE} folder on sys.path (TensorRT's pip libraries; "
            "pip install '.[gpu]')"
        )
    if capi_dir is None:
        capi_dir = Path(import_onnxruntime().__file__).parent / "capi"
    files = tensorrt_library_files(libs_dir, provider_tensorrt_major(capi_dir))
    for path in files:
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise DeployError(f"cannot load {path}: {exc}") from exc
    return files


class _ProviderHistory:
    """What this process learned about providers: so each failure is tried and said once."""

    def __init__(self) -> None:
        self.tensorrt_libs: list[Path] | str | None = None  # loaded files, or why not
        self.ran: dict[tuple[str, ...], list[str]] = {}  # providers asked -> providers that ran
        self.said: set[str] = set()

    def preload_reason(self) -> str | None:
        """None once TensorRT's libraries are loaded, else why they are not (tried once)."""
        if self.tensorrt_libs is None:
            try:
                self.tensorrt_libs = preload_tensorrt_libs()
            except DeployError as exc:
                self.tensorrt_libs = str(exc)
        return self.tensorrt_libs if isinstance(self.tensorrt_libs, str) else None

    def say_once(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            logger.warning("%s", message)


_HISTORY = _ProviderHistory()


def resolve_providers(provider: str, available: list[str] | None = None) -> list[str]:
    """Providers for `provider` among `available` (default: what this onnxruntime build has).

    An explicit accelerator that this build lacks is an error rather than a silent CPU run, so a
    "GPU" latency number can never come from the CPU.
    """
    if provider not in _CHOICES:
        raise DeployError(f"unknown provider {provider!r}; valid: {', '.join(_CHOICES)}")
    if available is None:
        available = import_onnxruntime().get_available_providers()
    wanted = _CHOICES[provider]
    if provider != "auto" and wanted[0] not in available:
        raise DeployError(
            f"{wanted[0]} is not available on this machine (install onnxruntime-gpu: "
            "pip install '.[gpu]', or use the Docker image)"
        )
    chosen = [name for name in wanted if name in available]
    if not chosen:
        raise DeployError(f"none of {', '.join(wanted)} is available (have: {available})")
    return chosen


class OnnxRuntimePredictor(EngineBackend):
    """Runs an exported model with ONNX Runtime.

    Attributes: metadata (read from the file), provider (the execution provider that actually
    runs the graph), backend_name ("onnxruntime-<provider>"), precision ("fp16" if the model
    takes fp16 input or its metadata says so, else "fp32"), io_binding (whether calls go
    through ONNX Runtime's IO binding: by default on CUDA and TensorRT, so the input is copied to
    the device once per call and the outputs are allocated on the device, then copied back
    together, instead of ORT's per-tensor staging).
    """

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.metadata: ModelMetadata = read_onnx_metadata(self.path)
        providers = self._usable_providers(provider, resolve_providers(provider))
        self._session, fallback_said = self._open_session(providers, threads)
        self.providers_ran: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers_ran[0]
        if provider != "auto" and self.provider != providers[0]:
            raise DeployError(
                f"{self.path}: asked for {providers[0]} but ONNX Runtime fell back to "
                f"{self.provider} ({fallback_said or 'check the CUDA/TensorRT libraries and the driver'})"
            )
        if provider == "auto":
            self._remember_auto(providers, fallback_said)
        self._check_io()
        input_type = self._session.get_inputs()[0].type
        self._input_dtype = np.float16 if input_type == "tensor(float16)" else np.float32
        default_precision = "fp16" if self._input_dtype == np.float16 else "fp32"
        self.precision: str = str(self.metadata.extra.get("precision", default_precision))
        short = self.provider.removesuffix("ExecutionProvider").lower()
        self.backend_name = f"onnxruntime-{short}"
        on_gpu = self.provider in GPU_PROVIDERS
        self.io_binding: bool = on_gpu if io_binding is None else io_binding
        self._output_device = "cuda" if on_gpu else "cpu"
        logger.info("%s: running on %s (%s)", self.path, self.provider, self.precision)

    def _usable_providers(self, provider: str, providers: list[str]) -> list[str]:
        """`providers`, less TensorRT's when its libraries cannot load; `auto`: what ran before.

        An explicit `tensorrt` whose libraries cannot load is an error, never a silent fallback.
        """
        if TENSORRT in providers:
            reason = _HISTORY.preload_reason()
            if reason is not None and provider == "tensorrt":
                raise DeployError(f"{self.path}: {TENSORRT} cannot load: {reason}")
            if reason is not None:
                _HISTORY.say_once(f"ONNX Runtime: {TENSORRT} not used: {reason}")
                providers = [name for name in providers if name != TENSORRT]
        if provider == "auto":
            return _HISTORY.ran.get(tuple(providers), providers)
        return providers

    def _remember_auto(self, providers: list[str], fallback_said: str) -> None:
        """Ask only for what ran from now on, and say once which accelerator did not start."""
        _HISTORY.ran[tuple(providers)] = self.providers_ran
        for name in providers:
            if name in GPU_PROVIDERS and name not in self.providers_ran:
                why = fallback_said or "its start-up error is in ONNX Runtime's log above"
                _HISTORY.say_once(
                    f"ONNX Runtime: {name} not used ({why}); running on {self.provider}"
                )

    def _open_session(self, providers: list[str], threads: int | None) -> tuple[Any, str]:
        """(session, ONNX Runtime's printed fallback message as one line, or "")."""
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        printed = io.StringIO()  # ONNX Runtime prints "EP Error ..." when a provider fails
        try:
            with contextlib.redirect_stdout(printed):
                session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types, one per failure kind
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployError(
                f"{self.path}: ONNX Runtime cannot load this model ({reason})"
            ) from exc
        return session, _first_line(printed.getvalue())

    @classmethod
    def open(cls, path: Path, settings: RuntimeSettings) -> OnnxRuntimePredictor:
        return cls(path, provider=settings.provider)

    def _check_io(self) -> None:
        inputs = [i.name for i in self._session.get_inputs()]
        self.check_io(inputs, [o.name for o in self._session.get_outputs()])

    def __call__(self, images: np.ndarray) -> Detections:
        """images: float32 (B, 3, S, S) raw 0..255 letterboxed RGB -> padded Detections."""
        self.check_input(images)
        batch = np.ascontiguousarray(images, dtype=self._input_dtype)
        fixed = fixed_batch(self._session.get_inputs()[0].shape)  # the two-stage graph's 1
        return in_batches_of(fixed, self._run, batch)

    def _run(self, batch: np.ndarray) -> Detections:
        if self.io_binding:
            num_dets, boxes, scores, labels = self._run_bound(batch)
        else:
            outputs = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            num_dets, boxes, scores, labels = outputs
        return Detections.from_arrays(num_dets, boxes, scores, labels)

    def _run_bound(self, batch: np.ndarray) -> list[np.ndarray]:
        """One call through IO binding: input bound from host memory, outputs on the device."""
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, self._output_device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _first_line(text: str) -> str:
    """The first line of ONNX Runtime's printed fallback, skipping its "*** EP Error ***" banner."""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("*"):
            return line.strip()
    return ""


def session_with_outputs(model: Any, names: list[str]) -> Any:
    """A CPU session of `model` (an onnx ModelProto) that also returns the tensors `names`;
    call it with (B, 3, S, S) float32 images for those tensors, in order."""
    import onnx

    ort = import_onnxruntime()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {out.name for out in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names
        if name not in known
    )
    options = ort.SessionOptions()
    # the graph as written: fusions would remove the very tensors asked for
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name

    def run(images: Any) -> list[Any]:
        return session.run(names, {input_name: images})

    return run
