"""Model file -> predictor: the engine table (common/engines.py) names the backend for each suffix,
so this is the one place a deployed model is opened (Detector, eval, predict, export's checks)."""

from __future__ import annotations

from pathlib import Path

from common.engines import DEPLOYED_SUFFIXES, engine_for_file, named_object
from deploy.backends.base import EngineBackend, RuntimeSettings
from deploy.errors import DeployError


def unsupported_file(path: Path, accepted: tuple[str, ...] = DEPLOYED_SUFFIXES) -> str:
    """The one line for a model file of a type no engine reads."""
    suffix = path.suffix.lower() or "(none)"
    return f"{path}: unsupported model file type {suffix!r}; expected one of {', '.join(accepted)}"


def open_deployed(path: Path, settings: RuntimeSettings | None = None) -> EngineBackend:
    """The runtime for an exported model file; every error line names the file."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: model file not found")
    engine = engine_for_file(path.suffix)
    if engine is None:
        raise DeployError(unsupported_file(path))
    backend = named_object(engine.backend)
    try:
        return backend.open(path, settings or RuntimeSettings())
    except DeployError as exc:  # "TensorRT is not installed" too names the file
        if str(path) in str(exc):
            raise
        raise DeployError(f"{path}: {exc}") from exc
