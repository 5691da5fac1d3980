"""The options of `pipeline export`, and which engine an export builds.

Torch-free: the CLI generates `pipeline export`'s options from these fields (pipeline/options.py).
The engine flags (`--openvino`, `--trt`, ...) are not written here: each row of the engine table
with an export flag becomes a bool field of ExportOptions, named after its flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from common.contract import (
    CALIBRATION_METHODS,
    MAX_DETECTIONS,
    NMS_IOU,
    SCORE_THRESHOLD,
    PostprocessConfig,
)
from common.engines import ENGINES, ENGINES_BY_NAME, EXPORT_PRECISIONS, Engine
from common.settings import conf_setting, iou_setting, max_dets_setting, setting

DEFAULT_OPSET = 17  # the opset every export writes unless --opset says otherwise
ONNX = ENGINES_BY_NAME["onnx"]
FLAGGED_ENGINES = tuple(e for e in ENGINES if e.export_flag)
_FLAGGED_PRECISIONS = " or ".join(
    f"{e.export_flag} ({', '.join(e.precisions)})" for e in FLAGGED_ENGINES
)


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    """The options of `pipeline export` every export takes (defaults: plain ONNX at
    DEFAULT_OPSET); ExportOptions adds one flag per engine of the table."""

    opset: int = setting(
        DEFAULT_OPSET, "ONNX opset of the exported graph (17 or later).", min=DEFAULT_OPSET
    )
    precision: str = setting(
        "fp32",
        f"Engine precision with {_FLAGGED_PRECISIONS}; otherwise fp16/int8 write "
        "model.<precision>.onnx (int8: static QDQ quantization for ONNX Runtime, post-processing "
        "kept in float; OpenVINO's int8 IR is converted from it).",
        choices=EXPORT_PRECISIONS,
    )
    batch: int = setting(
        1,
        "Largest batch the TensorRT engine accepts (its optimization profile is 1 / N / N).",
        min=1,
        flags=("--batch-size", "--batch"),
    )
    workspace_gb: float = setting(
        4.0,
        "TensorRT builder workspace limit in GiB.",
        min=0,
        min_open=True,
        flags=("--workspace",),
    )
    calib_images: int = setting(
        128,
        "Training images used to calibrate int8 (spread over the split; their list's hash is "
        "recorded in the model).",
        min=1,
        flags=("--calib-images", "--calibration-images"),
    )
    # int8 calibrator; None: each engine's usual
    calibration: str | None = setting(
        None,
        "int8 calibrator: each activation's range from its min/max, from the histogram's "
        "entropy-minimizing threshold, or from its 99.999th percentile (ONNX Runtime's three; "
        "OpenVINO's int8 IR inherits it). Default: minmax; TensorRT 10's own: entropy.",
        choices=CALIBRATION_METHODS,
    )
    int8_method: str = setting(
        "qdq",
        "OpenVINO int8: convert ONNX Runtime's QDQ model (the same quantization as onnx-int8, "
        "with --calibration and --max-ap-drop), or quantize the fp32 IR with NNCF (pip install "
        "'.[nncf]'; NNCF's own ranges and bias correction).",
        choices=("qdq", "nncf"),
    )
    # int8 for ONNX Runtime / OpenVINO: pipeline/int8_budget.py
    max_ap_drop: float | None = setting(
        None,
        "int8: keep the layers that lose the most (lowest SQNR) in float until the int8 AP "
        "is within POINTS of fp32 on the first half of the val split; prints which stayed float.",
        min=0,
        metavar="POINTS",
    )
    img_size: int | None = setting(
        None, "Input size of the exported model (default: the size it trained at).", min=32
    )
    # None: the post-processing defaults (common.contract.PostprocessConfig)
    score_threshold: float | None = conf_setting(
        f"Score threshold baked into the graph (default {SCORE_THRESHOLD:g})."
    )
    nms_iou: float | None = iou_setting(f"NMS IoU baked into the graph (default {NMS_IOU:g}).")
    max_detections: int | None = max_dets_setting(
        f"Detections per image the graph returns at most (default {MAX_DETECTIONS})."
    )

    def postprocess(self) -> PostprocessConfig:
        """The thresholds baked into the graph: the defaults, less what was given."""
        given = {
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
        }
        given = {k: v for k, v in given.items() if v is not None}
        return dataclasses.replace(PostprocessConfig(), **given)


def _engine_flag(engine: Engine) -> tuple[str, type, Any]:
    help_text = f"Also write {engine.export_help}."
    return engine.flag_field, bool, setting(False, help_text, flags=(engine.export_flag,))


ExportOptions = dataclasses.make_dataclass(
    "ExportOptions",
    [_engine_flag(engine) for engine in FLAGGED_ENGINES],
    bases=(ExportSettings,),
    frozen=True,
    kw_only=True,
)
ExportOptions.__module__ = __name__
ExportOptions.__doc__ = "The options of `pipeline export`: ExportSettings plus a flag per engine."


def engines_asked(options: ExportSettings) -> list[Engine]:
    """The engines whose export flag is set."""
    return [e for e in FLAGGED_ENGINES if getattr(options, e.flag_field)]


def engine_asked(options: ExportSettings) -> Engine:
    """The engine this export builds besides the fp32 ONNX (ONNX itself when no flag is set)."""
    asked = engines_asked(options)
    return asked[0] if asked else ONNX
