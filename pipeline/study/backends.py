"""The deployed engines `pipeline compare` can score: checked before anything trains.

Each backend is a `pipeline export` setting (plain ONNX, ONNX INT8, an OpenVINO IR or a
TensorRT engine, at a precision); its model file is what the one evaluator scores.
Availability is checked up front, so a comparison never trains for an hour and then fails at
deployment.

An int8 backend may name its calibration, `onnx-int8:percentile`: the calibrator becomes an
axis of the study (each such model is exported into its own folder of the run,
calibration-<method>/, so the engine's usual int8 model stays beside it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from common.contract import CALIBRATION_METHODS
from common.engines import BACKENDS, named_object
from common.errors import InputError
from export.errors import ExportError
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def parse_names(
    text: str,
    valid: Iterable[str],
    option: str,
    base: Callable[[str], str] = lambda name: name,
    hint: str = "",
) -> list[str]:
    """'a, b,a' -> ['a', 'b']: order kept, repeats dropped, every name's `base` checked against
    `valid` (`hint` ends the error line)."""
    valid = list(valid)
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if base(n) not in valid]
    if unknown or not names:
        raise PipelineError(
            f"{option} {text!r}: unknown {', '.join(unknown) or '(empty)'}; valid: "
            f"{', '.join(valid)}{hint}"
        )
    return names


def split_backend(backend: str) -> tuple[str, str | None]:
    """'onnx-int8:percentile' -> ('onnx-int8', 'percentile'); 'onnx' -> ('onnx', None)."""
    name, colon, method = backend.partition(":")
    return name, (method if colon else None)


def _check_calibration(backend: str) -> None:
    name, method = split_backend(backend)
    if method is None:
        return
    engine, precision = BACKENDS[name]
    if precision != "int8":
        raise PipelineError(
            f"--backend {backend}: only an int8 backend is calibrated; {name} is {precision}"
        )
    if method not in CALIBRATION_METHODS:
        raise PipelineError(
            f"--backend {backend}: unknown calibration {method!r}; valid: "
            f"{', '.join(CALIBRATION_METHODS)}"
        )
    if engine.name == "tensorrt" and method == "percentile":
        raise PipelineError(
            f"--backend {backend}: TensorRT 10 has no percentile calibrator; use "
            f"{name}:minmax or {name}:entropy, or onnx-int8:percentile"
        )


def parse_backends(text: str) -> list[str]:
    """--backend 'onnx, onnx-int8:entropy' -> ['onnx', 'onnx-int8:entropy'] (names checked)."""
    hint = f" (an int8 one may add :{'|'.join(CALIBRATION_METHODS)})"
    names = parse_names(text, BACKENDS, "--backend", lambda n: split_backend(n)[0], hint)
    for name in names:
        _check_calibration(name)
    return names


def check_backend(backend: str) -> None:
    """Raise PipelineError when `backend` cannot run here (before any training starts)."""
    name, _ = split_backend(backend)
    if name not in BACKENDS:
        raise PipelineError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    _check_calibration(backend)
    engine = BACKENDS[name][0]
    if engine.requirement is None:
        return
    try:
        named_object(engine.requirement)()
    except (InputError, ExportError) as exc:
        reason = str(exc).removeprefix(f"{engine.export_flag}: ")
        raise PipelineError(f"--backend {backend}: {reason}; or use --backend onnx") from exc


def export_folder(backend: str, run_dir: Path) -> Path:
    """Where `backend`'s model is exported: the run itself, or calibration-<method>/ in it."""
    method = split_backend(backend)[1]
    return run_dir if method is None else run_dir / f"calibration-{method}"


def deployed_model_path(backend: str, run_dir: Path) -> Path:
    """The file `pipeline export` writes for `backend` (model.onnx, model.int8.onnx, ...)."""
    engine, precision = BACKENDS[split_backend(backend)[0]]
    return export_folder(backend, run_dir) / engine.model_file(precision)


def build_deployed_model(backend: str, weights: Path, run_dir: Path) -> Path:
    """Export `weights` for `backend` into `run_dir` (replacing partial files); the model path.
    Parity and calibration images come from the split files the run itself used (recorded in
    its checkpoint), so a carved --val-fraction split never calibrates int8."""
    from export.options import ExportOptions
    from pipeline.exporting import run_export  # torch: on export

    name, method = split_backend(backend)
    engine, precision = BACKENDS[name]
    options = ExportOptions(
        trt=engine.export_flag == "--trt",
        openvino=engine.export_flag == "--openvino",
        precision=precision,
        calibration=method,
    )
    folder = export_folder(backend, run_dir)
    folder.mkdir(exist_ok=True)
    summary = run_export(weights, folder / "model.onnx", None, True, options)
    log.info("%s", summary)
    return deployed_model_path(backend, run_dir)
