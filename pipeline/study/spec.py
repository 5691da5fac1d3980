"""What a comparison is asked to do (CompareSpec) and where each of its runs lives.

Its own module so that running the study (compare.py) and reporting on it (report.py) both
read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from train.config import TrainConfig

LAUNCHERS = ("local", "ray", "slurm")
# compare's options of some launchers only (by option name): the launchers they apply to.
LAUNCHER_ONLY = {
    "retries": ("ray",),
    "gpus_per_run": ("ray", "slurm"),
    "ray_address": ("ray",),
    "slurm_partition": ("slurm",),
    "slurm_time": ("slurm",),
    "nodes_per_run": ("slurm",),
    "slurm_cluster": ("slurm",),
}


@dataclass(frozen=True)
class LaunchSpec:
    """Where the runs of a comparison execute (pipeline/study/launchers.py)."""

    launcher: str = "local"
    # Runs at once: local (default 1, back to back), ray (default: as many as the cluster
    # fits), slurm (the job array's parallelism; default: all).
    parallel: int | None = None
    retries: int = 2  # ray: a task whose process died is started again (it resumes)
    gpus_per_run: int = 0
    ray_address: str | None = None
    slurm_cluster: str = "slurm"  # "local": submitit's local executor, the same path minus sbatch
    slurm_partition: str | None = None
    slurm_time_min: int = 240
    nodes_per_run: int = 1


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
    # An earlier study to pair each loss's runs with (pipeline/study/reference_study.py).
    reference: Path | None = None
    launch: LaunchSpec = field(default_factory=LaunchSpec)

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
