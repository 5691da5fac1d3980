"""What an engine's exporter is handed: the files already written, where its own goes, and how.

Every engine with an export flag has one exporter (the engine table's `exporter`, a function
`export_<engine>(job: EngineJob) -> str` returning its "wrote ..." line). The export writes the
float32 ONNX (and the QDQ int8 ONNX when asked) first; the exporter turns that into its own file,
storing the model's metadata the way its backend reads it (common/engine_files.py). Checking the
file against ONNX Runtime is not the exporter's job: `pipeline export` opens every written file
through deploy's loader and compares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.options import ExportSettings


@dataclass(frozen=True)
class EngineJob:
    """One engine file to write.

    `stamp(precision, detail)` gives the model's metadata props for a file at that precision
    with that conversion detail (which images calibrated, the build's plan); `calibration()`
    reads the train split's calibration images (only int8 calls it); `fingerprint()` says which
    images those are, for the metadata.
    """

    onnx: Path  # the float32 ONNX: every engine's source and reference
    target: Path  # the file to write, named by the engine table
    options: ExportSettings
    quantized: Path | None  # model.int8.onnx (static QDQ) when this export wrote one
    stamp: Callable[[str, dict[str, Any]], dict[str, str]]
    calibration: Callable[[], np.ndarray]
    fingerprint: Callable[[], dict[str, Any]]

    @property
    def precision(self) -> str:
        return self.options.precision
