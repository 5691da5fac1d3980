"""Deployment: model file -> detections and scores, never importing torch. `runtimes.open_deployed`
opens any engine's file through the table of common/engines.py (one `backends/` class per engine,
all `backends.base.EngineBackend`); `detector.Detector` is the Python API; `evaluate` the one COCO
evaluator and timer; `narrow` a deployed model's thresholds raised exactly; `eval_report` its
reports. Imports common/ only."""
