"""Hand-made model files for tests: metadata written onto any ONNX graph, and the post-processing
graph alone (head outputs in, detections out), so tests can feed it hand-made logits."""

from __future__ import annotations

from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from common.contract import PostprocessConfig
from deploy.metadata import PROP_PREFIX, ModelMetadata
from export.graph_postprocess import MIN_OPSET, build_postprocess_nodes, output_value_infos


def write_onnx_metadata(model: Any, metadata: ModelMetadata) -> None:
    """Replace this pipeline's props on an onnx.ModelProto in place (other props are kept)."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PROP_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.to_props().items()]:
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value


def build_postprocess_model(
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    num_classes: int,
    img_size: int,
    config: PostprocessConfig,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """A standalone model from inputs `cls_logits` (B, N, K), `box_deltas` (B, N, 4) to the
    detections: lets tests feed hand-made head outputs to the graph half alone."""
    n = int(anchors.shape[0])
    inputs = [
        helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["batch", n, num_classes]),
        helper.make_tensor_value_info("box_deltas", TensorProto.FLOAT, ["batch", n, 4]),
    ]
    nodes, initializers = build_postprocess_nodes(
        "cls_logits", "box_deltas", anchors, anchors_per_level, num_classes, img_size, config
    )
    graph = helper.make_graph(
        nodes, "postprocess", inputs, output_value_infos("batch", config), initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
