"""Shared pytest setup: tests marked `gpu` run only where TensorRT and a CUDA GPU are usable."""

from __future__ import annotations

import importlib.util

import pytest


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


def _missing_gpu_stack() -> str | None:
    """Why `gpu` tests cannot run here, or None when they can."""
    if not _installed("tensorrt"):
        return "TensorRT is not installed"
    if not any(_installed(name) for name in ("cuda.bindings", "cuda.cudart", "pycuda")):
        return "neither cuda-python nor pycuda is installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = _missing_gpu_stack() if gpu_items else None
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {reason}"))
