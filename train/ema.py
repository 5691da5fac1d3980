"""Exponential moving average of the model's weights (`--ema-decay`), the weights that ship.

Averaging the last few thousand steps' weights smooths the noise of the final iterations; with
the EMA on, validation, best.pt and last.pt's `state_dict` hold the averaged weights, and last.pt
keeps the raw ones for resuming.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

RAMP_STEPS = 2000.0  # the decay ramps up from 0, so early weights do not linger (YOLOv5's tau)


class ModelEma:
    """`module`: a copy of the model whose floating state follows the model's by EMA."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(ema floats, model floats, ema others, model others) in state_dict order."""
        ema_state, state = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        others = [k for k, v in ema_state.items() if not v.is_floating_point()]
        return (
            [ema_state[k] for k in floats],
            [state[k].detach() for k in floats],
            [ema_state[k] for k in others],
            [state[k] for k in others],
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * weights, d ramping to `decay`; integer buffers are copied."""
        self.updates += 1
        decay = self.decay * (1.0 - math.exp(-self.updates / RAMP_STEPS))
        ema_floats, floats, ema_others, others = self._pairs(model)
        torch._foreach_lerp_(ema_floats, floats, 1.0 - decay)
        for target, source in zip(ema_others, others, strict=True):
            target.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        weights = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return {"decay": self.decay, "updates": self.updates, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
