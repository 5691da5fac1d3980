"""Per-anchor sigmoid classification losses with closed-form gradients, computed in few passes.

Why this exists: at RetinaNet scale the classification tensor is B x ~100k x 80 (16M elements for
two images) and the losses are memory-bound; on CPU every fresh 64 MB temporary costs more than
the arithmetic on it. Autograd over a dozen elementwise ops (what the textbook focal loss is)
allocates two dozen such temporaries. Here the loss family gives its value *and* derivative in
closed form (the formulas of the Focal Loss paper, docs/losses-and-formulas.md), computed with in-place ops on
three buffers, and the backward pass is one multiply.

The trick that keeps it cheap: targets are one-hot per anchor (at most one positive class), so
every element is first treated as a negative (target 0) and then, for positive anchors only, the
single element at the anchor's label is overwritten with the positive-target value. That is a
gather/scatter over the positives instead of a dense (R, C) target tensor (on CPU over the
gathered positives, on GPU over all rows, masked: see `selected_rows`).

The result is one loss per anchor row (summed over classes), so callers weight rows (ignored
anchors, ISR weights, sampling masks) with ordinary autograd on (R,) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.losses.base import selected_rows


@dataclass(frozen=True)
class SigmoidFamily:
    """Which per-element loss: "focal" (alpha, gamma; gamma 0 is CE) or "focal-star" (gamma, beta).

    alpha < 0 disables alpha-balancing (torchvision's convention). For "focal-star" alpha is unused.
    """

    kind: str = "focal"
    alpha: float = 0.25
    gamma: float = 2.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("focal", "focal-star"):
            raise ValueError(f"loss family must be focal or focal-star, not {self.kind!r}")
        if self.kind == "focal-star" and self.gamma <= 0:
            raise ValueError(f"FL* needs gamma > 0 (it divides by gamma), got {self.gamma}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    @property
    def alpha_pos(self) -> float:
        return self.alpha if (self.kind == "focal" and self.alpha >= 0) else 1.0

    @property
    def alpha_neg(self) -> float:
        return 1.0 - self.alpha if (self.kind == "focal" and self.alpha >= 0) else 1.0


def _negative_terms(
    x: torch.Tensor, fam: SigmoidFamily, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and d(loss)/dx of every element as if its target were 0 (unscaled by alpha).

    Focal, y = 0: loss = p^g softplus(x), grad = p^g (g (1 - p) softplus(x) + p).
    FL*,   y = 0: z = g x - b, loss = softplus(z) / g, grad = sigmoid(z).
    Buffers are reused in place; at most three (R, C) temporaries are alive.
    """
    if fam.kind == "focal-star":
        z = x * fam.gamma
        if fam.beta != 0:
            z.sub_(fam.beta)
        loss = F.softplus(z).div_(fam.gamma)
        grad = torch.sigmoid_(z) if need_grad else None
        return loss, grad
    loss = F.softplus(x)
    if fam.gamma == 0:
        return loss, (torch.sigmoid(x) if need_grad else None)
    p = torch.sigmoid(x)
    q = p.pow(fam.gamma)
    loss.mul_(q)  # p^g softplus(x)
    if not need_grad:
        return loss, None
    q.mul_(p)  # p^(g+1)
    grad = p.neg_().add_(1).mul_(loss).mul_(fam.gamma).add_(q)  # g (1-p) loss + p^(g+1)
    return loss, grad


def _positive_terms(x: torch.Tensor, fam: SigmoidFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and d(loss)/dx for elements whose target is 1 (small tensors; unscaled by alpha).

    Focal, y = 1: loss = (1 - p)^g softplus(-x), grad = -(1 - p)^g (g p softplus(-x) + 1 - p).
    FL*,   y = 1: z = g x + b, loss = softplus(-z) / g, grad = -sigmoid(-z).
    """
    if fam.kind == "focal-star":
        z = fam.gamma * x + fam.beta
        return F.softplus(-z) / fam.gamma, -torch.sigmoid(-z)
    p = torch.sigmoid(x)
    ce = F.softplus(-x)
    q = (1 - p).pow(fam.gamma) if fam.gamma != 0 else torch.ones_like(p)
    return q * ce, -q * (fam.gamma * p * ce + (1 - p))


class _SigmoidRowLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, labels: torch.Tensor, fam: SigmoidFamily
    ) -> torch.Tensor:  # type: ignore[override]
        x = logits.detach()
        rows, mask = selected_rows(labels >= 0)
        cols = labels[rows].clamp(min=0)
        loss_pos, grad_pos = _positive_terms(x[rows, cols], fam)
        loss, grad = _negative_terms(x, fam, ctx.needs_input_grad[0])
        # Patch the positives' own element: drop its negative-target loss from the row sum and
        # put the positive-target derivative in its place. Masked rows keep what they had.
        loss[rows, cols] = _masked(mask, torch.zeros_like(loss_pos), loss[rows, cols])
        row_loss = loss.sum(dim=1).mul_(fam.alpha_neg)
        row_loss.index_add_(0, rows, _masked(mask, fam.alpha_pos * loss_pos, 0 * loss_pos))
        if grad is not None:
            if fam.alpha_neg != 1.0:
                grad.mul_(fam.alpha_neg)
            grad[rows, cols] = _masked(mask, fam.alpha_pos * grad_pos, grad[rows, cols])
        ctx.elem_grad = grad
        return row_loss

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        return consume_saved_grad(ctx).mul_(grad_rows[:, None]), None, None


def consume_saved_grad(ctx: torch.autograd.function.FunctionCtx) -> torch.Tensor:
    """The elementwise derivative saved by forward, handed over once (scaled in place after).

    Scaling it in place instead of allocating another 16M-element tensor is a large part of
    the speed; the price is that a second backward through the same graph is refused.
    """
    grad = getattr(ctx, "elem_grad", None)
    if grad is None:
        raise RuntimeError(
            "this loss's saved gradient was already used: backward through its graph twice "
            "(retain_graph=True) is not supported"
        )
    ctx.elem_grad = None
    return grad


def _masked(mask: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` where mask (or everywhere when mask is None), else `old`."""
    return new if mask is None else torch.where(mask, new, old)


def sigmoid_row_loss(
    logits: torch.Tensor, labels: torch.Tensor, family: SigmoidFamily
) -> torch.Tensor:
    """(R,) float32 loss per anchor row, summed over its C classes, with a closed-form backward.

    logits: (R, C) any float dtype (computed in float32; bf16 under autocast is upcast first).
    labels: (R,) long, the positive class of each row or -1 when the row has no positive class.
    Equals `sigmoid_focal_loss(logits, one_hot(labels)).sum(1)` (or the FL* analogue); tests
    hold the two to each other, values and gradients.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (R, C) and labels (R,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return _SigmoidRowLoss.apply(logits.float(), labels, family)
