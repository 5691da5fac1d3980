"""Deployment: model file -> detections and scores, never importing torch. Imports common/ only.

FACE lists the modules the other stages may import (tests/common/test_architecture.py enforces
it): `runtimes.open_deployed` opens any engine's file through the table of common/engines.py (one
`backends/` class per engine, all `backends.base.EngineBackend`); `detector.Detector` is the
Python API; `evaluate` the one COCO evaluator and timer; `narrow` a deployed model's thresholds
raised exactly; `agreement` two files' detections compared; `eval_report` and `draw` its reports
and pictures; `metadata` and `preprocess` the model file's metadata and input; the errors.
"""

FACE = (
    "agreement", "backends.base", "backends.onnxruntime", "backends.openvino", "detector", "draw",
    "errors", "eval_report", "evaluate", "metadata", "narrow", "preprocess", "runtimes",
)  # fmt: skip
