"""What a comparison is asked to do (CompareSpec) and where each of its runs lives.

Its own module so that running the study (compare.py) and reporting on it (report.py) both
read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from train.config import TrainConfig


@dataclass
class CompareSpec:
    """What to compare. `base` is the training config every run starts from."""

    out: Path
    losses: list[str]
    seeds: list[int]
    backends: list[str]
    baseline: str
    resamples: int
    base: TrainConfig
    loss_options: dict[str, dict[str, str]] = field(default_factory=dict)
    # Study name -> registry loss, for --variant names (a loss's own name maps to itself).
    variants: dict[str, str] = field(default_factory=dict)
    # An earlier study to pair each loss's runs with (pipeline/study/reference.py).
    reference: Path | None = None

    def run_config(self, loss: str, seed: int) -> TrainConfig:
        return replace(
            self.base,
            out=run_dir(self.out, loss, seed),
            loss=self.variants.get(loss, loss),
            seed=seed,
            loss_options=dict(self.loss_options.get(loss, {})),
            overwrite=False,
        )


def run_dir(out: Path, loss: str, seed: int) -> Path:
    return Path(out) / "runs" / f"{loss}-s{seed}"
