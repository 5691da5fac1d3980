"""The training loop: epochs, validation, checkpoints, history; on one process or many (DDP).

Validation is injected as a callable (the pipeline passes deploy's evaluator wrapped around a
PyTorch predictor), so training-time mAP and deployed-model mAP come from the same code. Under
torchrun every rank runs this loop on its shard of each batch; only rank 0 logs and writes
checkpoints, and the validator shards the images itself. last.pt holds the full training state,
so `--resume` continues a killed run to the same weights (train/resume.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.errors import InputError
from common.files import write_json_atomic
from train.builders import (
    build_datasets,
    build_model,
    build_optimizer,
    grad_clip_for,
    lr_schedule,
    per_rank_batch,
    prepare_output,
    resolved_loss_options,
    seed_everything,
)
from train.checkpoint import checkpoint_payload, save_atomic, write_text_atomic
from train.config import TrainConfig
from train.data.loader import build_train_loader
from train.data.unreadable import SkipUnreadable, UnreadableImage, collate_skipping
from train.distributed import (
    DistContext,
    all_gather_objects,
    all_ranks_true,
    barrier,
    init_distributed,
)
from train.ema import ModelEma
from train.errors import NonFiniteLossError
from train.losses import build_loss, loss_state_dict
from train.model.retinanet import RetinaDetector
from train.resume import Resumable, load_resume_payload, to_cpu
from train.run_log import RunLog, clear_run_log
from train.step import TrainStep, freeze_batchnorm, set_train_mode

log = logging.getLogger(__name__)
# The resolved settings of a run, written at its start for people (the checkpoint holds them too).
CONFIG_FILE = "config.json"
Validator = Callable[[RetinaDetector, int], dict[str, float]]


@dataclass
class TrainResult:
    out: Path
    best_path: Path
    last_path: Path
    history: list[dict] = field(default_factory=list)
    best_ap: float = float("nan")


class Trainer:
    """One training run (or this rank's part of one). Build with a config, call `fit()`.

    `on_epoch_end(epoch)`, if set, runs on every rank after the epoch's checkpoints are written.
    """

    def __init__(
        self,
        config: TrainConfig,
        validate: Validator | None = None,
        context: DistContext | None = None,
    ) -> None:
        self.config, self.validate = config, validate
        self.on_epoch_end: Callable[[int], None] | None = None
        self.context = context or init_distributed(config.device)
        self.device = self.context.device
        seed_everything(config.seed)
        self.train_set, self.val_set = build_datasets(config)
        self.loss_options = resolved_loss_options(config)
        self.loss_fn = build_loss(config.loss, self.loss_options, config.detector)
        if isinstance(self.loss_fn, nn.Module):  # a stateful loss: its state beside the model
            self.loss_fn.to(self.device)
        # A resumed run's weights come from its last.pt: --init-from's file is not needed again.
        initial = replace(config, init_from=None) if config.resume is not None else config
        self.model = build_model(
            initial, len(self.train_set.category_ids), self.device, self.train_set.class_names
        )
        self._prepare_batchnorm()
        self.optimizer = build_optimizer(self.model, config)
        self.grad_clip = grad_clip_for(config)
        self.ema = ModelEma(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self._build_schedule()
        self.train_step = TrainStep(
            self.model,
            self._forward_module(),
            self.loss_fn,
            self.optimizer,
            self.grad_clip,
            config.amp,
            self.ema,
        )
        self.state = Resumable(
            self.model,
            self.optimizer,
            self.scheduler,
            self.train_step.scaler,
            self.loss_fn,
            self.ema,
        )
        self.epoch, self._step, self._bad_in_a_row, self.best_ap = 0, 0, 0, -1.0
        # Whether this run's best.pt exists: a resumed run's does; with --overwrite, an older
        # run's best.pt must be replaced at the first epoch even when AP cannot be measured.
        self._best_written = config.resume is not None
        self.history: list[dict] = []
        self._unreadable: set[int] = set()  # dataset indices already warned about
        self.run_log = RunLog(Path(config.out), None, enabled=False)  # fit() opens the real one
        if config.resume is not None:
            self._restore()
        elif self.context.rank > 0:  # own random stream per rank (random sampling losses)
            torch.manual_seed(config.seed + self.context.rank)

    def _build_schedule(self) -> None:
        """This rank's loader, the number of optimizer steps, and the LR schedule over them."""
        config = self.config
        self.loader, self.sampler = build_train_loader(
            SkipUnreadable(self.train_set),
            per_rank_batch(config.batch_size, self.context.world_size),
            (self.context.rank, self.context.world_size),
            config.seed,
            config.workers,
            collate_skipping,
            pin_memory=self.device.type == "cuda",
        )
        self.total_steps = max(1, len(self.loader)) * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config, self.total_steps)
        )

    def _prepare_batchnorm(self) -> None:
        """--freeze-bn, or under DDP on GPUs SyncBatchNorm; gloo has no SyncBatchNorm (CPU)."""
        if self.config.freeze_bn:
            log.debug("froze %d BatchNorm layers", freeze_batchnorm(self.model))
        elif self.context.distributed and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        elif self.context.distributed and self.context.is_main:
            log.warning(
                "BatchNorm statistics are per process on CPU (SyncBatchNorm needs CUDA); "
                "pass --freeze-bn for results that do not depend on the number of processes"
            )

    def _forward_module(self) -> nn.Module:
        """The model as the step runs it: wrapped in DDP when distributed, compiled if asked."""
        forward: nn.Module = self.model
        if self.context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(
                self.model, device_ids=device_ids, gradient_as_bucket_view=True
            )
        if self.config.compile:
            forward = torch.compile(forward)  # type: ignore[assignment]
        return forward

    def _restore(self) -> None:
        assert self.config.resume is not None
        payload = load_resume_payload(self.config.resume)
        state = self.state.restore(payload, self.context.rank)
        self.epoch, self._step = int(state["epoch"]), int(state["step"])
        self.best_ap, self._bad_in_a_row = float(state["best_ap"]), int(state["bad_in_a_row"])
        self.history = list(payload.get("history", []))

    def fit(self) -> TrainResult:
        config, out = self.config, Path(self.config.out)
        resuming = config.resume is not None
        if self.context.is_main:
            prepare_output(out, config.overwrite, resuming=resuming)
            if not resuming:
                clear_run_log(out)
            write_json_atomic(out / CONFIG_FILE, self.resolved_config(), compact=False)
        self.run_log = RunLog(out, self._step if resuming else None, self.context.is_main)
        try:
            return self._fit_epochs(
                TrainResult(out, out / "best.pt", out / "last.pt", self.history)
            )
        finally:
            self.run_log.close()

    def split_files(self) -> dict[str, list[str]]:
        """{"train"/"val": [annotation file, image folder]}, absolute: the files this run trained
        and validated on, so export, eval and analyze default to them (any layout, a carved
        --val-fraction split) from whatever folder they are run in."""
        sets = {"train": self.train_set, "val": self.val_set}
        return {
            name: [str(d.ann_file.resolve()), str(d.img_dir.resolve())]
            for name, d in sets.items()
            if d is not None
        }

    def resolved_config(self) -> dict[str, Any]:
        """What this run trains with, defaults filled in: config.json, for people to read."""
        return {
            "train_config": self.config.to_dict(),
            "loss_options": dict(self.loss_options),
            "grad_clip": self.grad_clip,
            "world_size": self.context.world_size,
            "total_steps": self.total_steps,
            "train_images": len(self.train_set),
        }

    def _fit_epochs(self, result: TrainResult) -> TrainResult:
        config = self.config
        for epoch in range(self.epoch + 1, config.epochs + 1):
            if self._step >= self.total_steps:
                break
            record = self._train_epoch(epoch)
            last_epoch = epoch == config.epochs or self._step >= self.total_steps
            if self.validate is not None and (epoch % config.val_every == 0 or last_epoch):
                record.update(self._validate(epoch))
            self.history.append(record)
            self.run_log.epoch(record)
            self.epoch = epoch
            if self.context.is_main:
                log.info("epoch %d: %s", epoch, json.dumps(record))
            self._checkpoint(record, result, final=last_epoch)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
            if last_epoch:
                break
        result.best_ap = self.best_ap
        return result

    def _validate(self, epoch: int) -> dict[str, float]:
        """The validator on the weights that ship (the EMA when on), on every rank."""
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        return self.validate(model, epoch) if self.validate is not None else {}

    def _checkpoint(self, record: dict, result: TrainResult, final: bool = False) -> None:
        """best.pt when AP improved, then last.pt with the training state; rank 0 writes.

        A run that never measured AP (no val split) keeps the latest weights as best.pt: they are
        the best known, rather than the first epoch's.
        """
        ap = record.get("AP", -1.0)
        if not math.isfinite(ap):  # COCO's -1 / NaN: never "better"
            ap = -1.0
        never_measured = self.validate is None and self.best_ap < 0
        is_best = ap > self.best_ap or not self._best_written or never_measured
        self.best_ap = max(ap, self.best_ap)
        position = {
            "epoch": self.epoch,
            "step": self._step,
            "best_ap": self.best_ap,
            "bad_in_a_row": self._bad_in_a_row,
        }
        # A finished run's last.pt keeps only its weights unless --keep-state: the optimizer's
        # moments (twice the weights with AdamW) serve a --resume, which has nothing left to do.
        keep = not final or self.config.keep_state
        resume = self.state.state(position) if keep else None  # collective: every rank
        if self.context.is_main:
            if is_best:
                self._save(result.best_path, record, None)
            self._save(result.last_path, record, resume)
            write_text_atomic(result.out / "history.json", json.dumps(self.history, indent=2))
        self._best_written = self._best_written or is_best
        barrier()  # no rank starts the next epoch (or dies in it) before last.pt is on disk

    def _save(self, path: Path, metrics: dict, resume: dict | None) -> None:
        extra = {
            "epoch": self.epoch,
            "metrics": metrics,
            "train_config": self.config.to_dict(),
            "splits": self.split_files(),
            "dataset_info": self.train_set.info,
            "history": self.history,
            "loss_state": to_cpu(loss_state_dict(self.loss_fn)),
        }
        if resume is not None:
            extra["resume"] = resume
        payload = checkpoint_payload(
            self.ema.module if self.ema is not None else self.model,
            self.train_set.class_names,
            self.train_set.category_ids,
            self.config.loss,
            self.loss_options,
            extra,
        )
        save_atomic(payload, path)

    def _train_epoch(self, epoch: int) -> dict:
        """Train until the loader ends or `total_steps` is reached; returns the history record."""
        self.sampler.set_epoch(epoch)
        set_train_mode(self.train_step.forward, self.config.freeze_bn)
        sums: dict[str, float] = {}
        loaded, seen, skipped, steps, started = 0, 0, 0, 0, time.perf_counter()
        step_started = started
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch}/{self.config.epochs}",
            leave=False,
            disable=None if self.context.is_main else True,
        )
        for images, targets, unreadable in bar:
            skipped += self._skip_unreadable(unreadable)
            if not self._batch_on_every_rank(images is not None):
                continue
            loaded += len(images)
            parts = self.train_step(images, targets)
            if parts is None:
                self._count_bad_step()
                continue
            self._bad_in_a_row = 0
            lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scheduler.step()
            self._step, steps, seen = self._step + 1, steps + 1, seen + len(images)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            now = time.perf_counter()
            self._log_step(epoch, parts, lr, len(images) / max(now - step_started, 1e-9))
            step_started = now
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in parts.items()}, "lr": f"{lr:.1e}"})
            if self._step >= self.total_steps:
                break
        self._check_readable(loaded, skipped, epoch)
        counts = (steps, seen, skipped)
        return self._epoch_record(epoch, sums, counts, time.perf_counter() - started)

    def _log_step(
        self, epoch: int, parts: dict[str, float], lr: float, images_per_second: float
    ) -> None:
        """One metrics.csv row and TensorBoard point (rank 0's numbers; images/s over ranks)."""
        values = {f"loss_{k}": v for k, v in parts.items()}
        values["loss"] = sum(parts.values())
        values["lr"] = lr
        if self.train_step.last_grad_norm is not None:
            values["grad_norm"] = self.train_step.last_grad_norm
        values["images_per_second"] = images_per_second * self.context.world_size
        self.run_log.step(epoch, self._step, values)

    def _batch_on_every_rank(self, has_batch: bool) -> bool:
        """Under DDP a rank whose whole batch was unreadable makes every rank skip the step."""
        if not self.context.distributed:
            return has_batch
        return all_ranks_true(torch.tensor(has_batch, device=self.device))

    def _epoch_record(
        self, epoch: int, sums: dict[str, float], counts: tuple[int, int, int], elapsed: float
    ) -> dict:
        """Loss parts averaged over steps and ranks; throughput over all ranks.

        counts: (optimizer steps, images stepped on, images skipped) of this rank's epoch.
        """
        steps, seen, skipped = counts
        per_rank = all_gather_objects((sums, seen, skipped))
        steps = max(1, steps)
        keys = sorted({k for part_sums, _, _ in per_rank for k in part_sums})
        world = self.context.world_size
        return {
            "epoch": epoch,
            "step": self._step,
            "seconds": round(elapsed, 2),
            "images_per_second": round(sum(s for _, s, _ in per_rank) / max(elapsed, 1e-9), 2),
            "skipped_images": sum(k for _, _, k in per_rank),
            **{
                f"loss_{k}": sum(p.get(k, 0.0) for p, _, _ in per_rank) / world / steps
                for k in keys
            },
        }

    def _skip_unreadable(self, unreadable: list[UnreadableImage]) -> int:
        """Warn once per bad image (or, with --strict, stop); returns how many were skipped."""
        for item in unreadable:
            if self.config.strict:
                raise InputError(f"{item.reason} (--strict)")
            if item.index not in self._unreadable:
                self._unreadable.add(item.index)
                log.warning("%s; image skipped", item.reason)
        return len(unreadable)

    def _check_readable(self, loaded: int, skipped: int, epoch: int) -> None:
        if skipped and not loaded:
            raise InputError(
                f"{self.train_set.ann_file}: none of the {skipped} training images of epoch "
                f"{epoch} could be read"
            )
        if skipped:
            log.warning("epoch %d: skipped %d unreadable training images", epoch, skipped)

    def _count_bad_step(self) -> None:
        """After `max_bad_steps` non-finite steps in a row, stop without touching checkpoints."""
        self._bad_in_a_row += 1
        if self._bad_in_a_row < self.config.max_bad_steps:
            return
        out = Path(self.config.out)
        kept = [name for name in ("best.pt", "last.pt") if (out / name).exists()]
        where = f"last good {' and '.join(kept)} kept" if kept else "no checkpoint written yet"
        raise NonFiniteLossError(
            f"{out}: training stopped after {self._bad_in_a_row} consecutive non-finite losses "
            f"(lower --lr or check the data); {where}"
        )
