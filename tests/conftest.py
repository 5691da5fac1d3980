"""Shared pytest setup: hardware markers, each gated on exactly what its tests need.

- `cuda`: torch on a CUDA device, nothing else (the losses' GPU path). Runs wherever
  `torch.cuda.is_available()`, with or without TensorRT.
- `gpu`: TensorRT engines: TensorRT, CUDA Python bindings (cuda-python or pycuda) and a CUDA GPU.

Where the stack is missing, the marked tests are skipped with a reason naming what is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


def _no_cuda_device() -> str | None:
    """Why torch cannot run on a CUDA device here, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    return "no CUDA device visible to torch (torch.cuda.is_available() is False)"


def _missing_gpu_stack() -> str | None:
    """Why `gpu` tests cannot run here, or None when they can."""
    if not _installed("tensorrt"):
        return "TensorRT is not installed"
    if not any(_installed(name) for name in ("cuda.bindings", "cuda.cudart", "pycuda")):
        return "neither cuda-python nor pycuda is installed"
    return _no_cuda_device()


# marker -> what must hold for its tests to run (None) or why they cannot (a reason).
HARDWARE_MARKERS: dict[str, Callable[[], str | None]] = {
    "cuda": _no_cuda_device,
    "gpu": _missing_gpu_stack,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, missing in HARDWARE_MARKERS.items():
        marked = [item for item in items if item.get_closest_marker(marker) is not None]
        reason = missing() if marked else None
        if reason is not None:
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes with one
    thread, and so do the processes its tests start: two torch processes that each take every
    core slow each other many times over."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
