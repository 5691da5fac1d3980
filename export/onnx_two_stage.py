"""The two-stage detector as one ONNX graph: RPN, proposals' NMS, RoIAlign, the R-CNN head and
its class-aware NMS, all inside, traced from `FasterRcnnDetector.detect`.

The graph takes one image at a time (input (1, 3, S, S)): the detector's per-image steps (top-k
of each level, NMS, a variable number of proposals and detections) are traced, so the trace
unrolls them for the batch it saw. The runtimes feed such a graph image by image (deploy's
backends read the fixed batch from the input shape). RoIAlign becomes ONNX `RoiAlign` (opset 16+:
`coordinate_transformation_mode="output_half_pixel"`, torchvision's aligned=False), NMS
`NonMaxSuppression`; the outputs are the contract's num_dets, boxes, scores, labels.
"""

from __future__ import annotations

import onnx
import torch
from torch import nn

from common.contract import OUTPUT_NAMES, PostprocessConfig
from export.tracing import trace_to_onnx

TWO_STAGE_BATCH = 1  # the batch the graph is traced at, and takes


class _DetectionGraph(nn.Module):
    """forward(images) -> the padded detections of `detect`, as the graph's four outputs."""

    def __init__(self, model: nn.Module, thresholds: PostprocessConfig) -> None:
        super().__init__()
        self.model, self.thresholds = model, thresholds

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model.detect(images, self.thresholds)
        return tuple(found[name] for name in OUTPUT_NAMES)


def export_two_stage_graph(
    model: nn.Module, img_size: int, opset: int, thresholds: PostprocessConfig
) -> onnx.ModelProto:
    """The traced graph of `model` (float32 CPU, eval mode) at batch TWO_STAGE_BATCH."""
    dummy = torch.rand(TWO_STAGE_BATCH, 3, img_size, img_size) * 255.0
    graph = _DetectionGraph(model, thresholds).eval()
    return trace_to_onnx(graph, dummy, list(OUTPUT_NAMES), opset)
