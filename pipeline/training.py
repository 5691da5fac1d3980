"""`pipeline train`: build the trainer, attach validation, fit, and summarize.

With `--nproc-per-node N` (N > 1) this process launches N workers (pipeline/launch.py), each of
which comes back here under torchrun's environment variables and trains its rank; started by
torchrun directly, the process is already a worker. `--resume` swaps in the stored config first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.logs import LOG_FORMAT
from deploy.metadata import ModelMetadata
from pipeline.errors import TrainingInterrupted
from pipeline.launch import catch_user_errors, launch_local
from pipeline.results_plot import plot_results
from pipeline.validation import make_validator
from train.builders import per_rank_batch, prepare_output
from train.config import TrainConfig
from train.data.splits import training_splits
from train.distributed import (
    DistContext,
    init_distributed,
    launched_by_torchrun,
    shutdown_distributed,
)
from train.resume import resume_config
from train.run_log import METRICS_CSV, RESULTS_PNG
from train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def run_training(config: TrainConfig) -> TrainResult:
    if config.resume is not None:
        config = resume_config(config)
    if config.nproc_per_node > 1 and not launched_by_torchrun():
        _check_before_launch(config)
        return launch_local(config.nproc_per_node, _train_worker, config, logging.getLogger().level)
    context = init_distributed(config.device)
    try:
        if not context.is_main:  # progress and info on rank 0; warnings from every rank
            logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        return _fit(config, context)
    finally:
        shutdown_distributed(context)


def warn_if_busy(cpus: int | None = None, load: float | None = None) -> None:
    """Say so when the machine is already busy: two torch jobs that each use every core thrash
    (measured on 2 cores: 15x slower per epoch), and the cure is in the user's hands."""
    # The 1-minute load includes this command's own last minute (compare trains runs back to
    # back: about one per core), so only well above the core count is another job.
    cpus = cpus or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this system: nothing to say
            return
    if load > 1.25 * cpus:
        log.warning(
            "the machine is already busy (load %.1f on %d CPUs): two jobs that each use every "
            "core slow each other many times over; give each --threads %d",
            load, cpus, max(1, cpus // 2),
        )  # fmt: skip


def _fit(config: TrainConfig, context: DistContext) -> TrainResult:
    if config.threads is not None:  # this process's torch threads (each DDP process its own)
        import torch

        torch.set_num_threads(config.threads)
    elif context.is_main:
        warn_if_busy()
    trainer = Trainer(config, context=context)
    metadata = ModelMetadata(
        class_names=trainer.train_set.class_names,
        category_ids=trainer.train_set.category_ids,
        img_size=config.img_size,
        loss=config.loss,
    )
    val_set = trainer.val_set
    if val_set is None:
        if context.is_main:
            log.warning(
                "no val split: validation is off, best.pt is the last epoch's weights "
                "(--val-fraction F carves one out of train; --val-ann/--val-images name one)"
            )
    else:
        trainer.validate = make_validator(
            val_set.ann_file, val_set.img_dir, metadata, config.max_val_images,
            str(trainer.device), config.strict,
        )  # fmt: skip
    try:
        with sigterm_as_interrupt():
            return trainer.fit()
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_message(config.out)) from None
    finally:
        if context.is_main:
            _draw_results(Path(config.out))


def _draw_results(out: Path) -> None:
    """results.png from metrics.csv; a figure that fails to draw never fails the training."""
    try:
        if plot_results(out / METRICS_CSV, out / RESULTS_PNG):
            log.info("curves: %s", out / RESULTS_PNG)
    except Exception as exc:  # noqa: BLE001 - the run's real outputs are already on disk
        log.warning("%s: could not draw the curves (%s)", out / RESULTS_PNG, exc)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's preemption) stops training the way Ctrl-C does.

    A run started in the background by a script ignores SIGINT, so SIGTERM is how it is
    stopped; without this it would die without saying what last.pt holds.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(out: Path) -> str:
    """What Ctrl-C leaves behind: last.pt holds the last finished epoch, resumable exactly."""
    history = out / "history.json"
    epochs = len(json.loads(history.read_text())) if history.is_file() else 0
    if not (out / "last.pt").is_file() or epochs == 0:
        return f"no epoch had finished, so {out} holds nothing to resume; train again"
    return (
        f"{out / 'last.pt'} holds epoch {epochs} (the unfinished epoch is lost); continue exactly "
        f"from there with: pipeline train --resume {out}"
    )


def _check_before_launch(config: TrainConfig) -> None:
    """The user errors every worker would hit, found once here (one line, no launch)."""
    per_rank_batch(config.batch_size, config.nproc_per_node)
    if not config.val_fraction:  # carving writes into the run folder: the workers do it
        training_splits(config)
    prepare_output(config.out, config.overwrite, resuming=config.resume is not None)


def _train_worker(config: TrainConfig, log_level: int) -> TrainResult:
    """Entry point of each launched process (spawned: logging starts unconfigured)."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    return catch_user_errors(run_training, config)
