"""The predictor contract shared by every model format, and the metadata an exported model carries.

A predictor is any object with `.metadata: ModelMetadata` and
`__call__(images) -> Detections`, where `images` is float32 (B, 3, S, S), RGB, raw 0..255 values,
letterboxed to the top-left (normalization happens inside the model). PyTorch checkpoints, ONNX
files and TensorRT engines all expose this, so one evaluator scores them all.

The metadata travels inside the ONNX file as `metadata_props` (string -> string), each value
JSON-encoded under `softsample.<field>`, so a deployed model can be scored without the checkpoint
or the training config. JSON only: a model file must never be able to run code when it is read.
The thresholds the graph applies are one key, `softsample.postprocess`; files written before it
(three keys `softsample.score_threshold`, `.nms_iou`, `.max_detections`, top-k under a bare
`postprocess`) are still read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.contract import METADATA_PREFIX, POSTPROCESS_PROP, Detections, PostprocessConfig
from common.errors import InputError
from common.image import INPUT_FORMAT, PAD_VALUE
from deploy.errors import DeployError

logger = logging.getLogger(__name__)

PROP_PREFIX = METADATA_PREFIX
# The thresholds' keys in files written before POSTPROCESS_PROP (the bare one held top-k).
LEGACY_THRESHOLD_PROPS = ("score_threshold", "nms_iou", "max_detections")
LEGACY_POSTPROCESS_KEY = "postprocess"


class Predictor(Protocol):
    """What the evaluator needs from a model, whatever runs it."""

    metadata: ModelMetadata

    def __call__(self, images: np.ndarray) -> Detections: ...


@dataclass
class ModelMetadata:
    """Everything needed to feed a deployed model and to turn its outputs into COCO results.

    category_ids[i] is the COCO category id of class index i (ids may be any integers).
    """

    class_names: list[str]
    category_ids: list[int]
    img_size: int
    pad_value: int = PAD_VALUE
    input_format: str = INPUT_FORMAT
    loss: str = "unknown"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Flat string props for ONNX metadata_props (or a TensorRT sidecar), JSON per value."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "postprocess"}
        props = {PROP_PREFIX + name: json.dumps(value) for name, value in values.items()}
        return props | {POSTPROCESS_PROP: self.postprocess.to_json()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        """Parse and type-check props; `source` (the file) goes into every error message."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "postprocess":
                continue
            key = PROP_PREFIX + f.name
            if key not in props:
                if f.name in _OPTIONAL:
                    continue
                raise DeployError(
                    f"{source}: not a model exported by this pipeline (missing metadata key {key})"
                )
            values[f.name] = _check_type(f.name, _json_prop(props, key, source), source)
        values["postprocess"] = _read_postprocess(props, source)
        if len(values["class_names"]) != len(values["category_ids"]):
            raise DeployError(
                f"{source}: metadata lists {len(values['class_names'])} class names but "
                f"{len(values['category_ids'])} category ids"
            )
        return cls(**values)


_OPTIONAL = frozenset({"extra"})


def _json_prop(props: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise DeployError(f"{source}: metadata key {key} is not valid JSON ({exc.msg})") from exc


def _read_postprocess(props: dict[str, str], source: str) -> PostprocessConfig:
    """The one thresholds key, or an older file's three keys (and its bare top-k key)."""
    if POSTPROCESS_PROP in props:
        key, values = POSTPROCESS_PROP, _json_prop(props, POSTPROCESS_PROP, source)
    else:
        legacy = [PROP_PREFIX + name for name in LEGACY_THRESHOLD_PROPS]
        if not all(k in props for k in legacy):
            raise DeployError(
                f"{source}: not a model exported by this pipeline (missing metadata key "
                f"{POSTPROCESS_PROP})"
            )
        key = ", ".join(legacy)
        values = {
            name: _json_prop(props, k, source)
            for name, k in zip(LEGACY_THRESHOLD_PROPS, legacy, strict=True)
        }
        if LEGACY_POSTPROCESS_KEY in props:
            old = _json_prop(props, LEGACY_POSTPROCESS_KEY, source)
            if isinstance(old, dict) and "topk_per_level" in old:
                values["topk_per_level"] = old["topk_per_level"]
    if not isinstance(values, dict):
        raise DeployError(f"{source}: metadata key {key} has an invalid value {str(values)[:80]!r}")
    try:
        return PostprocessConfig(**values)
    except (InputError, TypeError) as exc:
        raise DeployError(f"{source}: metadata key {key} has an invalid value ({exc})") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(name: str, value: Any, source: str) -> Any:
    """Reject values of the wrong JSON type, so a bad file fails here and not mid-evaluation."""
    checks = {
        "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "category_ids": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v)),
        "img_size": (lambda v: _is_int(v) and v > 0),
        "pad_value": (lambda v: _is_int(v) and 0 <= v <= 255),
        "input_format": (lambda v: isinstance(v, str)),
        "loss": (lambda v: isinstance(v, str)),
        "extra": (lambda v: isinstance(v, dict)),
    }
    if not checks[name](value):
        raise DeployError(
            f"{source}: metadata key {PROP_PREFIX}{name} has an invalid value {str(value)[:80]!r}"
        )
    return value


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """Read ModelMetadata from an ONNX file without loading its weights (external data skipped)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise DeployError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    # protobuf parses many non-ONNX byte strings (an empty file, say) into an empty message.
    if model.ir_version == 0 or not model.HasField("graph"):
        raise DeployError(f"{path}: not an ONNX model (no graph or IR version)")
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_props(props, str(path))
