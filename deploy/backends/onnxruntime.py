"""ONNX Runtime predictor: one exported .onnx file -> the predictor contract (deploy.metadata).

The exported graph already contains decoding and NMS, so this backend only feeds the letterboxed
batch and casts the four padded outputs; nothing model-specific lives here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deploy.errors import DeployError
from deploy.metadata import Detections, ModelMetadata, read_onnx_metadata

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)

# Each choice lists the providers to hand ONNX Runtime, fastest first; CPU stays last so ops the
# accelerator lacks still run.
_CHOICES: dict[str, tuple[str, ...]] = {
    "auto": (TENSORRT, CUDA, CPU),
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}


def resolve_providers(provider: str, available: list[str] | None = None) -> list[str]:
    """Providers for `provider` among `available` (default: what this onnxruntime build has).

    An explicit accelerator that this build lacks is an error rather than a silent CPU run, so a
    "GPU" latency number can never come from the CPU.
    """
    if provider not in _CHOICES:
        raise DeployError(f"unknown provider {provider!r}; valid: {', '.join(_CHOICES)}")
    if available is None:
        available = ort.get_available_providers()
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


class OnnxRuntimePredictor:
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
        providers = resolve_providers(provider)
        self._session = self._open_session(providers, threads)
        self.provider: str = self._session.get_providers()[0]
        if provider != "auto" and self.provider != providers[0]:
            raise DeployError(
                f"{self.path}: asked for {providers[0]} but ONNX Runtime fell back to "
                f"{self.provider} (check the CUDA/TensorRT libraries and the driver)"
            )
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

    def _open_session(self, providers: list[str], threads: int | None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types, one per failure kind
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployError(
                f"{self.path}: ONNX Runtime cannot load this model ({reason})"
            ) from exc

    def _check_io(self) -> None:
        """The graph must expose the names the exporter writes, or outputs would be misread."""
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [INPUT_NAME]:
            raise DeployError(f"{self.path}: expected one input named {INPUT_NAME!r}, got {inputs}")
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise DeployError(f"{self.path}: missing outputs {missing} (graph has {outputs})")

    def __call__(self, images: np.ndarray) -> Detections:
        """images: float32 (B, 3, S, S) raw 0..255 letterboxed RGB -> padded Detections."""
        size = self.metadata.img_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise DeployError(
                f"{self.path}: expected input (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        batch = np.ascontiguousarray(images, dtype=self._input_dtype)
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
