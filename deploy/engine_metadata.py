"""The metadata a TensorRT engine carries: a JSON sidecar beside `model.engine`.

An engine file is TensorRT's own opaque plan, so the ONNX metadata (class names, category ids,
image size, thresholds...) travels next to it as `<engine>.json`, together with what the plan is
tied to: the TensorRT version and the GPU (name, compute capability) it was built on. The runtime
compares those before deserializing, so a plan from another TensorRT or GPU fails with one line
that says which, instead of TensorRT's own error (or a crash) deep inside deserialization.
JSON only, like the ONNX metadata: reading it can never run code. export/tensorrt.py writes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from common.contract import EngineInfo
from common.engine_files import SIDECAR_FORMAT, sidecar_path
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata

logger = logging.getLogger(__name__)


def read_engine_metadata(engine_path: str | Path) -> tuple[ModelMetadata, EngineInfo]:
    """The model metadata and build info of an engine; DeployError naming the file if unusable."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise DeployError(
            f"{engine_path}: no metadata sidecar {path.name} beside it (engines built by "
            "`pipeline export --trt` have one; rebuild the engine)"
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != SIDECAR_FORMAT:
        raise DeployError(f"{path}: not an engine sidecar written by this pipeline")
    props = payload.get("onnx_props")
    if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
        raise DeployError(f"{path}: onnx_props must map strings to strings")
    return ModelMetadata.from_props(props, str(path)), _engine_info(payload.get("engine"), path)


def _engine_info(raw: Any, path: Path) -> EngineInfo:
    names = {f.name for f in fields(EngineInfo)}
    required = {"tensorrt_version", "gpu_name", "compute_capability", "precision"}
    if not isinstance(raw, dict) or not required <= raw.keys():
        raise DeployError(f"{path}: 'engine' must hold {', '.join(sorted(required))}")
    try:
        return EngineInfo(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise DeployError(f"{path}: malformed 'engine' entry ({exc})") from exc


def check_engine_compat(
    info: EngineInfo,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    source: str | Path,
) -> None:
    """Refuse a plan this TensorRT or GPU cannot run; warn when only the GPU model differs.

    TensorRT plans are tied to the exact TensorRT version and, by default, to the GPU's compute
    capability. Two GPUs of one architecture (say two boards of the same chip) can share a plan,
    which TensorRT allows with a warning, and so does this check.
    """
    if info.tensorrt_version != tensorrt_version:
        raise DeployError(
            f"{source}: engine built with TensorRT {info.tensorrt_version}, this machine has "
            f"{tensorrt_version}; rebuild it here with `pipeline export --trt`"
        )
    if info.compute_capability != compute_capability:
        raise DeployError(
            f"{source}: engine built for {info.gpu_name} (compute capability "
            f"{info.compute_capability}), this GPU is {gpu_name} ({compute_capability}); "
            "rebuild it here with `pipeline export --trt`"
        )
    if info.gpu_name != gpu_name:
        logger.warning(
            "%s: engine built on %s, running on %s (same compute capability %s); its kernels "
            "were timed on the other GPU",
            source,
            info.gpu_name,
            gpu_name,
            compute_capability,
        )
