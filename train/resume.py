"""Exact resume: what last.pt must hold beyond the weights, and putting it back.

A run killed after epoch e and resumed with `--resume runs/NAME` ends with the same weights as
one that was never interrupted, because last.pt carries everything the remaining epochs depend
on: optimizer, LR schedule, AMP scaler, EMA weights, the losses' running state (GHM's moving
averages), every rank's RNG states, and the position (epoch, step). The data order needs no
state: it is a function of (seed, epoch) (train/data/loader.py). All of it is tensors and plain
Python types, so last.pt still loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import InputError
from train.builders import resolved_loss_options
from train.checkpoint import load_checkpoint
from train.config import RUNTIME_FIELDS, TrainConfig
from train.distributed import all_gather_objects, current_rank_and_world
from train.ema import ModelEma
from train.losses.base import load_loss_state_dict, loss_state_dict

log = logging.getLogger(__name__)
# RUNTIME_FIELDS (train/config.py: how to run, not what to train) come from the command line.
PATH_FIELDS = (
    "out", "data", "pretrained", "init_from", "resume",
    "train_ann", "train_images", "val_ann", "val_images",
)  # fmt: skip
LOSS_OPTION_FIELDS = ("loss_options", "reg_loss")


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (if used) CUDA generator states."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from `TrainConfig.to_dict()` output; keys this version lacks are dropped."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning("stored config has options this version does not know: %s", unknown)
    kept = {k: v for k, v in values.items() if k in known}
    for name in PATH_FIELDS:
        if kept.get(name) is not None:
            kept[name] = Path(kept[name])
    return TrainConfig(**kept)


def last_checkpoint(run_dir: Path) -> Path:
    """runs/NAME -> runs/NAME/last.pt (a path to a .pt file is taken as is)."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".pt" else run_dir / "last.pt"
    if not path.is_file():
        raise InputError(f"--resume {run_dir}: no last.pt there to resume from")
    return path


def load_resume_payload(run_dir: Path) -> dict[str, Any]:
    """last.pt's contents, checked to hold the training state a resume needs."""
    path = last_checkpoint(run_dir)
    payload = load_checkpoint(path)
    if "train_config" in payload and "resume" not in payload:
        epochs = payload["train_config"].get("epochs")
        if payload.get("epoch") == epochs:
            raise InputError(
                f"{path}: the run finished all {epochs} epochs, so there is nothing to resume "
                "(its training state was dropped to keep it small; --keep-state keeps it)"
            )
    if "resume" not in payload or "train_config" not in payload:
        raise InputError(
            f"{path}: holds weights but no training state (written before --resume existed?)"
        )
    return payload


def resume_config(requested: TrainConfig) -> TrainConfig:
    """The stored run's config with `resume` set; only RUNTIME_FIELDS come from `requested`.

    Changing epochs, batch size or any other hyper-parameter would not continue the same run, so
    those are taken from last.pt whatever the command line says.
    """
    assert requested.resume is not None
    payload = load_resume_payload(requested.resume)
    stored = config_from_dict(payload["train_config"])
    run_dir = last_checkpoint(requested.resume).parent
    runtime = {name: getattr(requested, name) for name in RUNTIME_FIELDS}
    config = dataclasses.replace(stored, out=run_dir, resume=run_dir, overwrite=False, **runtime)
    log.info(
        "resuming %s from epoch %d (step %d)",
        run_dir,
        payload["resume"]["epoch"],
        payload["resume"]["step"],
    )
    return config


def refuse_changed_options(requested: TrainConfig, given: Iterable[str]) -> None:
    """InputError for an option the user gave that a resume would otherwise silently ignore.

    `given` names the TrainConfig fields set on the command line. A value equal to the stored
    one, or a RUNTIME_FIELDS one, is fine; anything else would not continue the same run.
    """
    assert requested.resume is not None
    stored = config_from_dict(load_resume_payload(requested.resume)["train_config"])
    run_dir = last_checkpoint(requested.resume).parent
    flag = f"--resume {requested.resume}"
    if requested.overwrite:
        raise InputError(f"{flag}: --overwrite would discard the run being resumed; drop one")
    checked = set(given) - set(RUNTIME_FIELDS) - {"resume", "overwrite"}
    for name in sorted(checked - set(LOSS_OPTION_FIELDS)):
        wanted, kept = getattr(requested, name), getattr(stored, name)
        if name == "out":
            kept = run_dir
        if _same_option(wanted, kept):
            continue
        option = "--" + name.replace("_", "-")
        raise InputError(
            f"{flag}: {option} {_shown(wanted)} differs from the run's {_shown(kept)}; a resumed "
            f"run keeps its options (only {', '.join(_runtime_flags())} may change)"
        )
    _refuse_changed_loss_options(requested, stored, checked & set(LOSS_OPTION_FIELDS), flag)


def _refuse_changed_loss_options(
    requested: TrainConfig, stored: TrainConfig, given: set[str], flag: str
) -> None:
    """--loss-opt / --reg-loss compared as the loss sees them (gamma=2 equals gamma=2.0)."""
    if not given:
        return
    merged = dataclasses.replace(stored, **{name: getattr(requested, name) for name in given})
    wanted, kept = resolved_loss_options(merged), resolved_loss_options(stored)
    changed = [f"{key} {kept[key]} -> {wanted[key]}" for key in kept if wanted[key] != kept[key]]
    if changed:
        raise InputError(
            f"{flag}: the options given would change the run's loss ({', '.join(changed)}); a "
            "resumed run keeps its options"
        )


def _same_option(wanted: Any, kept: Any) -> bool:
    if isinstance(wanted, Path) and isinstance(kept, Path):
        return wanted.resolve() == kept.resolve()
    return wanted == kept


def _shown(value: Any) -> str:
    return "(default)" if value is None else str(value)


def _runtime_flags() -> list[str]:
    return ["--" + name.replace("_", "-") for name in RUNTIME_FIELDS]


def to_cpu(tree: Any) -> Any:
    """`tree` with every tensor moved to the CPU (for gathering across ranks and saving)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


@dataclasses.dataclass
class Resumable:
    """The objects whose state last.pt carries, besides the weights in its `state_dict`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: Any
    ema: ModelEma | None = None

    def state(self, position: dict[str, Any]) -> dict[str, Any]:
        """The "resume" block of last.pt. Collective: every rank must call it (RNG and loss
        state are per rank: GHM without sync_counts keeps per-rank statistics)."""
        own = to_cpu({"rng": capture_rng_state(), "loss": loss_state_dict(self.loss_fn)})
        per_rank = all_gather_objects(own)
        state = {
            **position,
            "world_size": len(per_rank),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_per_rank": [r["rng"] for r in per_rank],
            "loss_state_per_rank": [r["loss"] for r in per_rank],
        }
        if self.ema is not None:  # state_dict holds the EMA weights; keep the raw ones too
            state["model"] = to_cpu(self.model.state_dict())
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, payload: dict[str, Any], rank: int) -> dict[str, Any]:
        """Load last.pt's training state into this rank's objects; returns the resume block."""
        state = payload["resume"]
        self.model.load_state_dict(state.get("model", payload["state_dict"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise InputError("--ema-decay is set but the run being resumed kept no EMA")
            self.ema.load_state_dict(state["ema"])
        saved_world, world = int(state["world_size"]), current_rank_and_world()[1]
        if saved_world != world:
            log.warning(
                "resuming a %d-process run with %d processes: it continues, but not "
                "bit-identically (per-rank RNG and BatchNorm statistics differ)",
                saved_world,
                world,
            )
        load_loss_state_dict(self.loss_fn, state["loss_state_per_rank"][rank % saved_world])
        restore_rng_state(state["rng_per_rank"][rank % saved_world])
        return state
