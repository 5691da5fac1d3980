"""Loss names -> builders. A plain dict: `build_loss` looks the name up and fills options.

Each entry lists its options with defaults, so the CLI can show them (`pipeline losses`) and parse
`--loss-opt key=value` against the right types. The options are the fields of the loss's
dataclass; per-name overrides turn one class into several baselines (ce / balanced-ce / focal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from train.errors import LossSettingError
from train.losses.base import DetectionLoss
from train.losses.focal import FocalDetectionLoss, FocalStarDetectionLoss
from train.losses.ghm import GhmDetectionLoss
from train.losses.names import DETECTORS, HEAD_LOSS_NAMES, LOSS_NAMES
from train.losses.pisa import PisaCenterDetectionLoss, PisaDetectionLoss
from train.losses.sampling import OhemLoss, RandomSamplingLoss

# What the papers' COCO configs clip gradients at (max norm); GHM and PISA report NaN without it.
REFERENCE_GRAD_CLIP = 35.0


@dataclass(frozen=True)
class LossSpec:
    """A registered loss. grad_clip: the max grad norm it recommends (None: trainer default)."""

    name: str
    summary: str
    factory: Callable[..., DetectionLoss]
    defaults: dict[str, Any]
    grad_clip: float | None = None


def _spec(
    name: str,
    summary: str,
    factory: Callable[..., Any],
    grad_clip: float | None = None,
    **overrides: Any,
) -> LossSpec:
    """Defaults come from the factory dataclass's fields, then the per-name overrides."""
    defaults = {f.name: f.default for f in fields(factory)}
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"{name}: overrides for unknown options {sorted(unknown)}")
    defaults.update(overrides)
    return LossSpec(name, summary, factory, defaults, grad_clip)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        _spec(
            "ce", "sigmoid CE over all anchors / positives: the failing baseline",
            FocalDetectionLoss, alpha=-1.0, gamma=0.0,
        ),
        _spec(
            "balanced-ce", "alpha-balanced CE (alpha 0.75, the Focal Loss paper's best at gamma 0)",
            FocalDetectionLoss, alpha=0.75, gamma=0.0,
        ),
        _spec("focal", "Focal Loss, alpha 0.25 gamma 2 (Lin et al. 2017)", FocalDetectionLoss),
        _spec("focal-star", "FL*, gamma 4 beta 0 (Focal Loss paper, appendix)", FocalStarDetectionLoss),
        _spec(
            "ghm", "GHM-C (30 bins, momentum 0.75) + GHM-R (ASL1, x10) (Li et al. 2019)",
            GhmDetectionLoss, grad_clip=REFERENCE_GRAD_CLIP,
        ),
        _spec(
            "pisa", "focal + ISR-P (k 2, bias 0) + CARL (k 1, bias 0.2) (Cao et al. 2020)",
            PisaDetectionLoss, grad_clip=REFERENCE_GRAD_CLIP,
        ),
        _spec(
            "pisa-center", "PISA whose IoU-HLR prefers anchors centred inside the object (ours)",
            PisaCenterDetectionLoss, grad_clip=REFERENCE_GRAD_CLIP,
        ),
        _spec("random", "CE on 256 random anchors per image, 1:3 positives:negatives", RandomSamplingLoss),
        _spec("ohem", "CE on the 256 highest-loss anchors per image, 1:3 (OHEM)", OhemLoss),
    ]
}  # fmt: skip
if tuple(LOSSES) != LOSS_NAMES:  # the CLI offers LOSS_NAMES without importing this table
    raise RuntimeError(f"train/losses/names.py lists {LOSS_NAMES}, the registry {tuple(LOSSES)}")


def _head_losses() -> dict[str, LossSpec]:
    """The two-stage detector's R-CNN head losses (train/rcnn/head_losses.py)."""
    from train.rcnn.head_losses import OhemHeadLoss, PisaHeadLoss, RandomHeadLoss

    specs = [
        _spec("random", "R-CNN head: 512 random RoIs per image, 1:3 (Faster R-CNN's standard)",
              RandomHeadLoss),
        _spec("ohem", "R-CNN head: the 512 RoIs of highest classification loss, 1:3 (OHEM)",
              OhemHeadLoss),
        _spec("pisa", "R-CNN head: Score-HLR negatives with ISR-N, ISR-P, CARL (Cao et al. 2020)",
              PisaHeadLoss, grad_clip=REFERENCE_GRAD_CLIP),
    ]  # fmt: skip
    return {spec.name: spec for spec in specs}


HEAD_LOSSES = _head_losses()
if tuple(HEAD_LOSSES) != HEAD_LOSS_NAMES:
    raise RuntimeError(f"names.py lists {HEAD_LOSS_NAMES}, the registry {tuple(HEAD_LOSSES)}")
# Each detector's losses: the one-stage detector's over its anchors, the two-stage one's head's.
LOSS_TABLES: dict[str, dict[str, LossSpec]] = {"retinanet": LOSSES, "faster-rcnn": HEAD_LOSSES}
if tuple(LOSS_TABLES) != DETECTORS:
    raise RuntimeError(f"names.py lists {DETECTORS}, the registry {tuple(LOSS_TABLES)}")


def _coerce(key: str, raw: Any, default: Any) -> Any:
    """Parse a `--loss-opt` string against the type of the option's default."""
    if not isinstance(raw, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise LossSettingError(f"option {key}: expected true/false, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise LossSettingError(f"option {key}: expected {kind}, got {raw!r}") from exc
    return raw


def loss_spec(name: str, detector: str = "retinanet") -> LossSpec:
    """The registered loss `name` of `detector`; one line naming the valid ones otherwise."""
    table = LOSS_TABLES[detector]
    if name in table:
        return table[name]
    if detector != "retinanet" and name in LOSSES:
        raise LossSettingError(
            f"--loss {name}: the two-stage detector (--detector {detector}) trains its R-CNN "
            f"head with {', '.join(table)}; {name} is a one-stage loss (--detector retinanet)"
        )
    raise LossSettingError(f"unknown loss {name!r}; valid: {', '.join(sorted(table))}")


def resolve_options(
    name: str, options: dict[str, Any] | None = None, detector: str = "retinanet"
) -> dict[str, Any]:
    """The full option dict for `name`: defaults overridden by `options` (strings are parsed)."""
    spec = loss_spec(name, detector)
    resolved = dict(spec.defaults)
    for key, raw in (options or {}).items():
        if key not in spec.defaults:
            valid = ", ".join(sorted(spec.defaults))
            raise LossSettingError(f"loss {name!r} has no option {key!r}; valid: {valid}")
        resolved[key] = _coerce(key, raw, spec.defaults[key])
    return resolved


def build_loss(
    name: str, options: dict[str, Any] | None = None, detector: str = "retinanet"
) -> DetectionLoss:
    """A ready loss callable for `name` with `options` (unknown names, keys and values raise)."""
    resolved = resolve_options(name, options, detector)
    try:
        return loss_spec(name, detector).factory(**resolved)
    except ValueError as exc:
        raise LossSettingError(f"loss {name!r}: {exc}") from exc


def _shared_last(item: tuple[str, Any]) -> bool:
    """Sort key listing a loss's own options before the shared reg_* / sync_* ones."""
    return item[0].startswith(("reg_", "sync_"))


def describe_losses(detector: str = "retinanet") -> list[dict[str, Any]]:
    """Every loss of `detector` with its summary, recommended grad clip and options (default,
    help, choices)."""
    described = []
    for spec in LOSS_TABLES[detector].values():
        meta = {f.name: f.metadata for f in fields(spec.factory)}
        options = [
            {
                "name": key,
                "default": default,
                "help": meta[key].get("help", ""),
                "choices": list(meta[key].get("choices") or []),
            }
            for key, default in sorted(spec.defaults.items(), key=_shared_last)
        ]
        described.append(
            {
                "name": spec.name,
                "summary": spec.summary,
                "grad_clip": spec.grad_clip,
                "options": options,
            }
        )
    return described
