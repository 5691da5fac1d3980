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


def _long_ones_first(items: list[pytest.Item]) -> None:
    """Order the modules: those with slow tests that do not need the detecting model, then those
    that do, then the rest (stable within each). `make test` hands whole modules to the
    pytest-xdist workers in this order (--dist loadscope --no-loadscope-reorder): the long ones
    first, so no worker starts one when the other has nothing left, and those that wait for the
    detecting model (trained meanwhile in the background) after those that do not."""
    slow = {getattr(item, "module", None) for item in items if item.get_closest_marker("slow")}

    def order(item: pytest.Item) -> int:
        module = getattr(item, "module", None)
        if module not in slow:
            return 2
        return 1 if "detecting_run" in vars(module) else 0

    items.sort(key=order)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _long_ones_first(items)
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


# the background trainer of the detecting model, in the controller of a whole-suite xdist run
_TRAINER = pytest.StashKey["subprocess.Popen"]()


def _runs_the_whole_suite(config: pytest.Config) -> bool:
    """True when pytest was started on the tests folder as a whole (`make test`), not on a part
    of it: only then does every session need the detecting model."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    args = [Path(arg).resolve() for arg in config.args]
    return all(arg in (here, here.parent) for arg in args)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In the pytest-xdist controller of a whole-suite run, start training the detecting model
    (tests/detecting_model.py) before the workers start: they collect meanwhile, and whichever
    first needs the model waits for it with its core lent to the trainer."""
    import os

    config = session.config
    workers = getattr(config.option, "numprocesses", None)
    factory = getattr(config, "_tmp_path_factory", None)
    if os.environ.get("PYTEST_XDIST_WORKER") or not workers or factory is None:
        return
    if _runs_the_whole_suite(config):
        from tests.detecting_model import start_background_training

        config.stash[_TRAINER] = start_background_training(factory.getbasetemp())


def pytest_sessionfinish(session: pytest.Session) -> None:
    trainer = session.config.stash.get(_TRAINER, None)
    if trainer is not None and trainer.poll() is None:  # the session ended first (-x, Ctrl-C)
        trainer.kill()
        trainer.wait()
