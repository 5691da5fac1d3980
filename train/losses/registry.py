"""Loss names -> builders. A plain dict: `build_loss` looks the name up and fills options.

Each entry lists its options with defaults, so the CLI can show them (`pipeline losses`) and parse
`--loss-opt key=value` against the right types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from train.losses.base import DetectionLoss
from train.losses.focal import FocalDetectionLoss


@dataclass(frozen=True)
class LossSpec:
    name: str
    summary: str
    factory: Callable[..., DetectionLoss]
    defaults: dict[str, Any]


def _spec(name: str, summary: str, factory: Callable[..., Any], **overrides: Any) -> LossSpec:
    """Defaults come from the factory dataclass's fields, then the per-name overrides."""
    defaults = {f.name: f.default for f in fields(factory)}
    defaults.update(overrides)
    return LossSpec(name, summary, factory, defaults)


LOSSES: dict[str, LossSpec] = {
    "focal": _spec("focal", "Focal Loss, alpha 0.25 gamma 2 (Lin et al. 2017)", FocalDetectionLoss),
}


class UnknownLossError(ValueError):
    """A loss name or option the registry does not know."""


def _coerce(key: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise UnknownLossError(f"option {key}: expected true/false, got {raw!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return type(default)(float(raw)) if isinstance(default, int) and "." not in raw else float(raw)
        except ValueError as exc:
            raise UnknownLossError(f"option {key}: expected a number, got {raw!r}") from exc
    return raw


def resolve_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full option dict for `name`: defaults overridden by `options` (strings are parsed)."""
    if name not in LOSSES:
        raise UnknownLossError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    spec = LOSSES[name]
    resolved = dict(spec.defaults)
    for key, raw in (options or {}).items():
        if key not in spec.defaults:
            valid = ", ".join(sorted(spec.defaults))
            raise UnknownLossError(f"loss {name!r} has no option {key!r}; valid: {valid}")
        resolved[key] = _coerce(key, raw, spec.defaults[key])
    return resolved


def build_loss(name: str, options: dict[str, Any] | None = None) -> DetectionLoss:
    """A ready loss callable for `name` with `options` (unknown names and keys raise)."""
    return LOSSES[name].factory(**resolve_options(name, options))
