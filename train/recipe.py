"""Training recipes: the optimizer, learning rate, schedule and clipping a run gets by default.

`ours` (the default) is what the project's studies use at small budgets: AdamW at 2e-3, weight
decay 0.05, linear warm-up from 0.1 over 100 steps, cosine decay to 2%, gradient clipping at 35
(or the loss's own). `paper` is the one the three papers and mmdetection train RetinaNet with
(Focal Loss, GHM and PISA all use it): SGD with momentum 0.9 at lr 0.01 per 16 images (the linear
scaling rule for other batches), weight decay 1e-4, linear warm-up from 0.001 over 500 steps,
the learning rate divided by 10 after 8/12 and 11/12 of the run (epochs 8 and 11 of the 1x
schedule), and gradient clipping only where the papers use it (GHM and PISA: 35; none for focal
and the baselines). Options given on the command line (--lr, --optimizer, --weight-decay,
--warmup-iters, --grad-clip) replace the recipe's value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

RECIPE_NAMES = ("ours", "paper")
PAPER_BATCH = 16  # the papers' batch, which lr 0.01 belongs to


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    lr: float  # at PAPER_BATCH images per step when `scale_lr`
    scale_lr: bool
    weight_decay: float
    warmup_iters: int
    warmup_start: float  # the first step's learning rate, as a fraction of the peak
    schedule: str  # "cosine" (to 2%) or "step" (x0.1 at each of `steps`)
    steps: tuple[float, ...]  # fractions of the run
    clip_every_loss: bool  # clip every loss (else only where the loss recommends it)


RECIPES = {
    "ours": Recipe("adamw", 2e-3, False, 0.05, 100, 0.1, "cosine", (), True),
    "paper": Recipe("sgd", 0.01, True, 1e-4, 500, 0.001, "step", (8 / 12, 11 / 12), False),
}


def recipe_lr(recipe: Recipe, batch_size: int) -> float:
    return recipe.lr * batch_size / PAPER_BATCH if recipe.scale_lr else recipe.lr


def lr_factor(
    recipe: Recipe, total_steps: int, warmup: int, final_ratio: float = 0.02
) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up from `recipe.warmup_start` (none when
    `warmup` is 0; at most half the run), then the recipe's decay."""
    warmup = max(0, min(warmup, total_steps // 2))
    start = recipe.warmup_start
    milestones = [round(fraction * total_steps) for fraction in recipe.steps]

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * step / warmup
        if recipe.schedule == "step":
            return 0.1 ** sum(step >= milestone for milestone in milestones)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
