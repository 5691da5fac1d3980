"""The predictor contract shared by every model format, and the metadata an exported model carries.

A predictor is any object with `.metadata: ModelMetadata` and
`__call__(images) -> Detections`, where `images` is float32 (B, 3, S, S), RGB, raw 0..255 values,
letterboxed to the top-left (normalization happens inside the model). PyTorch checkpoints, ONNX
files and TensorRT engines all expose this, so one evaluator scores them all.

The metadata travels inside the ONNX file as `metadata_props` (string -> string), each value
JSON-encoded under `softsample.<field>`, so a deployed model can be scored without the checkpoint
or the training config. JSON only: a model file must never be able to run code when it is read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.contract import MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD, Detections
from common.image import INPUT_FORMAT, PAD_VALUE
from deploy.errors import DeployError

logger = logging.getLogger(__name__)

PROP_PREFIX = "softsample."


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
    max_detections: int = MAX_DETECTIONS
    score_threshold: float = SCORE_THRESHOLD
    nms_iou: float = NMS_IOU
    extra: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Flat string props for ONNX metadata_props (or a TensorRT sidecar), JSON per value."""
        return {PROP_PREFIX + name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        """Parse and type-check props; `source` (the file) goes into every error message."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PROP_PREFIX + f.name
            if key not in props:
                if f.name in _OPTIONAL:
                    continue
                raise DeployError(
                    f"{source}: not a model exported by this pipeline (missing metadata key {key})"
                )
            try:
                value = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise DeployError(
                    f"{source}: metadata key {key} is not valid JSON ({exc.msg})"
                ) from exc
            values[f.name] = _check_type(f.name, value, source)
        if len(values["class_names"]) != len(values["category_ids"]):
            raise DeployError(
                f"{source}: metadata lists {len(values['class_names'])} class names but "
                f"{len(values['category_ids'])} category ids"
            )
        return cls(**values)


_OPTIONAL = frozenset({"extra"})


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
        "max_detections": (lambda v: _is_int(v) and v > 0),
        "score_threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
        "nms_iou": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
        "extra": (lambda v: isinstance(v, dict)),
    }
    if not checks[name](value):
        raise DeployError(
            f"{source}: metadata key {PROP_PREFIX}{name} has an invalid value {str(value)[:80]!r}"
        )
    if name in ("score_threshold", "nms_iou"):
        return float(value)
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
