"""OpenVINO predictor: an IR (.xml + .bin) converted from the exported ONNX -> the predictor contract.

The IR is the same graph as the ONNX file (decode and NMS inside); the model's metadata travels in
its rt_info under IR_RT_INFO_SECTION, so nothing beside the two files is needed. The precision the
export chose (fp32, bf16, or int8 for a graph converted from the QDQ ONNX) is stored there too
and becomes OpenVINO's inference precision hint: fp32 must be asked for explicitly, because on a
CPU with bf16 units OpenVINO runs float graphs in bf16 by default.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, OUTPUT_NAMES, Detections, in_batches_of
from common.engine_files import IR_PRECISION_KEY, IR_RT_INFO_SECTION
from common.engines import ENGINES_BY_NAME
from common.optional import import_or_explain
from deploy.backends.base import EngineBackend, RuntimeSettings
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata

logger = logging.getLogger(__name__)

# OpenVINO's names for the precision of the float parts of the graph (int8's float tail in f32).
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
NO_OPENVINO = "OpenVINO is not installed: pip install '.[openvino]'"


def import_openvino() -> ModuleType:
    """The openvino module, or one DeployError line saying which extra installs it."""
    return import_or_explain("openvino", NO_OPENVINO, DeployError)


@functools.cache
def shared_core() -> Any:
    """The process's one openvino.Core: a second Core queried in the same process can crash it
    (seen in ultralytics' CI after repeated loads), and one Core keeps the plugin loaded once."""
    return import_openvino().Core()


def read_rt_info(model: Any) -> dict[str, str]:
    """The pipeline's key -> value pairs stored in an OpenVINO model's rt_info."""
    if not model.has_rt_info([IR_RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info([IR_RT_INFO_SECTION])
    return {str(key): value.astype(str) for key, value in section.astype(dict).items()}


def cpu_capabilities() -> dict[str, Any]:
    """OpenVINO's version and what the CPU plugin reports it can run (BF16, INT8, ...)."""
    ov = import_openvino()
    core = shared_core()
    return {
        "version": ov.__version__.split("-")[0],
        "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
    }


class OpenVinoPredictor(EngineBackend):
    """Runs an OpenVINO IR on the CPU.

    Attributes: metadata (from the IR's rt_info), precision ("fp32", "bf16" or "int8", from the
    IR unless given), hint ("latency": one inference at a time as fast as possible;
    "throughput": OpenVINO splits the cores into parallel streams, for batches and servers),
    backend_name ("openvino-cpu").
    """

    backend_name = "openvino-cpu"

    def __init__(
        self,
        path: str | Path,
        precision: str | None = None,
        hint: str = "latency",
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        ov = import_openvino()
        if not self.path.is_file():
            raise DeployError(f"{self.path}: model file not found")
        if not self.path.with_suffix(".bin").is_file():
            raise DeployError(
                f"{self.path}: its weights {self.path.with_suffix('.bin').name} are missing"
            )
        if hint not in HINTS:
            raise DeployError(f"hint {hint!r}: expected one of {', '.join(HINTS)}")
        core = shared_core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise DeployError(f"{self.path}: not an OpenVINO IR ({reason})") from exc
        props = read_rt_info(model)
        self.metadata: ModelMetadata = ModelMetadata.from_props(props, str(self.path))
        self.precision: str = precision or props.get(IR_PRECISION_KEY, "fp32")
        known = ENGINES_BY_NAME["openvino"].precisions
        if self.precision not in known:
            raise DeployError(f"{self.path}: precision {self.precision!r} is not one of {known}")
        self.hint = hint
        self._check_io(model)
        config = {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
            "PERFORMANCE_HINT": HINTS[hint],
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self._model, self._config = model, config
        # Every graph runs with a static batch, compiled once per batch size met: OpenVINO's CPU
        # plugin crashes (SIGSEGV in JIT code, at inference or later) on int8 graphs with a
        # dynamic dimension on some CPUs (openvinotoolkit/openvino#37577), and static float
        # graphs ran 3-9% faster than dynamic ones (bench/engines.py, docs/measurements.md).
        self._by_batch: dict[int, tuple[Any, Any]] = {}
        # batch 1 compiled now: a broken IR fails at load, not at the first image
        self._compiled, self._request = self._for_batch(1)
        logger.info("%s: OpenVINO %s on CPU (%s, %s)", self.path, ov.__version__.split("-")[0],
                    self.precision, hint)  # fmt: skip

    @classmethod
    def open(cls, path: Path, settings: RuntimeSettings) -> OpenVinoPredictor:
        return cls(path, hint=settings.openvino_hint)

    def _check_io(self, model: Any) -> None:
        inputs = [port.get_any_name() for port in model.inputs]
        self.check_io(inputs, sorted({name for port in model.outputs for name in port.get_names()}))

    def __call__(self, images: np.ndarray) -> Detections:
        """images: float32 (B, 3, S, S) raw 0..255 letterboxed RGB -> padded Detections."""
        self.check_input(images)
        batch = np.ascontiguousarray(images, dtype=np.float32)
        first = self._model.input(INPUT_NAME).get_partial_shape()[0]
        fixed = first.get_length() if first.is_static else None  # the two-stage graph's 1
        return in_batches_of(fixed, self._run, batch)

    def _run(self, batch: np.ndarray) -> Detections:
        compiled, request = self._for_batch(len(batch))
        results = request.infer({INPUT_NAME: batch})
        by_name = {name: results[compiled.output(name)] for name in OUTPUT_NAMES}
        return Detections.from_arrays(*(np.array(by_name[name]) for name in OUTPUT_NAMES))

    def _for_batch(self, batch: int) -> tuple[Any, Any]:
        """The compiled model and request for this batch size (compiled on first use)."""
        if batch not in self._by_batch:
            size = self.metadata.img_size
            model = self._model.clone()
            model.reshape({INPUT_NAME: [batch, 3, size, size]})
            compiled = shared_core().compile_model(model, "CPU", self._config)
            self._by_batch[batch] = (compiled, compiled.create_infer_request())
        return self._by_batch[batch]
