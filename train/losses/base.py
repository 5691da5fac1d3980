"""The one signature every detection loss has, and the pieces they share.

A detection loss is a callable `(cls_logits, box_deltas, assignment) -> dict[str, Tensor]`:
cls_logits (B, N, C) raw logits, box_deltas (B, N, 4) predicted deltas, assignment the
`AnchorAssignment` of the batch. It returns named scalar parts; the trainer sums them. Keeping the
assignment in the signature lets GHM and PISA see IoUs and object ids without reaching into the head.

Every loss is a dataclass whose fields are its options; `option()` attaches the help text and the
allowed values that `pipeline losses` shows and that `check_choices` enforces.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from train.assign import AnchorAssignment


class DetectionLoss(Protocol):
    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]: ...


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its CLI help and, for string options, the allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_choices(loss: Any) -> None:
    """Raise ValueError naming the option when a string option is not one of its choices."""
    for f in dataclasses.fields(loss):
        choices = f.metadata.get("choices")
        value = getattr(loss, f.name)
        if choices and value not in choices:
            raise ValueError(f"option {f.name}={value!r} is not one of {', '.join(choices)}")


def one_hot_targets(assignment: AnchorAssignment, num_classes: int) -> torch.Tensor:
    """(B, N, C) float targets: 1 at each positive's class, 0 elsewhere (negatives all zero).

    Built with one zero-filled buffer and a scatter: `F.one_hot` would first materialize an
    int64 tensor twice the size, which at RetinaNet scale costs more than the loss itself.
    """
    labels = assignment.labels
    targets = torch.zeros(*labels.shape, num_classes, device=labels.device)
    hit = assignment.positive[..., None].to(targets.dtype)
    return targets.scatter_(-1, labels.clamp(min=0)[..., None], hit)


def selected_rows(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows for per-positive work over a flat (R,) mask: (row indices, mask of real positives).

    CPU: the positives themselves and mask None; gathering them (nonzero) costs nothing there,
    while every op over all R rows pays for a parallel region. GPU: every row and the positive
    mask, because nonzero would be a host sync and R-sized ops are cheap. Callers handle both by
    masking when the mask is not None, so the two paths compute the same numbers.
    """
    if positive.is_cuda:
        return torch.arange(positive.numel(), device=positive.device), positive
    return torch.nonzero(positive).view(-1), None


def mean_over_ranks(value: torch.Tensor, sync: bool = True) -> torch.Tensor:
    """`value` summed over ranks and divided by the world size (itself when not distributed).

    Each rank divides its loss by the mean count, so the gradient DDP averages equals the
    single-process gradient of the same global batch.
    """
    if not value.is_floating_point():
        value = value.to(torch.float32)
    if sync and dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def positive_normalizer(assignment: AnchorAssignment, sync: bool = True) -> torch.Tensor:
    """RetinaNet's normalizer: positives in the batch (averaged over ranks when distributed), >= 1.

    Averaging the global count over ranks keeps each rank's gradient at the scale the
    single-process run with the same global batch would have after DDP averages the gradients.
    """
    return mean_over_ranks(assignment.positive.sum(), sync).clamp(min=1.0)


def loss_state_dict(loss: Any) -> dict[str, Any]:
    """The state a loss carries between iterations (GHM's EMA): a stateful loss is an
    nn.Module and this is its state_dict; {} for stateless losses."""
    return dict(loss.state_dict()) if isinstance(loss, nn.Module) else {}


def load_loss_state_dict(loss: Any, state: dict[str, Any]) -> None:
    """Restore what `loss_state_dict` saved; a stateless loss accepts only an empty dict."""
    if isinstance(loss, nn.Module):
        loss.load_state_dict(state)
    elif state:
        raise ValueError(f"{type(loss).__name__} keeps no state, got keys {sorted(state)}")
