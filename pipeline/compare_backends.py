"""The deployed engines `pipeline compare` can score: checked before anything trains.

Each backend turns a run's best.pt into the model file the one evaluator scores. Availability
is checked up front, so a comparison never trains for an hour and then fails at deployment.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.exporting import run_export

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "onnx-int8", "tensorrt")
ONNX_OPSET = 17
INT8_CALIBRATION_IMAGES = 64


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_backend(backend: str) -> None:
    """Raise PipelineError when `backend` cannot run here (before any training starts)."""
    if backend not in BACKENDS:
        raise PipelineError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "onnx-int8" and not _has_module("export.quantize"):
        raise PipelineError(
            "--backend onnx-int8: this checkout has no INT8 quantizer (export/quantize.py); "
            "use --backend onnx"
        )
    if backend == "tensorrt":
        missing = [m for m in ("tensorrt", "export.tensorrt") if not _has_module(m)]
        if missing:
            raise PipelineError(
                "--backend tensorrt needs an NVIDIA GPU with TensorRT and this project's engine "
                f"builder (missing here: {', '.join(missing)}); install '.[gpu]' or use the "
                "Docker image, or pick --backend onnx"
            )


def build_deployed_model(backend: str, weights: Path, run_dir: Path, data: Path | None) -> Path:
    """Export `weights` for `backend` into `run_dir`; returns the file to evaluate."""
    onnx_path = run_dir / "model.onnx"
    log.info("%s", run_export(weights, onnx_path, ONNX_OPSET, data, overwrite=True))
    if backend == "onnx":
        return onnx_path
    if backend == "onnx-int8":
        return _quantize(onnx_path, run_dir / "model.int8.onnx", data)
    return _build_engine(onnx_path, run_dir / "model.engine")


def _quantize(onnx_path: Path, out: Path, data: Path | None) -> Path:
    """Static INT8 (ONNX Runtime's CPU form) through export/quantize.py, calibrated on training
    images so the images the model is scored on never set its ranges."""
    from deploy.metadata import read_onnx_metadata
    from train.data.synthetic import ensure_synthetic_dataset

    quantize = importlib.import_module("export.quantize")
    root = data if data is not None else ensure_synthetic_dataset()
    img_size = read_onnx_metadata(onnx_path).img_size
    images = quantize.calibration_images(root, img_size, INT8_CALIBRATION_IMAGES)
    log.info("INT8: %s", quantize.quantize_int8(onnx_path, out, images))
    return out


def _build_engine(onnx_path: Path, out: Path) -> Path:
    """A TensorRT engine through export/tensorrt.py's `build_engine(onnx_path, out)`."""
    tensorrt = importlib.import_module("export.tensorrt")
    if not hasattr(tensorrt, "build_engine"):
        raise PipelineError("export/tensorrt.py has no build_engine(); cannot build engines")
    tensorrt.build_engine(onnx_path, out)
    return out
