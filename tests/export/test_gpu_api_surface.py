"""Every TensorRT / CUDA-runtime / ONNX Runtime name our code uses exists in the installed version.

The names are not listed by hand: they are read with `ast` from the modules that use them
(`trt.X.Y`, `self._rt.X`, `self._call("cudaX", ...)`, `ort.X`, and methods on the variables that
hold TensorRT or ONNX Runtime objects), so a new use is checked the day it is written. Names the
code only reaches behind `hasattr(obj, "name")` are optional. The `gpu` tests run where TensorRT,
cuda-python and a GPU are present (GPU CI); the derivation itself is checked everywhere.

Without a GPU (or torch) the same checks run against installed packages with
`pytest --noconftest -m gpu tests/export/test_gpu_api_surface.py`.
"""

from __future__ import annotations

import ast
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

TENSORRT_SOURCES = ("export/tensorrt.py", "export/trt_calibrator.py", "deploy/backends/tensorrt.py")
CUDART_SOURCES = ("deploy/backends/cuda_memory.py",)
ONNXRUNTIME_SOURCES = (
    "deploy/backends/onnxruntime.py",
    "export/onnx.py",
    "scripts/check_ort_providers.py",
)
# The names our modules give each package (`self._trt` counts as `_trt`).
TENSORRT_ALIASES = frozenset({"trt", "_trt"})
CUDART_ALIASES = frozenset({"rt", "_rt"})
ONNXRUNTIME_ALIASES = frozenset({"ort"})
# Variables holding a package's objects -> the class whose methods and properties they use.
TENSORRT_RECEIVERS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "engine": "ICudaEngine",
    "_engine": "ICudaEngine",
    "context": "IExecutionContext",
    "_context": "IExecutionContext",
    "parser": "OnnxParser",
    "_runtime": "Runtime",
    "profile": "IOptimizationProfile",
    "layer": "ILayer",
    "tensor": "ITensor",
    "cache": "ITimingCache",
    "error": "ParserError",
}
CUDART_RECEIVERS = {"props": "cudaDeviceProp"}
ONNXRUNTIME_RECEIVERS = {
    "session": "InferenceSession",
    "_session": "InferenceSession",
    "options": "SessionOptions",
    "binding": "IOBinding",
}
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _trees(sources: Iterable[str]) -> list[ast.AST]:
    return [ast.parse((ROOT / path).read_text(), path) for path in sources]


def _root_name(node: ast.AST) -> str | None:
    """`trt` for trt.X, `_trt` for self._trt.X; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def _chain(node: ast.Attribute) -> tuple[str | None, tuple[str, ...]]:
    """(root name, attribute path) of a.b.c.d: ("a", ("b", "c", "d"))."""
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        root = _root_name(current)
        if root is not None and isinstance(current.value, ast.Name) and current.value.id == "self":
            return root, tuple(reversed(parts))
        parts.append(current.attr)
        current = current.value
    return _root_name(current), tuple(reversed(parts))


def _guarded(trees: list[ast.AST]) -> set[str]:
    """Names the code only uses after `hasattr(obj, "name")`: optional in some versions."""
    return {
        node.args[1].value
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "hasattr"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
    }


def used_names(
    sources: Iterable[str], aliases: frozenset[str], receivers: dict[str, str]
) -> set[tuple[str, ...]]:
    """Attribute paths under the package (`("BuilderFlag", "FP16")`) and, for receivers,
    `(class, method)`; hasattr-guarded names left out."""
    trees = _trees(sources)
    optional = _guarded(trees)
    names: set[tuple[str, ...]] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            root, path = _chain(node)
            if not path or path[-1] in optional:
                continue
            if root in aliases:
                names.add(path)
            elif root in receivers and len(path) == 1:
                names.add((receivers[root], path[0]))
    return names


def cudart_call_names(sources: Iterable[str] = CUDART_SOURCES) -> set[str]:
    """Functions called by name through `self._call("cudaX", ...)`."""
    return {
        node.args[0].value
        for tree in _trees(sources)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_call"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def _missing(module: Any, names: Iterable[tuple[str, ...]]) -> list[str]:
    missing = []
    for path in sorted(names):
        obj = module
        for part in path:
            if not hasattr(obj, part):
                missing.append(".".join(path))
                break
            obj = getattr(obj, part)
    return missing


# --------------------------------------------------------------- the derivation (runs anywhere)
def test_derivation_finds_the_names_the_code_is_known_to_use() -> None:
    trt_names = used_names(TENSORRT_SOURCES, TENSORRT_ALIASES, TENSORRT_RECEIVERS)
    assert {
        ("Builder",),
        ("Runtime",),
        ("BuilderFlag", "PREFER_PRECISION_CONSTRAINTS"),
    } <= trt_names
    assert {
        ("ILogger", "Severity", "ERROR"),
        ("IExecutionContext", "execute_async_v3"),
    } <= trt_names
    assert ("IBuilderConfig", "set_memory_pool_limit") in trt_names
    assert ("BuilderFlag", "TF32") not in trt_names  # behind hasattr: optional
    cudart = used_names(CUDART_SOURCES, CUDART_ALIASES, CUDART_RECEIVERS)
    assert ("cudaError_t", "cudaSuccess") in cudart and ("cudaGraphDestroy",) in cudart
    assert {"cudaSetDevice", "cudaGraphInstantiate", "cudaMemcpyAsync"} <= cudart_call_names()
    ort_names = used_names(ONNXRUNTIME_SOURCES, ONNXRUNTIME_ALIASES, ONNXRUNTIME_RECEIVERS)
    assert {("InferenceSession",), ("InferenceSession", "get_providers")} <= ort_names


# ----------------------------------------------------------- the installed packages (GPU CI)
@pytest.mark.gpu
def test_tensorrt_has_every_name_we_use() -> None:
    trt = pytest.importorskip("tensorrt")
    from export.tensorrt import TENSORRT_PRECISIONS as PRECISIONS
    from export.tensorrt import plan_build, tensorrt_major

    names = used_names(TENSORRT_SOURCES, TENSORRT_ALIASES, TENSORRT_RECEIVERS)
    major = tensorrt_major(trt.__version__)
    for precision in PRECISIONS:  # flags reached by getattr(trt.BuilderFlag, name)
        names |= {("BuilderFlag", flag) for flag in plan_build(major, precision).builder_flags}
    assert _missing(trt, names) == [], f"TensorRT {trt.__version__}"


@pytest.mark.gpu
def test_cuda_runtime_has_every_name_we_use() -> None:
    pytest.importorskip("cuda")
    from deploy.backends.cuda_memory import _import_cudart

    try:
        cudart = _import_cudart()
    except ImportError:
        pytest.skip("cuda-python is not installed")
    names = used_names(CUDART_SOURCES, CUDART_ALIASES, CUDART_RECEIVERS)
    names |= {(name,) for name in cudart_call_names()}
    assert _missing(cudart, names) == [], cudart.__name__


@pytest.mark.gpu
def test_onnxruntime_gpu_has_every_name_and_provider_we_use() -> None:
    ort = pytest.importorskip("onnxruntime")
    names = used_names(ONNXRUNTIME_SOURCES, ONNXRUNTIME_ALIASES, ONNXRUNTIME_RECEIVERS)
    assert _missing(ort, names) == [], ort.__version__
    try:
        importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the CPU onnxruntime: no GPU providers to check")
    assert set(PROVIDERS) <= set(ort.get_available_providers())
