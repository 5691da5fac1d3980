"""Gradient Harmonizing Mechanism: GHM-C and GHM-R (Li et al., AAAI 2019, arXiv 1811.05181).

Each element's loss is divided by the density of its gradient norm g (|p - y| for BCE,
|d| / sqrt(d^2 + mu^2) for ASL1), estimated by a histogram of `bins` equal bins on [0, 1]:
    L = sum_i loss_i / (count(bin_i) * n)
with n the number of non-empty bins, optionally with an exponential moving average of the counts.
That is the reference implementation's `sum(loss * tot / (acc * n)) / tot` with tot cancelled.

Histogram, bins and EMA are computed without a loop over bins and without host syncs: one
integer bin index per element, one scatter-add for the counts, one lookup for the weights.
Choices that differ from the reference implementation (docs/losses-and-formulas.md), each with an option for the
reference behaviour:
- `level_mode="global"` (default): one histogram over all anchors of the batch, the paper's
  definition. The reference calls the loss once per FPN level, so each level has its own
  histogram and normalization (the summed loss is ~#levels times larger) and its single EMA
  buffer is updated once per level, mixing the levels' statistics. "per-level" keeps per-level
  histograms with one EMA per level; "reference" reproduces the shared, sequentially updated
  buffer exactly.
- `ema_init="first"` (default): a bin's EMA starts at its first count. The reference starts at 0
  without bias correction ("zero"), which inflates the first weights by 1 / (1 - momentum).
- `sync=True` (default): under torch.distributed the counts are averaged over ranks, so every
  rank weights by the global density; the reference keeps per-GPU counts (`sync=False`).
Bin index: floor(g * bins) clamped to the last bin. The reference compares with float32 edges
i / bins, which can put a g within one rounding step of an edge into the neighbouring bin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.assign import AnchorAssignment
from train.losses.base import (
    check_choices,
    mean_over_ranks,
    one_hot_targets,
    option,
    positive_normalizer,
    selected_rows,
)
from train.losses.fused import SigmoidFamily, consume_saved_grad, sigmoid_row_loss
from train.losses.regression import REG_LOSS_NAMES, RegressionOptions
from train.model.box_coder import encode_boxes

MAX_LEVELS = 8
LEVEL_MODES = ("global", "per-level", "reference")
EMA_INITS = ("first", "zero")
# Classification when ghm_c=false: Focal Loss at the paper's COCO setting.
FOCAL_BASELINE = SigmoidFamily("focal", alpha=0.25, gamma=2.0)


def anchor_levels(anchors: torch.Tensor) -> torch.Tensor:
    """(N,) pyramid level of each of (N, 4) anchors, 0 for the finest, clamped below MAX_LEVELS.

    A level's anchor sizes span one octave (scales 1 .. 2^(2/3) of the level's base size), so the
    level is the octave of sqrt(area) above the smallest anchor. Works for any anchor set whose
    per-level sizes stay within [base, 2 * base) and whose bases double per level (FPN's).
    """
    size = (
        ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).clamp(min=1e-12).sqrt()
    )
    octave = torch.log2(size / size.min()) + 1e-4
    return octave.floor().long().clamp(0, MAX_LEVELS - 1)


def _ema(acc: torch.Tensor, counts: torch.Tensor, momentum: float, init: str) -> torch.Tensor:
    """One EMA step on bins that received samples; empty bins keep their value (as the reference)."""
    step = momentum * acc + (1 - momentum) * counts
    if init == "first":
        step = torch.where(acc > 0, step, counts)
    return torch.where(counts > 0, step, acc)


class GradientDensity(nn.Module):
    """Histogram of gradient norms per (level, bin) and the EMA state; gives per-slot weights.

    Slots are level * bins + bin, plus one last "dump" slot for elements that must not count
    (label weight 0), whose weight is always 0.
    """

    def __init__(
        self,
        bins: int,
        momentum: float,
        level_mode: str = "global",
        ema_init: str = "first",
        sync: bool = True,
        last_edge_open: bool = False,
    ) -> None:
        super().__init__()
        if bins < 1 or not 0 <= momentum < 1:
            raise ValueError(f"need bins >= 1 and 0 <= momentum < 1, got {bins}, {momentum}")
        if level_mode not in LEVEL_MODES or ema_init not in EMA_INITS:
            raise ValueError(f"level_mode {level_mode!r} / ema_init {ema_init!r} unknown")
        self.bins, self.momentum, self.level_mode = bins, momentum, level_mode
        self.ema_init, self.sync = ema_init, sync
        self.levels = 1 if level_mode == "global" else MAX_LEVELS
        state_levels = MAX_LEVELS if level_mode == "per-level" else 1
        self.register_buffer("acc_sum", torch.zeros(state_levels, bins, dtype=torch.float64))

    def slot_index(
        self, g: torch.Tensor, valid: torch.Tensor, level_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """(numel,) int32 slot of each element of g (R, K); `valid` and `level_ids` index rows.

        Overwrites g (it is scaled in place: one temporary less at 16M elements). int32, not
        int64: at that size writing the index is one of the largest costs of the loss.
        """
        index = g.mul_(self.bins).to(torch.int32).clamp_(0, self.bins - 1)
        if self.levels > 1 and level_ids is not None:
            offset = level_ids.clamp(0, MAX_LEVELS - 1).to(torch.int32) * self.bins
            index.add_(offset.view(-1, *[1] * (g.dim() - 1)))
        index.masked_fill_(~valid, self.levels * self.bins)
        return index.view(-1)

    def counts(self, index: torch.Tensor) -> torch.Tensor:
        """(levels, bins) float64 element counts per slot (rank-averaged when synced)."""
        slots = self.levels * self.bins + 1
        if index.is_cuda:  # bincount would read the max back to the host; scatter_add does not
            ones = torch.ones((), dtype=torch.long, device=index.device).expand(index.numel())
            raw = torch.zeros(slots, dtype=torch.long, device=index.device)
            raw.scatter_add_(0, index.long(), ones)
        else:  # several times faster than scatter_add on CPU, and takes the int32 index
            raw = torch.bincount(index, minlength=slots)
        counts = raw[:-1].view(self.levels, self.bins).double()
        return mean_over_ranks(counts, self.sync)

    def density(self, counts: torch.Tensor) -> torch.Tensor:
        """(levels, bins) density used for the weights; advances the EMA state."""
        if self.momentum == 0:
            return counts
        acc = self.acc_sum.to(counts.device)
        if self.level_mode == "reference":  # one buffer, stepped level by level in order
            rows = []
            for level_counts in counts:  # MAX_LEVELS tiny steps, not a loop over data
                acc = _ema(acc, level_counts[None], self.momentum, self.ema_init)
                rows.append(acc[0])
            dens = torch.stack(rows)
        else:
            acc = _ema(acc, counts, self.momentum, self.ema_init)
            dens = acc
        self.acc_sum = acc
        return dens

    def slot_weights(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slot weight 1 / (density * n_level) (0 for empty slots and the dump), and tot.

        tot (levels,) is the number of counted elements per level: the reference's weights are
        tot times these, and its loss divides by tot again.
        """
        counts = self.counts(index)
        dens = self.density(counts)
        nonempty = counts > 0
        n = nonempty.sum(dim=1, keepdim=True).clamp(min=1)
        table = torch.where(nonempty, 1.0 / (dens.clamp(min=1e-12) * n), torch.zeros_like(dens))
        table = torch.cat([table.view(-1), table.new_zeros(1)]).to(torch.float32)
        return table, counts.sum(dim=1).clamp(min=1.0)


class _HarmonizedBce(torch.autograd.Function):
    """sum(BCE * w) with w = weights_for(|sigmoid(x) - t|); backward (sigmoid(x) - t) * w."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, weights_for: Callable) -> torch.Tensor:  # type: ignore[override]
        x = x.detach()
        diff = torch.sigmoid(x).sub_(t)  # dBCE/dx, and |diff| is GHM's g
        weights = weights_for(diff.abs())
        bce = F.softplus(x).addcmul_(x, t, value=-1.0)
        loss = bce.mul_(weights).sum()  # torch.sum accumulates pairwise; BLAS dot drifts
        ctx.elem_grad = diff.mul_(weights) if ctx.needs_input_grad[0] else None
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        return consume_saved_grad(ctx).mul_(grad_out), None, None


def _valid_elements(label_weights: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """label_weights (R, K) or (R,) > 0, shaped to broadcast over (R, K)."""
    valid = label_weights > 0
    return valid if valid.shape == shape else valid.reshape(shape[0], *[1] * (len(shape) - 1))


class GHMC(nn.Module):
    """GHM-C: BCE over (N, C) one-hot targets, each element divided by its gradient density.

    forward(logits (N, C), targets (N, C), label_weights (N, C) or (N,), level_ids (N,) optional)
    -> scalar. Elements with label weight 0 neither count nor contribute. With momentum 0 and
    every g in one bin this is the mean BCE over the valid elements.
    """

    def __init__(
        self,
        bins: int = 30,
        momentum: float = 0.75,
        *,
        level_mode: str = "global",
        ema_init: str = "first",
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.density = GradientDensity(bins, momentum, level_mode, ema_init, sync)

    def _weights_for(self, valid: torch.Tensor, level_ids: torch.Tensor | None) -> Callable:
        def weights_for(g: torch.Tensor) -> torch.Tensor:
            index = self.density.slot_index(g, valid, level_ids)
            table, _ = self.density.slot_weights(index)
            # g's float buffer is free once the index exists: the weights reuse it.
            return torch.index_select(table, 0, index, out=g.view(-1)).view(g.shape)

        return weights_for

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        label_weights: torch.Tensor,
        level_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = logits.float()
        valid = _valid_elements(label_weights, x.shape)
        return _HarmonizedBce.apply(x, targets.float(), self._weights_for(valid, level_ids))

    @torch.no_grad()
    def harmonizing_weights(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        label_weights: torch.Tensor,
        level_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, C) weights in the reference's form tot / (density * n); advances the EMA too."""
        g = (torch.sigmoid(logits.float()) - targets.float()).abs()
        index = self.density.slot_index(g, _valid_elements(label_weights, g.shape), level_ids)
        table, tot = self.density.slot_weights(index)
        tot_per_slot = torch.cat([tot.repeat_interleave(self.density.bins), tot.new_zeros(1)])
        return (table.double() * tot_per_slot)[index].view(g.shape).float()


class GHMR(nn.Module):
    """GHM-R: ASL1 sqrt(d^2 + mu^2) - mu per coordinate, divided by its gradient density.

    forward(pred (N, 4), target (N, 4), label_weights (N, 4) or (N,), level_ids (N,) optional)
    -> scalar. The reference's last edge is 1e3, but g < 1 always, so it bins like GHM-C.
    """

    def __init__(
        self,
        mu: float = 0.02,
        bins: int = 10,
        momentum: float = 0.7,
        *,
        level_mode: str = "global",
        ema_init: str = "first",
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.mu = mu
        self.density = GradientDensity(bins, momentum, level_mode, ema_init, sync)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        label_weights: torch.Tensor,
        level_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        diff = pred.float() - target.float()
        root = torch.sqrt(diff * diff + self.mu * self.mu)
        loss = root - self.mu
        g = (diff / root).abs().detach()
        index = self.density.slot_index(g, _valid_elements(label_weights, g.shape), level_ids)
        table, _ = self.density.slot_weights(index)
        weights = torch.index_select(table, 0, index).view(g.shape)
        return (loss * weights).sum()


@dataclass(kw_only=True, eq=False)
class GhmDetectionLoss(RegressionOptions, nn.Module):
    """GHM-C classification + GHM-R regression (ASL1), COCO settings of the paper.

    GHM-C needs no positive-count normalizer (the density is its normalization); GHM-R divides
    ASL1 by its own density. An nn.Module holding the two EMA histograms as buffers: build once
    per run, `.to(device)` with the model, save `state_dict()`.
    """

    bins: int = option(30, "GHM-C histogram bins")
    momentum: float = option(0.75, "GHM-C EMA momentum of bin counts (0: this batch only)")
    reg_bins: int = option(10, "GHM-R histogram bins")
    reg_momentum: float = option(0.7, "GHM-R EMA momentum")
    cls_weight: float = option(1.0, "weight of GHM-C")
    reg_loss: str = option("asl1", "box regression loss on positives", REG_LOSS_NAMES)
    reg_weight: float = option(10.0, "weight of the regression part (GHM-R: 10 on COCO)")
    ghm_r: bool = option(
        True, "harmonize the ASL1 regression loss with GHM-R (needs reg_loss=asl1)"
    )
    ghm_c: bool = option(
        True,
        "harmonize classification with GHM-C; false: Focal Loss (alpha 0.25, gamma 2) "
        "over positives, to measure GHM-R alone",
    )
    level_mode: str = option("global", "histograms: global | per-level | reference", LEVEL_MODES)
    ema_init: str = option("first", "EMA start: first count | zero (reference)", EMA_INITS)
    sync_counts: bool = option(True, "average bin counts over ranks (false: per-GPU, reference)")
    sync_normalizer: bool = option(True, "average the positive count over ranks (non-GHM-R reg)")

    def __post_init__(self) -> None:
        nn.Module.__init__(self)  # before the sub-modules are assigned
        check_choices(self)
        if self.ghm_r and self.reg_loss != "asl1":
            raise ValueError(
                f"ghm_r=true harmonizes ASL1's gradient, so it needs reg_loss=asl1, not "
                f"{self.reg_loss!r}; set ghm_r=false to use {self.reg_loss} unweighted"
            )
        common = {
            "level_mode": self.level_mode,
            "ema_init": self.ema_init,
            "sync": self.sync_counts,
        }
        self.cls_harmonizer = GHMC(self.bins, self.momentum, **common)
        self.reg_harmonizer = GHMR(self.reg_mu, self.reg_bins, self.reg_momentum, **common)

    def load_state_dict(
        self, state: dict[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """nn.Module's, also reading the {"ghm_c": ..., "ghm_r": ...} layout of checkpoints
        written before this loss was a module."""
        if "ghm_c" in state or "ghm_r" in state:
            state = {
                f"{module}.{key}": value
                for old, module in (("ghm_c", "cls_harmonizer"), ("ghm_r", "reg_harmonizer"))
                for key, value in state.get(old, {}).items()
            }
        return super().load_state_dict(state, strict=strict, assign=assign)

    def forward(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]:
        num_classes = cls_logits.shape[-1]
        levels = None
        if self.level_mode != "global":
            levels = anchor_levels(assignment.anchors).repeat(cls_logits.shape[0])
        if self.ghm_c:
            targets = one_hot_targets(assignment, num_classes).view(-1, num_classes)
            cls = self.cls_harmonizer(
                cls_logits.reshape(-1, num_classes), targets, assignment.valid.reshape(-1), levels
            )
        else:
            cls = self._focal_classification(cls_logits, assignment)
        return {
            "cls": self.cls_weight * cls,
            "reg": self.reg_weight * self._regression(box_deltas, assignment, levels),
        }

    def _focal_classification(
        self, cls_logits: torch.Tensor, assignment: AnchorAssignment
    ) -> torch.Tensor:
        """RetinaNet's focal term (alpha 0.25, gamma 2) / positives: the GHM-R-alone baseline."""
        num_classes = cls_logits.shape[-1]
        rows = sigmoid_row_loss(
            cls_logits.reshape(-1, num_classes), assignment.labels.reshape(-1), FOCAL_BASELINE
        )
        valid = assignment.valid.reshape(-1)
        normalizer = positive_normalizer(assignment, self.sync_normalizer)
        return torch.where(valid, rows, torch.zeros_like(rows)).sum() / normalizer

    def _regression(
        self, box_deltas: torch.Tensor, assignment: AnchorAssignment, levels: torch.Tensor | None
    ) -> torch.Tensor:
        if not self.ghm_r:
            normalizer = positive_normalizer(assignment, self.sync_normalizer)
            return self.regression_sum(box_deltas, assignment) / normalizer
        # Only positives count in GHM-R, so it runs on the selected rows (see selected_rows).
        rows, mask = selected_rows(assignment.positive.reshape(-1))
        anchors = assignment.anchors.to(torch.float32)[rows % assignment.anchors.shape[0]]
        gt = assignment.gt_boxes.reshape(-1, 4).to(torch.float32)[rows]
        if mask is not None:
            gt = torch.where(mask[:, None], gt, anchors)
        weights = torch.ones_like(rows, dtype=torch.float32) if mask is None else mask.float()
        pred = box_deltas.reshape(-1, 4)[rows]
        row_levels = None if levels is None else levels[rows]
        return self.reg_harmonizer(pred, encode_boxes(gt, anchors), weights, row_levels)
