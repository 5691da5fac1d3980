"""Optional packages (OpenVINO, TensorRT, ...): imported when asked for, or one clear line."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_or_explain(name: str, explanation: str, error: type[Exception]) -> ModuleType:
    """The module `name`, or `error(explanation)` (a UserError: one line, exit 2) when it is
    not installed; each stage passes its own error type."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise error(explanation) from exc
