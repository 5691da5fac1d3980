"""A module traced to an ONNX graph in memory (PyTorch's TorchScript-based exporter).

One place for the exporter's settings both graphs use: the one-stage network and the whole
two-stage detector. The tracer's remarks about shape arithmetic are kept at debug level.
"""

from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch
from torch import nn

from common.contract import INPUT_NAME

log = logging.getLogger(__name__)


def trace_to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    output_names: list[str],
    opset: int,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> onnx.ModelProto:
    """`module(example)` traced with input INPUT_NAME, constants folded, at `opset`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    for warning in caught:
        log.debug("torch.onnx.export: %s: %s", warning.category.__name__, warning.message)
    return onnx.load_from_string(buffer.getvalue())
