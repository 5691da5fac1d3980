"""One optimizer step, shared by the trainer and bench/train_throughput.py.

Assignment and loss run on the whole batch at once (no per-image loop); the forward runs
channels-last under autocast (bf16 on CPU, fp16 with a GradScaler on CUDA) and, optionally,
torch.compile. Under DDP every rank agrees on skipping a non-finite step before backward, since
a rank that skipped alone would leave the others waiting in the gradient all-reduce.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch import nn

from train.assign import assign_anchors
from train.distributed import all_ranks_true
from train.ema import ModelEma
from train.losses.base import DetectionLoss
from train.model.detectors import is_two_stage

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX). Without it bf16 is emulated:
    a resnet18 training step measured 15x slower than fp32 on an AVX2-only AMD EPYC."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on CPU where it is native (AMX / AVX512-BF16), fp16 on CUDA, None when AMP is off
    or the CPU would only emulate bf16 (then said once in the log)."""
    if not amp:
        return None
    if device.type != "cpu":
        return torch.float16
    if not cpu_has_native_bf16():
        log.warning("--amp: this CPU has no native bf16 (AVX512-BF16 or AMX); training in fp32, "
                    "which is many times faster here than emulated bf16")  # fmt: skip
        return None
    return torch.bfloat16


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """model.train(), but with `freeze_bn` every BatchNorm stays in eval mode (running stats).

    Frozen BN is what detectors fine-tuned from ImageNet weights usually do, and it makes the
    forward of an image independent of the other images of the batch, so N ranks with B/N
    images each compute exactly what one process with B images does.
    """
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def freeze_batchnorm(model: nn.Module) -> int:
    """Stop BN affine parameters from training; returns how many BN layers were frozen."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in layers:
        module.requires_grad_(False)
    return len(layers)


class TrainStep:
    """`step(images, targets)` -> loss parts (floats), or None when the step was skipped.

    `model` is the plain detector (its `anchors` are used for assignment); `forward` is what
    runs the batch: the model itself, its DDP wrapper, or a compiled version of either.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: nn.Module,
        loss_fn: DetectionLoss,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None,
        amp: bool,
        ema: ModelEma | None = None,
    ) -> None:
        self.model, self.forward, self.loss_fn = model, forward, loss_fn
        self.optimizer, self.grad_clip, self.ema = optimizer, grad_clip, ema
        self.device = model.anchors.device
        self.amp_dtype = autocast_dtype(self.device, amp)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.last_grad_norm: float | None = None  # of the last step that reached the optimizer

    def _params(self) -> Iterable[torch.Tensor]:
        return (p for p in self.model.parameters() if p.grad is not None)

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Forward and loss parts for a (B, 3, S, S) uint8/float batch and its targets."""
        images = images.to(self.device, non_blocking=True).float()
        images = images.contiguous(memory_format=torch.channels_last)
        boxes = [t["boxes"].to(self.device, non_blocking=True) for t in targets]
        labels = [t["labels"].to(self.device, non_blocking=True) for t in targets]
        crowd = [t["crowd_boxes"].to(self.device, non_blocking=True) for t in targets]
        enabled = self.amp_dtype is not None
        if is_two_stage(self.model):  # it matches and samples its RoIs itself
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled):
                parts = self.forward(images, (boxes, labels), self.loss_fn)
            return {k: v.float() for k, v in parts.items()}
        assignment = assign_anchors(self.model.anchors, boxes, labels, crowd)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled):
            cls_logits, box_deltas = self.forward(images)
        return self.loss_fn(cls_logits.float(), box_deltas.float(), assignment)

    def __call__(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
        parts = self.losses(images, targets)
        total = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        if not all_ranks_true(torch.isfinite(total)):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            log.warning("non-finite loss in %s; step skipped", ", ".join(bad) or "another rank")
            return None
        self.scaler.scale(total).backward()
        if not self._clip():
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return {k: float(v.detach()) for k, v in parts.items()}

    def _clip(self) -> bool:
        """Clip the gradient norm (or only measure it, without --grad-clip) for the logs; False
        when clipping met a non-finite norm (outside fp16 AMP, a bad step).

        With the GradScaler an inf norm only means the scale is too high: scaler.step skips the
        update and lowers the scale, as torch.amp intends. The norm is computed on gradients
        DDP already averaged, so every rank decides the same.
        """
        self.scaler.unscale_(self.optimizer)  # does nothing without the fp16 scaler
        params = list(self._params())
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:  # measured for the logs only
            norm = total_grad_norm(params)
        self.last_grad_norm = float(norm)
        if not self.grad_clip or self.scaler.is_enabled() or math.isfinite(self.last_grad_norm):
            return True
        log.warning("non-finite gradient norm; step skipped")
        return False


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together, as clip_grad_norm_ reports it, changing nothing."""
    if not params:
        return torch.zeros(())
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
    )
