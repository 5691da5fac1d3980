"""What an engine's model file holds besides the network, written by export and read by deploy.

The ONNX file keeps the model's metadata in its own `metadata_props`; the other engines keep the
same props in their own place, named here once for the exporter that writes them and the backend
that reads them: the OpenVINO IR in its rt_info (one section, plus the precision it is meant to
run at), the TensorRT plan, which is opaque, in a JSON sidecar beside it.
"""

from __future__ import annotations

from pathlib import Path

# OpenVINO IR: the model's props under this rt_info section; the run-time precision under its key.
IR_RT_INFO_SECTION = "detector"
IR_PRECISION_KEY = "inference_precision"
# TensorRT: `model.engine.json` beside `model.engine`, tagged with this format.
SIDECAR_FORMAT = "softsample-engine/1"


def sidecar_path(engine_path: str | Path) -> Path:
    """`model.engine` -> `model.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")
