"""OpenVINO int8 by NNCF's post-training quantization (`export --openvino --precision int8
--int8-method nncf`), the alternative to converting ONNX Runtime's QDQ model.

NNCF quantizes the fp32 IR itself: it inserts FakeQuantize before the inputs of convolutions
and of the element-wise ops OpenVINO's CPU plugin runs in int8, with its own range estimators
(min/max of the calibration activations, quantiles for some) and a fast bias correction of the
quantized convolutions. As with the QDQ model, the decode + NMS tail stays float: every op that
the head's raw outputs (`cls_logits`, `box_deltas`) do not depend on is in NNCF's ignored scope,
so box arithmetic, sigmoid scores and NMS are never quantized. The quantized convolutions'
weights are stored as int8 in the .bin (OpenVINO compresses a weight FakeQuantize when saving:
11 MB against the fp32 model's 45 MB for the tests' model); everything else stays float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.optional import import_or_explain
from export.errors import ExportError
from export.openvino import require_openvino
from export.quantize import RAW_OUTPUTS

NO_NNCF = "--int8-method nncf: NNCF is not installed: pip install '.[nncf]'"
_NOT_OPS = frozenset({"Parameter", "Constant", "Result"})


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only warnings and errors from these loggers meanwhile (NNCF logs a line per op it
    leaves alone; importing it makes torch warn that a CPU-only machine has no CUDA runtime)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(
            logging.ERROR if name.startswith("torch") else logging.WARNING
        )
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def require_nncf() -> ModuleType:
    """The nncf module, or one ExportError line saying which extra installs it."""
    with _quiet("torch.utils.cpp_extension"):
        return import_or_explain("nncf", NO_NNCF, ExportError)


def _network_op_names(model: Any) -> set[str]:
    """Friendly names of the ops the raw outputs depend on: the network without its tail."""
    starts = [
        op
        for op in model.get_ordered_ops()
        for output in op.outputs()
        if output.get_names() & set(RAW_OUTPUTS)
    ]
    if len(starts) < len(RAW_OUTPUTS):
        raise ExportError(
            f"model has no tensors {list(RAW_OUTPUTS)}: not an export of this pipeline"
        )
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in seen:
            continue
        seen.add(op.get_friendly_name())
        stack.extend(value.get_node() for value in op.input_values())
    return seen


def tail_op_names(model: Any) -> list[str]:
    """Friendly names of the post-processing ops (decode, scores, NMS): NNCF leaves them float."""
    network = _network_op_names(model)
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() not in _NOT_OPS and op.get_friendly_name() not in network
    ]


def quantize_with_nncf(onnx_path: Path, images: Iterable[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """The fp32 ONNX as an OpenVINO model quantized by NNCF on `images` ((3, S, S) float32
    each), and what was done, for the model's conversion record (save it with save_ir)."""
    ov, nncf = require_openvino(), require_nncf()
    model = ov.convert_model(str(onnx_path))
    batches = [image[None] for image in images]
    if not batches:
        raise ExportError("--int8-method nncf: no calibration images")
    tail = tail_op_names(model)
    quiet = _quiet("nncf", "torch.utils.cpp_extension")
    with quiet, contextlib.redirect_stdout(io.StringIO()):  # and NNCF's progress bars
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=tail, validate=False),
        )
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return quantized, {
        "int8_method": "nncf",
        "nncf_version": nncf.__version__,
        "calibration_method": "nncf",
        "calibration_images": len(batches),
        "fake_quantize_ops": fake_quantize,
        "float_tail_ops": len(tail),
    }
