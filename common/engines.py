"""The one table of deployment engines: every fact about an engine that more than one stage needs.

Export reads it for the files it writes and the precisions it accepts, deploy for which runtime
opens a model file, the CLI for its `--precision` and `--backend` choices, compare for the file
each backend scores, doctor and bench for what to look for. Adding an engine is one row here, one
exporter in export/ and one backend in deploy/backends/ (docs/architecture.md lists the rest).
Torch-free: deploy and the CLI import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

FP32 = "fp32"


@dataclass(frozen=True)
class Engine:
    """One deployment engine.

    `precisions` are what `pipeline export` writes for it; `study_precisions` those `pipeline
    compare` scores as backends (fp32 is named after the engine, the others `<name>-<precision>`).
    `export_flag` is the export option that asks for it (None: always written), `export_help`
    what that option writes, `exporter` the export function that writes its file from the fp32
    ONNX, `module:function` taking an `export.engine_job.EngineJob` (None: the ONNX files, which
    every export writes itself); `int8_from_qdq` whether its int8 file is converted from the
    static QDQ ONNX (then written too, and handed to the exporter). `backend` is the deploy class that opens its files,
    `module:Class`, imported only when a file is opened; `python_module` the package whose
    presence makes it available, `requirement` the export check that says in one line why it
    cannot be built here (None: always can).
    """

    name: str
    runtime: str
    suffix: str
    precisions: tuple[str, ...]
    study_precisions: tuple[str, ...]
    needs_gpu: bool
    export_flag: str | None
    export_help: str
    exporter: str | None
    int8_from_qdq: bool
    export_options: tuple[str, ...]
    backend: str
    python_module: str
    requirement: str | None  # `module:function` raising one line when its exporter cannot run

    @property
    def flag_field(self) -> str:
        """The export options' field of its flag: `--trt` -> `trt`."""
        return (self.export_flag or "").removeprefix("--").replace("-", "_")

    def model_file(self, precision: str, stem: str = "model") -> str:
        """The file name export writes at `precision` (the fp32 ONNX keeps the bare stem)."""
        if self.export_flag is None and precision == FP32:
            return f"{stem}{self.suffix}"
        return f"{stem}.{precision}{self.suffix}"


ENGINES: tuple[Engine, ...] = (
    Engine(
        name="onnx",
        runtime="ONNX Runtime",
        suffix=".onnx",
        precisions=("fp32", "fp16", "int8"),
        study_precisions=("fp32", "int8"),
        needs_gpu=False,
        export_flag=None,
        export_help="the float32 ONNX (always), and model.<precision>.onnx for fp16 or int8",
        exporter=None,
        int8_from_qdq=True,
        export_options=("--opset", "--calibration", "--calib-images", "--max-ap-drop"),
        backend="deploy.backends.onnxruntime:OnnxRuntimePredictor",
        python_module="onnxruntime",
        requirement=None,
    ),
    Engine(
        name="openvino",
        runtime="OpenVINO",
        suffix=".xml",
        precisions=("fp32", "bf16", "int8"),
        study_precisions=("fp32", "bf16", "int8"),
        needs_gpu=False,
        export_flag="--openvino",
        export_help="an OpenVINO IR (model.<precision>.xml + .bin) for CPU inference",
        exporter="export.openvino:export_openvino",
        int8_from_qdq=True,
        export_options=("--calibration", "--calib-images", "--max-ap-drop", "--int8-method"),
        backend="deploy.backends.openvino:OpenVinoPredictor",
        python_module="openvino",
        requirement="export.openvino:require_openvino",
    ),
    Engine(
        name="tensorrt",
        runtime="TensorRT",
        suffix=".engine",
        precisions=("fp32", "fp16", "int8"),
        study_precisions=("fp32", "fp16", "int8"),
        needs_gpu=True,
        export_flag="--trt",
        export_help="a TensorRT engine (model.<precision>.engine); needs an NVIDIA GPU",
        exporter="export.tensorrt:export_tensorrt",
        int8_from_qdq=False,  # TensorRT 10 calibrates itself; 11 quantizes inside build_engine
        export_options=("--calibration", "--calib-images", "--batch-size", "--workspace"),
        backend="deploy.backends.tensorrt:TensorRTPredictor",
        python_module="tensorrt",
        requirement="export.tensorrt:require_tensorrt",
    ),
)

ENGINES_BY_NAME: dict[str, Engine] = {engine.name: engine for engine in ENGINES}
# Every precision some engine takes, in table order: export's --precision choices.
EXPORT_PRECISIONS: tuple[str, ...] = tuple(
    dict.fromkeys(precision for engine in ENGINES for precision in engine.precisions)
)
# The suffixes of deployed model files (a .pt checkpoint is torch's, not an engine's).
DEPLOYED_SUFFIXES: tuple[str, ...] = tuple(engine.suffix for engine in ENGINES)


def backend_name(engine: Engine, precision: str) -> str:
    """'onnx' for ONNX fp32, 'openvino-bf16', 'tensorrt-int8', ..."""
    return engine.name if precision == FP32 else f"{engine.name}-{precision}"


# compare's --backend names -> (engine, precision), in table order.
BACKENDS: dict[str, tuple[Engine, str]] = {
    backend_name(engine, precision): (engine, precision)
    for engine in ENGINES
    for precision in engine.study_precisions
}


def engine_for_file(suffix: str) -> Engine | None:
    """The engine whose model files end in `suffix` (case-insensitive), or None."""
    return next((e for e in ENGINES if e.suffix == suffix.lower()), None)


def named_object(reference: str) -> Any:
    """`module:attribute` (a row's backend or requirement) -> the object, imported now: the
    table names other stages' code without importing it."""
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
