"""Static check that an ONNX file is something TensorRT 10's ONNX parser will accept.

Run before building an engine (and in CPU-only CI, where TensorRT is absent) so an unsupported op
or a dynamic shape fails in seconds with a readable list instead of deep inside a build. The rules
come from onnx-tensorrt's docs/operators.md support matrix and its "Restrictions" column, limited to
the ops this project emits plus the usual conv-net ops; an op outside the list is reported even if
a newer TensorRT might take it, so that widening the list is a deliberate, reviewed change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
from onnx import TensorProto

MIN_OPSET = 17
NMS_TOPK_BOX_LIMIT = 5000  # TensorRT's NMS layer ranks at most this many boxes per image

TENSORRT_OPS = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
    Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
    GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid HardSwish Identity If
    InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean
    Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize RoiAlign Round ScatterElements
    ScatterND Selu Shape Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split
    Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905 (a word list reads better than 110 quoted names)
)

# op -> indices of inputs the parser needs as initializers / constants (operators.md restrictions)
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "TopK": (1,),
    "NonMaxSuppression": (2, 3, 4),
    "InstanceNormalization": (1, 2),
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CumSum": (1,),
}

IO_TYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.BOOL,
}


def all_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """These nodes and every node inside their If/Loop/Scan bodies."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g.node)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from all_nodes(sub.node)


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and Identity outputs of those (the legacy exporter's)."""
    names = {init.name for init in graph.initializer}
    names |= {o for n in all_nodes(graph.node) if n.op_type == "Constant" for o in n.output}
    changed = True
    while changed:
        more = {
            n.output[0]
            for n in all_nodes(graph.node)
            if n.op_type == "Identity" and n.input[0] in names
        }
        changed = not more <= names
        names |= more
    return names


def _check_opset(model: onnx.ModelProto) -> list[str]:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx", 0)
    return [] if opset >= MIN_OPSET else [f"opset {opset} < {MIN_OPSET} (required)"]


def _check_ops(model: onnx.ModelProto) -> list[str]:
    problems = []
    graph = model.graph
    constants = _constant_names(graph)
    seen_unsupported: set[str] = set()
    for node in all_nodes(graph.node):
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if node.op_type not in TENSORRT_OPS:
            if node.op_type not in seen_unsupported:
                problems.append(f"op {node.op_type} is not in TensorRT 10's supported ONNX ops")
                seen_unsupported.add(node.op_type)
            continue
        for i in CONSTANT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in constants:
                problems.append(f"{where}: input {i} ({node.input[i]}) must be a constant")
    return problems


def _check_io(model: onnx.ModelProto) -> list[str]:
    problems = []
    initializers = {init.name for init in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers]
    for kind, value in [("input", v) for v in values] + [("output", v) for v in model.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in IO_TYPES:
            type_name = TensorProto.DataType.Name(tensor_type.elem_type)
            problems.append(f"graph {kind} {value.name}: type {type_name} unsupported")
        if not tensor_type.HasField("shape"):
            problems.append(f"graph {kind} {value.name}: no shape (needs static dims after 0)")
            continue
        for axis, dim in enumerate(tensor_type.shape.dim):
            if axis > 0 and not (dim.HasField("dim_value") and dim.dim_value > 0):
                shown = dim.dim_param or "?"
                problems.append(
                    f"graph {kind} {value.name}: dim {axis} is dynamic ({shown}); "
                    "only dim 0 (batch) may be"
                )
    return problems


def _check_nms_size(model: onnx.ModelProto) -> list[str]:
    """TensorRT's NMS ranks at most NMS_TOPK_BOX_LIMIT boxes; more would silently drop some."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best-effort here; the op/IO checks still ran
        return []
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.value_info}
    problems = []
    for node in inferred.graph.node:
        if node.op_type != "NonMaxSuppression" or node.input[0] not in shapes:
            continue
        dims = shapes[node.input[0]].dim
        if len(dims) == 3 and dims[1].dim_value > NMS_TOPK_BOX_LIMIT:
            problems.append(
                f"{node.name}: {dims[1].dim_value} candidate boxes > TensorRT's NMS limit "
                f"{NMS_TOPK_BOX_LIMIT} (lower topk_per_level)"
            )
    return problems


# Ops TensorRT's ONNX parser builds from a plugin of libnvinfer_plugin, which the builder and
# the runtime load first (trt.init_libnvinfer_plugins; export/tensorrt.py and deploy do).
PLUGIN_OPS = {"RoiAlign": "ROIAlign_TRT"}


def tensorrt_plugins(model: onnx.ModelProto) -> list[str]:
    """What a TensorRT build of `model` needs beyond the parser: one line per plugin op."""
    used = {node.op_type for node in all_nodes(model.graph.node)}
    return [
        f"{op} runs as TensorRT's {plugin} plugin (libnvinfer_plugin, TensorRT >= 8.6)"
        for op, plugin in PLUGIN_OPS.items()
        if op in used
    ]


def check_tensorrt_compat(onnx_path: str | Path | onnx.ModelProto) -> list[str]:
    """Problems that would stop (or silently change) a TensorRT 10 build; empty means none found.

    Checks: opset >= 17; every op supported by the parser and in the default domain; inputs the
    parser needs constant (TopK's K, NMS thresholds, ...) are initializers or Constant outputs;
    graph inputs and outputs have supported types and static dims except dim 0; NMS sees at most
    5000 boxes. Accepts a path or an already loaded model.
    """
    if isinstance(onnx_path, onnx.ModelProto):
        model = onnx_path
    else:
        model = onnx.load(str(onnx_path), load_external_data=False)
    return _check_opset(model) + _check_ops(model) + _check_io(model) + _check_nms_size(model)
