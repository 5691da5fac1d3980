"""How each detection loss is wired: parts and gradients of hand-built tiny batches.

The elementwise formulas are tested in test_losses*.py; these tests pin what is summed, over
which anchors, with which weights and divided by what. Every registered loss and every
`--reg-loss` is built the way the trainer builds it (`resolved_loss_options` + `build_loss`) and
run on a hand-built `AnchorAssignment` (two images, five or eight anchors, two classes, with
positives, negatives and ignored anchors). Expected parts are plain-Python loops over anchors and
classes with `math` over the formulas of train/losses/README.md, never the project's loss code.
Expected gradients are the papers' closed forms (README: dFL/dx, dFL*/dx, dASL1/dd, ...) or
central differences of those loops, with the quantities the losses treat as constants (ISR-P
weights, CARL's rescale factor, GHM densities, the sampled set) frozen at the evaluation point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from train.assign import AnchorAssignment
from train.builders import resolved_loss_options
from train.config import TrainConfig
from train.losses import LOSSES, REG_LOSS_NAMES, DetectionLoss, build_loss

Box = tuple[float, float, float, float]
Grid = list[list[list[float]]]  # [image][anchor][class or coordinate]

VALUE_REL = 1e-5  # float32 sums of a few dozen O(1) terms
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7  # float32 closed-form / autograd vs float64 loops


# ---------------------------------------------------------------------------------------------
# Hand-built batches
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One anchor of one image as the assigner would label it (label -1: not a positive)."""

    label: int = -1
    valid: bool = True
    gt_box: Box = (0.0, 0.0, 0.0, 0.0)
    gt_id: int = -1

    @property
    def positive(self) -> bool:
        return self.label >= 0


NEG = Row()
IGNORED = Row(valid=False)


@dataclass
class Case:
    """A batch: anchors (N), per-image rows (B x N), logits (B x N x C) and deltas (B x N x 4)."""

    anchors: list[Box]
    rows: list[list[Row]]
    logits: Grid
    deltas: Grid

    def rounded(self) -> Case:
        """The same numbers as float32 holds them, so the loops see what the loss sees."""
        return Case(
            anchors=[tuple(_f32(list(a))) for a in self.anchors],
            rows=[
                [replace(r, gt_box=tuple(_f32(list(r.gt_box)))) for r in image]
                for image in self.rows
            ],
            logits=[[_f32(v) for v in image] for image in self.logits],
            deltas=[[_f32(v) for v in image] for image in self.deltas],
        )

    def cells(self) -> list[tuple[int, int, Row]]:
        """(image, anchor, row) of every anchor of the batch, in order."""
        return [(b, n, row) for b, image in enumerate(self.rows) for n, row in enumerate(image)]

    @property
    def num_positives(self) -> int:
        return sum(row.positive for _, _, row in self.cells())


def _f32(values: list[float]) -> list[float]:
    return torch.tensor(values, dtype=torch.float32).tolist()


def assignment_of(case: Case) -> AnchorAssignment:
    """The AnchorAssignment the losses receive, written field by field from the rows."""
    labels = torch.tensor([[r.label for r in image] for image in case.rows])
    valid = torch.tensor([[r.valid for r in image] for image in case.rows])
    assert bool((valid | (labels < 0)).all()), "a positive must be valid"
    return AnchorAssignment(
        labels=labels,
        positive=labels >= 0,
        valid=valid,
        gt_boxes=torch.tensor([[list(r.gt_box) for r in image] for image in case.rows]),
        gt_ids=torch.tensor([[r.gt_id for r in image] for image in case.rows]),
        max_iou=torch.zeros(labels.shape),
        anchors=torch.tensor(case.anchors),
    )


def zeros_like_grid(grid: Grid) -> Grid:
    return [[[0.0] * len(cell) for cell in image] for image in grid]


# Two images, five anchors, two classes. Anchors 2 and 4 are 32 px (pyramid level 1), the others
# 16 px (level 0). Image 0: positives on anchors 0 (class 0) and 2 (class 1), anchor 3 ignored.
# Image 1: a positive on anchor 1 (class 1), anchor 4 ignored. Three positives in the batch.
# The ignored anchors have large logits: counting them would change every part.
SMALL_ANCHORS: list[Box] = [
    (0.0, 0.0, 16.0, 16.0),
    (8.0, 8.0, 24.0, 24.0),
    (16.0, 16.0, 48.0, 48.0),
    (32.0, 0.0, 48.0, 16.0),
    (0.0, 32.0, 32.0, 64.0),
]
SMALL_LEVELS = [0, 0, 1, 0, 1]
SMALL_ROWS = [
    [
        Row(0, gt_box=(1.0, 2.0, 19.0, 17.0), gt_id=0),
        NEG,
        Row(1, gt_box=(14.0, 18.0, 46.0, 52.0), gt_id=1),
        IGNORED,
        NEG,
    ],
    [NEG, Row(1, gt_box=(6.0, 10.0, 26.0, 22.0), gt_id=2), NEG, NEG, IGNORED],
]
SMALL_LOGITS: Grid = [
    [[0.5, -3.5], [-4.0, -1.0], [-2.5, 1.5], [3.0, -4.5], [-5.0, -1.25]],
    [[-3.75, 0.25], [-1.5, -0.5], [-4.25, -2.0], [-1.0, -6.0], [4.0, 0.75]],
]
# Positives' deltas sit off their targets by amounts on both sides of smooth-L1's beta 0.11
# (targets: image 0 anchor 0 (.125, .09375, .1178, -.0645), anchor 2 (-.0625, .09375, 0, .0606);
# image 1 anchor 1 (0, 0, .2231, -.2877)). Other anchors' deltas must get no gradient.
SMALL_DELTAS: Grid = [
    [
        [0.25, 0.0, 0.125, 0.5],
        [0.3, -0.2, 0.1, 0.05],
        [0.0, 0.125, -0.25, 0.0],
        [-0.4, 0.3, 0.2, -0.1],
        [0.15, 0.15, -0.3, 0.2],
    ],
    [
        [0.2, 0.1, -0.1, 0.3],
        [-0.125, 0.0625, 0.25, -0.5],
        [0.05, -0.35, 0.4, 0.1],
        [-0.2, 0.2, 0.0, 0.25],
        [0.1, -0.1, 0.3, -0.3],
    ],
]


def small_case() -> Case:
    return Case(SMALL_ANCHORS, SMALL_ROWS, SMALL_LOGITS, SMALL_DELTAS)


# ---------------------------------------------------------------------------------------------
# Building and running the losses as the trainer does
# ---------------------------------------------------------------------------------------------


def _cli_string(value: Any) -> str:
    """How a value arrives from `--loss-opt key=value`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def trainer_loss(
    name: str, options: dict[str, Any] | None = None, reg_loss: str | None = None
) -> DetectionLoss:
    """The loss exactly as Trainer builds it: config -> resolved_loss_options -> build_loss."""
    config = TrainConfig(
        out=Path("unused"),
        loss=name,
        loss_options={k: _cli_string(v) for k, v in (options or {}).items()},
        reg_loss=reg_loss,
    )
    return build_loss(config.loss, resolved_loss_options(config))


@dataclass
class Outcome:
    """Each returned part and the gradients of their sum (what the trainer backpropagates)."""

    parts: dict[str, float]
    logits_grad: Grid
    deltas_grad: Grid


def run_loss(
    loss: DetectionLoss,
    case: Case,
    backward_of: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> Outcome:
    """Call `loss` on the case; backward through the sum of parts (or `backward_of(parts)`)."""
    logits = torch.tensor(case.logits, dtype=torch.float32, requires_grad=True)
    deltas = torch.tensor(case.deltas, dtype=torch.float32, requires_grad=True)
    parts = loss(logits, deltas, assignment_of(case))
    total = backward_of(parts) if backward_of is not None else sum(parts.values())
    total.backward()
    zero_logits, zero_deltas = torch.zeros_like(logits), torch.zeros_like(deltas)
    return Outcome(
        parts={k: v.item() for k, v in parts.items()},
        logits_grad=(logits.grad if logits.grad is not None else zero_logits).tolist(),
        deltas_grad=(deltas.grad if deltas.grad is not None else zero_deltas).tolist(),
    )


def assert_outcome(actual: Outcome, expected: Outcome) -> None:
    assert set(actual.parts) == set(expected.parts)
    for key, value in expected.parts.items():
        assert actual.parts[key] == pytest.approx(value, rel=VALUE_REL, abs=1e-9), key
    assert_grid(actual.logits_grad, expected.logits_grad, "d/d cls_logits")
    assert_grid(actual.deltas_grad, expected.deltas_grad, "d/d box_deltas")


def assert_grid(actual: Grid, expected: Grid, what: str) -> None:
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=GRAD_RTOL,
        atol=GRAD_ATOL,
        msg=lambda m: f"{what}: {m}",
    )


# ---------------------------------------------------------------------------------------------
# The formulas, restated with math (README / papers)
# ---------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class Family:
    """Elementwise classification loss: focal (alpha < 0: off; gamma 0: CE) or FL*."""

    kind: str = "focal"
    alpha: float = 0.25
    gamma: float = 2.0
    beta: float = 0.0


CE = Family("focal", alpha=-1.0, gamma=0.0)


def element_loss(x: float, y: int, fam: Family) -> float:
    """FL = -alpha_t (1 - p_t)^gamma log p_t;  FL* = -log sigmoid(gamma x_t + beta) / gamma."""
    if fam.kind == "focal-star":
        x_t = x if y == 1 else -x
        return -math.log(sigmoid(fam.gamma * x_t + fam.beta)) / fam.gamma
    p = sigmoid(x)
    p_t = p if y == 1 else 1.0 - p
    alpha_t = 1.0 if fam.alpha < 0 else (fam.alpha if y == 1 else 1.0 - fam.alpha)
    return -alpha_t * (1.0 - p_t) ** fam.gamma * math.log(p_t)


def element_grad(x: float, y: int, fam: Family) -> float:
    """README: dFL/dx = alpha_t y' (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1);
    dFL*/dx = y' (p*_t - 1)."""
    sign = 1.0 if y == 1 else -1.0
    if fam.kind == "focal-star":
        return sign * (sigmoid(fam.gamma * sign * x + fam.beta) - 1.0)
    p = sigmoid(x)
    p_t = p if y == 1 else 1.0 - p
    alpha_t = 1.0 if fam.alpha < 0 else (fam.alpha if y == 1 else 1.0 - fam.alpha)
    return alpha_t * sign * (1.0 - p_t) ** fam.gamma * (fam.gamma * p_t * math.log(p_t) + p_t - 1)


def row_loss(logits: list[float], label: int, fam: Family) -> float:
    """One anchor's classification loss: the element losses summed over its classes."""
    return sum(element_loss(x, int(c == label), fam) for c, x in enumerate(logits))


def row_grad(logits: list[float], label: int, fam: Family) -> list[float]:
    return [element_grad(x, int(c == label), fam) for c, x in enumerate(logits)]


def encode(gt: Box, anchor: Box) -> list[float]:
    """R-CNN deltas (dx, dy, dw, dh) moving the anchor onto gt."""
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    return [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]


def decode(deltas: list[float], anchor: Box) -> Box:
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx = anchor[0] + aw / 2 + deltas[0] * aw
    cy = anchor[1] + ah / 2 + deltas[1] * ah
    w, h = aw * math.exp(deltas[2]), ah * math.exp(deltas[3])
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def intersection(a: Box, b: Box) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    return inter / (area(a) + area(b) - inter)


def giou_loss(a: Box, b: Box) -> float:
    """1 - GIoU = 1 - IoU + (C - U) / C, C the smallest enclosing box."""
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    hull = area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    return 1.0 - inter / union + (hull - union) / hull


@dataclass(frozen=True)
class Reg:
    """A --reg-loss with its options (README defaults)."""

    kind: str = "smooth-l1"
    beta: float = 0.11
    mu: float = 0.02


def reg_value_and_grad(
    deltas: list[float], anchor: Box, gt: Box, reg: Reg
) -> tuple[float, list[float]]:
    """One positive's regression loss (summed over coordinates) and d/d deltas.

    smooth-L1: 0.5 d^2 / beta below beta, |d| - beta / 2 above; L1: |d|;
    ASL1: sqrt(d^2 + mu^2) - mu with derivative d / sqrt(d^2 + mu^2); GIoU: on decoded boxes,
    derivative by central differences.
    """
    if reg.kind == "giou":
        value = giou_loss(decode(deltas, anchor), gt)
        return value, central_difference(lambda d: giou_loss(decode(d, anchor), gt), deltas)
    diffs = [p - t for p, t in zip(deltas, encode(gt, anchor), strict=True)]
    values, grads = [], []
    for d in diffs:
        if reg.kind == "smooth-l1" and abs(d) < reg.beta:
            values.append(0.5 * d * d / reg.beta)
            grads.append(d / reg.beta)
        elif reg.kind in ("smooth-l1", "l1"):
            shift = 0.5 * reg.beta if reg.kind == "smooth-l1" else 0.0
            values.append(abs(d) - shift)
            grads.append(math.copysign(1.0, d))
        elif reg.kind == "asl1":
            root = math.sqrt(d * d + reg.mu * reg.mu)
            values.append(root - reg.mu)
            grads.append(d / root)
        else:
            raise AssertionError(reg.kind)
    return sum(values), grads


def central_difference(f: Callable[[list[float]], float], point: list[float]) -> list[float]:
    """(f(x + h e_i) - f(x - h e_i)) / 2h per coordinate (~1e-9 on these smooth pieces)."""
    step = 1e-6
    grads = []
    for i in range(len(point)):
        up, down = list(point), list(point)
        up[i] += step
        down[i] -= step
        grads.append((f(up) - f(down)) / (2 * step))
    return grads


def grid_central_difference(f: Callable[[Case], float], case: Case) -> tuple[Grid, Grid]:
    """d f / d logits and d f / d deltas of a loop-defined total, entry by entry."""
    step = 1e-6
    grads = []
    for which in ("logits", "deltas"):
        grid = getattr(case, which)
        out = zeros_like_grid(grid)
        for b, image in enumerate(grid):
            for n, cell in enumerate(image):
                for j in range(len(cell)):
                    up, down = copy.deepcopy(grid), copy.deepcopy(grid)
                    up[b][n][j] += step
                    down[b][n][j] -= step
                    rise = f(replace(case, **{which: up})) - f(replace(case, **{which: down}))
                    out[b][n][j] = rise / (2 * step)
        grads.append(out)
    return grads[0], grads[1]


def regression_expected(case: Case, reg: Reg, scale: float) -> tuple[float, Grid]:
    """scale * sum of the positives' regression loss, and its gradient (zero off positives)."""
    total, grad = 0.0, zeros_like_grid(case.deltas)
    for b, n, row in case.cells():
        if row.positive:
            value, g = reg_value_and_grad(case.deltas[b][n], case.anchors[n], row.gt_box, reg)
            total += value
            grad[b][n] = [scale * gi for gi in g]
    return scale * total, grad


# ---------------------------------------------------------------------------------------------
# Coverage: every registered loss and --reg-loss has a wiring test below
# ---------------------------------------------------------------------------------------------

COVERED_LOSSES = {
    "ce",
    "balanced-ce",
    "focal",
    "focal-star",
    "ghm",
    "pisa",
    "pisa-center",
    "random",
    "ohem",
}
COVERED_REG_LOSSES = {"smooth-l1", "l1", "asl1", "giou"}


def test_every_registered_loss_and_reg_loss_has_a_wiring_test() -> None:
    """A new loss or --reg-loss must come with a hand-worked case here."""
    assert set(LOSSES) == COVERED_LOSSES
    assert set(REG_LOSS_NAMES) == COVERED_REG_LOSSES


# ---------------------------------------------------------------------------------------------
# ce / balanced-ce / focal / focal-star: sum over non-ignored anchors x classes / positives
# ---------------------------------------------------------------------------------------------

SIGMOID_DEFAULTS = {
    "ce": Family("focal", alpha=-1.0, gamma=0.0),
    "balanced-ce": Family("focal", alpha=0.75, gamma=0.0),
    "focal": Family("focal", alpha=0.25, gamma=2.0),
    "focal-star": Family("focal-star", gamma=4.0, beta=0.0),
}


def sigmoid_family_expected(
    case: Case, fam: Family, reg: Reg = Reg(), reg_weight: float = 1.0
) -> Outcome:
    """RetinaNet: (sum of element losses over valid anchors x classes) / positives, + reg."""
    num_pos = case.num_positives
    cls, logits_grad = 0.0, zeros_like_grid(case.logits)
    for b, n, row in case.cells():
        if row.valid:
            cls += row_loss(case.logits[b][n], row.label, fam)
            logits_grad[b][n] = [g / num_pos for g in row_grad(case.logits[b][n], row.label, fam)]
    reg_total, deltas_grad = regression_expected(case, reg, reg_weight / num_pos)
    return Outcome({"cls": cls / num_pos, "reg": reg_total}, logits_grad, deltas_grad)


@pytest.mark.parametrize(
    "name,options",
    [
        ("ce", {}),
        ("balanced-ce", {}),
        ("focal", {}),
        ("focal-star", {}),
        ("focal", {"alpha": 0.4, "gamma": 1.5, "reg_weight": 2.5}),
        ("balanced-ce", {"alpha": 0.3}),
        ("focal-star", {"gamma": 2.0, "beta": 0.5}),
    ],
    ids=["ce", "balanced-ce", "focal", "focal-star", "focal-options", "balanced-ce-alpha",
         "focal-star-options"],
)  # fmt: skip
def test_sigmoid_family_parts_and_gradients(name: str, options: dict[str, float]) -> None:
    """Ignored anchors contribute nothing; cls and reg are divided by the 3 positives."""
    case = small_case()
    fam_options = {k: v for k, v in options.items() if k in {"alpha", "gamma", "beta"}}
    fam = replace(SIGMOID_DEFAULTS[name], **fam_options)
    expected = sigmoid_family_expected(
        case.rounded(), fam, reg_weight=options.get("reg_weight", 1.0)
    )
    assert_outcome(run_loss(trainer_loss(name, options), case), expected)


def test_focal_hand_numbers_at_zero_logits() -> None:
    """All logits 0 (p = 1/2), alpha .25, gamma 2: a positive element costs .25 * .25 * ln 2,
    a negative .75 * .25 * ln 2; 8 valid anchors x 2 classes with 3 positive elements, / 3."""
    case = replace(small_case(), logits=[[[0.0, 0.0]] * 5] * 2)
    cls = run_loss(trainer_loss("focal"), case).parts["cls"]
    assert cls == pytest.approx((3 * 0.0625 + 13 * 0.1875) * math.log(2) / 3, rel=1e-6)


def test_batch_without_positives_is_divided_by_one() -> None:
    """The positive count is clamped to 1, so an empty batch gives the plain sum, not inf/NaN."""
    rows = [[NEG, NEG, NEG, IGNORED, NEG], [NEG, NEG, NEG, NEG, IGNORED]]
    case = replace(small_case(), rows=rows)
    fam = SIGMOID_DEFAULTS["focal"]
    exact = case.rounded()
    expected = sum(
        row_loss(exact.logits[b][n], -1, fam) for b, n, row in exact.cells() if row.valid
    )
    parts = run_loss(trainer_loss("focal"), case).parts
    assert parts == pytest.approx({"cls": expected, "reg": 0.0}, rel=VALUE_REL)


# ---------------------------------------------------------------------------------------------
# --reg-loss: smooth-l1 / l1 / asl1 / giou on the positives, onto their own matched box
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reg,options",
    [
        (Reg("smooth-l1"), {}),
        (Reg("smooth-l1", beta=0.2), {"reg_beta": 0.2, "reg_weight": 3.0}),
        (Reg("l1"), {}),
        (Reg("asl1"), {}),
        (Reg("asl1", mu=0.1), {"reg_mu": 0.1}),
        (Reg("giou"), {"reg_weight": 2.0}),
    ],
    ids=["smooth-l1", "smooth-l1-beta", "l1", "asl1", "asl1-mu", "giou"],
)
def test_reg_loss_parts_and_gradients(reg: Reg, options: dict[str, float]) -> None:
    """`--reg-loss X` with focal: reg = reg_weight * sum over positives / positives."""
    case = small_case()
    expected = sigmoid_family_expected(
        case.rounded(), SIGMOID_DEFAULTS["focal"], reg, options.get("reg_weight", 1.0)
    )
    loss = trainer_loss("focal", options, reg_loss=reg.kind)
    assert_outcome(run_loss(loss, case), expected)


def test_ghm_with_another_reg_loss_is_unharmonized_per_positive() -> None:
    """`--loss ghm --reg-loss giou`: GHM-R is switched off, reg = 10 * sum GIoU loss / positives."""
    case = small_case()
    exact = case.rounded()
    reg_total, deltas_grad = regression_expected(exact, Reg("giou"), 10.0 / exact.num_positives)
    outcome = run_loss(trainer_loss("ghm", reg_loss="giou"), case)
    assert outcome.parts["reg"] == pytest.approx(reg_total, rel=VALUE_REL)
    assert_grid(outcome.deltas_grad, deltas_grad, "d/d box_deltas")


# ---------------------------------------------------------------------------------------------
# GHM-C + GHM-R: explicit histograms, EMA over two calls
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GhmSettings:
    """GHM's options as README lists them (defaults)."""

    bins: int = 30
    momentum: float = 0.75
    reg_bins: int = 10
    reg_momentum: float = 0.7
    reg_mu: float = 0.02
    reg_weight: float = 10.0
    cls_weight: float = 1.0
    level_mode: str = "global"
    ema_init: str = "first"


def bin_of(g: float, bins: int) -> int:
    """floor(g * bins), last bin closed; refuses g within rounding of an edge (fixture guard)."""
    scaled = g * bins
    inner_edge = 0 < round(scaled) < bins
    assert not (inner_edge and abs(scaled - round(scaled)) < 1e-4), f"g={g} too near an edge"
    return min(int(scaled), bins - 1)


def harmonizing_weights(
    elements: list[tuple[float, int]],
    bins: int,
    momentum: float,
    settings: GhmSettings,
    ema: dict,
) -> list[float]:
    """1 / (density * n) for each counted (g, level) element; advances `ema` in place.

    global: one histogram; per-level: one histogram and one EMA per level; reference: one
    histogram per level, one EMA buffer stepped level after level. n counts the non-empty bins
    of the element's histogram; an EMA bin starts at its first count (ema_init first) or 0.
    """
    levels = [0 if settings.level_mode == "global" else level for _, level in elements]
    bin_index = [bin_of(g, bins) for g, _ in elements]
    weights = [0.0] * len(elements)
    for level in sorted(set(levels)):
        members = [i for i in range(len(elements)) if levels[i] == level]
        counts: dict[int, int] = {}
        for i in members:
            counts[bin_index[i]] = counts.get(bin_index[i], 0) + 1
        density = {}
        for slot, count in counts.items():
            key = slot if settings.level_mode == "reference" else (level, slot)
            old = ema.get(key, 0.0)
            if settings.ema_init == "first" and old == 0.0:
                ema[key] = float(count)
            else:
                ema[key] = momentum * old + (1 - momentum) * count
            density[slot] = ema[key]
        for i in members:
            weights[i] = 1.0 / (density[bin_index[i]] * len(counts))
    return weights


def ghm_expected(case: Case, settings: GhmSettings, state: dict) -> Outcome:
    """GHM-C over valid anchors x classes (negatives included), GHM-R over positives' coords."""
    cls_elements, cls_terms = [], []  # (g, level), (BCE, dBCE/dx) of counted elements
    for b, n, row in case.cells():
        if row.valid:
            for c, x in enumerate(case.logits[b][n]):
                t = float(c == row.label)
                p = sigmoid(x)
                cls_elements.append((abs(p - t), SMALL_LEVELS[n]))
                bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                cls_terms.append(((b, n, c), bce, p - t))
    cls_w = harmonizing_weights(
        cls_elements, settings.bins, settings.momentum, settings, state["cls"]
    )
    cls, logits_grad = 0.0, zeros_like_grid(case.logits)
    for ((b, n, c), bce, grad), w in zip(cls_terms, cls_w, strict=True):
        cls += settings.cls_weight * bce * w
        logits_grad[b][n][c] = settings.cls_weight * grad * w

    reg_elements, reg_terms = [], []
    mu = settings.reg_mu
    for b, n, row in case.cells():
        if row.positive:
            target = encode(row.gt_box, case.anchors[n])
            for j, (p, t) in enumerate(zip(case.deltas[b][n], target, strict=True)):
                d = p - t
                root = math.sqrt(d * d + mu * mu)
                reg_elements.append((abs(d) / root, SMALL_LEVELS[n]))
                reg_terms.append(((b, n, j), root - mu, d / root))
    reg_w = harmonizing_weights(
        reg_elements, settings.reg_bins, settings.reg_momentum, settings, state["reg"]
    )
    reg, deltas_grad = 0.0, zeros_like_grid(case.deltas)
    for ((b, n, j), value, grad), w in zip(reg_terms, reg_w, strict=True):
        reg += settings.reg_weight * value * w
        deltas_grad[b][n][j] = settings.reg_weight * grad * w
    return Outcome({"cls": cls, "reg": reg}, logits_grad, deltas_grad)


# The second call moves the logits and deltas so that bins empty, fill and share differently.
SECOND_LOGITS: Grid = [[[x + 0.75 * (1 - 2 * (c % 2)) for c, x in enumerate(a)] for a in image]
                       for image in SMALL_LOGITS]  # fmt: skip
SECOND_DELTAS: Grid = [[[0.5 * d - 0.03 for d in a] for a in image] for image in SMALL_DELTAS]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"level_mode": "reference", "ema_init": "zero"},
        {"level_mode": "per-level"},
        {"bins": 10, "momentum": 0.5, "reg_bins": 5, "reg_momentum": 0.25, "reg_mu": 0.05,
         "cls_weight": 0.5, "reg_weight": 3.0},
    ],
    ids=["defaults", "reference-zero", "per-level", "options"],
)  # fmt: skip
def test_ghm_two_calls_parts_and_gradients(options: dict[str, Any]) -> None:
    """Histogram over valid anchors x classes (ignored anchors out, negatives in), GHM-R over
    the positives' coordinates, EMA of the counts carried from the first call to the second."""
    settings = replace(GhmSettings(), **options)
    loss = trainer_loss("ghm", options)
    state: dict[str, dict] = {"cls": {}, "reg": {}}
    for logits, deltas in ((SMALL_LOGITS, SMALL_DELTAS), (SECOND_LOGITS, SECOND_DELTAS)):
        case = replace(small_case(), logits=logits, deltas=deltas)
        expected = ghm_expected(case.rounded(), settings, state)
        assert_outcome(run_loss(loss, case), expected)


def test_ghm_first_call_hand_histogram() -> None:
    """Defaults, first call: the 16 valid elements fall in bins {0: 6, 5: 2, 8: 2, 2, 3, 6, 11,
    16, 18: 1 each}, 9 non-empty bins, so an element's weight is 1 / (count * 9)."""
    exact = small_case().rounded()
    gs = []
    for b, n, row in exact.cells():
        if row.valid:
            gs += [abs(sigmoid(x) - (c == row.label)) for c, x in enumerate(exact.logits[b][n])]
    counts: dict[int, int] = {}
    for g in gs:
        counts[bin_of(g, 30)] = counts.get(bin_of(g, 30), 0) + 1
    assert counts == {0: 6, 5: 2, 8: 2, 2: 1, 3: 1, 6: 1, 11: 1, 16: 1, 18: 1}
    expected_cls = sum(
        -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))
        / (counts[bin_of(abs(sigmoid(x) - t), 30)] * 9)
        for b, n, row in exact.cells()
        if row.valid
        for c, x in enumerate(exact.logits[b][n])
        for t in [float(c == row.label)]
    )
    assert run_loss(trainer_loss("ghm"), small_case()).parts["cls"] == pytest.approx(
        expected_cls, rel=VALUE_REL
    )


# ---------------------------------------------------------------------------------------------
# PISA / pisa-center: IoU-HLR, ISR-P, CARL
# ---------------------------------------------------------------------------------------------

GT_A: Box = (0.0, 0.0, 10.0, 10.0)  # class 0
GT_B: Box = (20.0, 0.0, 30.0, 10.0)  # class 0
GT_C: Box = (0.0, 40.0, 10.0, 50.0)  # class 1
PISA_ANCHORS: list[Box] = [
    (0.0, 0.0, 10.0, 8.0),  # A0: IoU with A 80 / 100 = .8
    (0.0, 0.0, 10.0, 6.0),  # A1: .6
    (0.0, 0.0, 10.0, 5.0),  # A2: .5 as an anchor; its deltas regress it to (0, 0, 10, 9): .9
    (20.0, 0.0, 30.0, 5.8),  # B0: .58
    (20.0, 0.0, 30.0, 5.2),  # B1: .52
    (-10.5, 40.0, 9.5, 50.0),  # C0: 95 / 205 = .4634; centre (-.5, 45) outside C
    (0.0, 40.0, 4.4, 50.0),  # C1: 44 / 100 = .44; centre (2.2, 45) inside C
    (60.0, 60.0, 76.0, 76.0),
]
A2_DELTAS = [0.0, 0.4, 0.0, math.log(1.8)]  # centre y 2.5 + .4 * 5 = 4.5, height 9
PISA_ROWS = [
    [
        Row(0, gt_box=GT_A, gt_id=0),
        Row(0, gt_box=GT_A, gt_id=0),
        Row(0, gt_box=GT_A, gt_id=0),
        Row(0, gt_box=GT_B, gt_id=1),
        Row(0, gt_box=GT_B, gt_id=1),
        NEG,
        NEG,
        IGNORED,
    ],
    [NEG, NEG, IGNORED, NEG, NEG, Row(1, gt_box=GT_C, gt_id=2), Row(1, gt_box=GT_C, gt_id=2), NEG],
]
PISA_LOGITS: Grid = [
    [[0.5, -2.0], [-0.75, -3.0], [1.25, -2.5], [-0.25, -1.75], [0.0, -3.5], [-3.0, -2.25],
     [-1.5, -4.0], [2.5, 3.0]],
    [[-2.75, -1.0], [-4.0, -0.5], [3.5, 1.0], [-2.0, -3.25], [-1.25, -5.0], [-3.0, 0.75],
     [-2.5, -0.25], [-3.5, -1.5]],
]  # fmt: skip
NOISE = [0.3, -0.2, 0.1, 0.05]  # deltas of non-positives: must not matter
PISA_DELTAS: Grid = [
    [[0.0] * 4, [0.0] * 4, A2_DELTAS, [0.0] * 4, [0.0] * 4, NOISE, NOISE, NOISE],
    [NOISE, NOISE, NOISE, NOISE, NOISE, [0.0] * 4, [0.0] * 4, NOISE],
]
# (image, anchor) of each positive, in the order of PISA_IOUS and the rank tables.
PISA_POSITIVES = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6)]
PISA_IOUS = [0.8, 0.6, 0.9, 0.58, 0.52, 95 / 205, 0.44]
# IoU-HLR, class 0 (n = 5): object A by IoU A2 .9, A0 .8, A1 .6; B: B0 .58, B1 .52.
# Local rank 0 {A2 .9, B0 .58} -> 0, 1; rank 1 {A0 .8, B1 .52} -> 2, 3; rank 2 {A1} -> 4.
# (A plain IoU sort would give A2 0, A0 1, A1 2, B0 3, B1 4.) Class 1 (n = 2): C0 .4634, C1 .44.
PISA_RANKS = [2, 4, 0, 1, 3, 0, 1]
# pisa-center, margin .05: C1's centre is inside, C0's is not: .44 + .05 = .49 > .4634.
# Every class-0 anchor's centre is inside its object, so class 0 keeps its order.
PISA_CENTER_RANKS = [2, 4, 0, 1, 3, 1, 0]


def pisa_case() -> Case:
    return Case(PISA_ANCHORS, PISA_ROWS, PISA_LOGITS, PISA_DELTAS)


@dataclass(frozen=True)
class PisaSettings:
    """PISA's options with README's defaults; center_margin None: plain pisa."""

    alpha: float = 0.25
    gamma: float = 2.0
    isr_k: float = 2.0
    isr_bias: float = 0.0
    isr_normalizer: str = "class"
    carl_k: float = 1.0
    carl_bias: float = 0.2
    carl_weight: float = 1.0
    carl_rescale: bool = False
    reg_weight: float = 1.0
    center_margin: float | None = None


def hlr_ranks(
    ious: list[float], labels: list[int], gt_ids: list[int], inside: list[bool]
) -> list[int]:
    """IoU-HLR by loops: local rank within the object by IoU (descending), then within the
    class by (local rank, IoU descending); ties: centre-inside first, then input order."""
    order_key = {i: (-ious[i], not inside[i], i) for i in range(len(ious))}
    local = {}
    for obj in set(gt_ids):
        members = sorted((i for i in range(len(ious)) if gt_ids[i] == obj), key=order_key.get)
        for r, i in enumerate(members):
            local[i] = r
    ranks = [0] * len(ious)
    for label in set(labels):
        members = [i for i in range(len(ious)) if labels[i] == label]
        for r, i in enumerate(sorted(members, key=lambda i: (local[i], *order_key[i]))):
            ranks[i] = r
    return ranks


def centre_inside(anchor: Box, gt: Box) -> bool:
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def isr_weights_from_ranks(
    ranks: list[int], labels: list[int], settings: PisaSettings
) -> list[float]:
    """w = ((1 - bias) (n - r) / n + bias)^k, n = n_j of the class (or the largest n_j)."""
    sizes = {label: labels.count(label) for label in labels}
    weights = []
    for r, label in zip(ranks, labels, strict=True):
        n = sizes[label] if settings.isr_normalizer == "class" else max(sizes.values())
        u = (n - r) / n
        weights.append(((1 - settings.isr_bias) * u + settings.isr_bias) ** settings.isr_k)
    return weights


def pisa_ranks(case: Case, settings: PisaSettings) -> list[int]:
    """IoU-HLR of the positives on the IoUs of their decoded boxes (pisa-center: + margin)."""
    rows = [case.rows[b][n] for b, n in PISA_POSITIVES]
    ious = [
        iou(decode(case.deltas[b][n], case.anchors[n]), row.gt_box)
        for (b, n), row in zip(PISA_POSITIVES, rows, strict=True)
    ]
    inside = [False] * len(rows)
    if settings.center_margin is not None:
        inside = [
            centre_inside(case.anchors[n], row.gt_box)
            for (_, n), row in zip(PISA_POSITIVES, rows, strict=True)
        ]
        ious = [v + settings.center_margin * s for v, s in zip(ious, inside, strict=True)]
    return hlr_ranks(ious, [r.label for r in rows], [r.gt_id for r in rows], inside)


def pisa_frozen_weights(case: Case, settings: PisaSettings, ranks: list[int]) -> list[float]:
    """ISR-P weights rescaled so that sum(w * L) = sum(L) over the positives' focal row loss."""
    fam = Family("focal", settings.alpha, settings.gamma)
    labels = [case.rows[b][n].label for b, n in PISA_POSITIVES]
    weights = isr_weights_from_ranks(ranks, labels, settings)
    losses = [row_loss(case.logits[b][n], case.rows[b][n].label, fam) for b, n in PISA_POSITIVES]
    scale = sum(losses) / sum(w * v for w, v in zip(weights, losses, strict=True))
    return [w * scale for w in weights]


def pisa_parts(
    case: Case, settings: PisaSettings, isr: list[float], carl_factor: float | None
) -> dict[str, float]:
    """cls: focal over valid anchors with positives' rows weighted by ISR-P, / positives;
    reg: smooth-L1 / positives; CARL: sum c_i L_i / positives, c = v / mean(v),
    v = ((1 - b) p_i + b)^k with p_i the positive's own-class probability (c' = c * factor)."""
    fam = Family("focal", settings.alpha, settings.gamma)
    num_pos = case.num_positives
    isr_of = dict(zip(PISA_POSITIVES, isr, strict=True))
    cls = sum(
        isr_of.get((b, n), 1.0) * row_loss(case.logits[b][n], row.label, fam)
        for b, n, row in case.cells()
        if row.valid
    )
    reg_losses = [
        reg_value_and_grad(case.deltas[b][n], case.anchors[n], case.rows[b][n].gt_box, Reg())[0]
        for b, n in PISA_POSITIVES
    ]
    v = [
        ((1 - settings.carl_bias) * sigmoid(case.logits[b][n][case.rows[b][n].label])
         + settings.carl_bias) ** settings.carl_k
        for b, n in PISA_POSITIVES
    ]  # fmt: skip
    c = [vi * len(v) / sum(v) for vi in v]
    if carl_factor is not None:
        c = [ci * carl_factor for ci in c]
    carl = sum(ci * li for ci, li in zip(c, reg_losses, strict=True)) / num_pos
    return {
        "cls": cls / num_pos,
        "reg": settings.reg_weight * sum(reg_losses) / num_pos,
        "carl": settings.carl_weight * carl,
    }


def carl_rescale_factor(case: Case, settings: PisaSettings) -> float | None:
    """The paper's c' factor sum(L) / sum(c L) at this point (held constant), None when off."""
    if not settings.carl_rescale:
        return None
    parts = pisa_parts(case, replace(settings, carl_weight=1.0), [1.0] * 7, None)
    return (parts["reg"] / settings.reg_weight) / parts["carl"]


def pisa_expected(case: Case, settings: PisaSettings, ranks: list[int]) -> Outcome:
    isr = pisa_frozen_weights(case, settings, ranks)
    factor = carl_rescale_factor(case, settings)
    parts = pisa_parts(case, settings, isr, factor)
    logits_grad, deltas_grad = grid_central_difference(
        lambda moved: sum(pisa_parts(moved, settings, isr, factor).values()), case
    )
    return Outcome(parts, logits_grad, deltas_grad)


def test_pisa_fixture_ious_and_ranks_by_hand() -> None:
    """The loops reproduce the IoUs and ranks written by hand above."""
    case = pisa_case()
    for (b, n), expected in zip(PISA_POSITIVES, PISA_IOUS, strict=True):
        box = decode(case.deltas[b][n], case.anchors[n])
        assert iou(box, case.rows[b][n].gt_box) == pytest.approx(expected, rel=1e-9)
    assert pisa_ranks(case, PisaSettings()) == PISA_RANKS
    assert pisa_ranks(case, PisaSettings(center_margin=0.05)) == PISA_CENTER_RANKS
    assert pisa_ranks(case, PisaSettings(center_margin=0.01)) == PISA_RANKS


@pytest.mark.parametrize(
    "name,options,ranks",
    [
        ("pisa", {}, PISA_RANKS),
        ("pisa", {"isr_normalizer": "global", "isr_bias": 0.25, "isr_k": 1.5, "carl_k": 2.0,
                  "carl_bias": 0.1, "carl_weight": 0.5, "reg_weight": 2.0, "alpha": 0.4,
                  "gamma": 1.5}, PISA_RANKS),
        ("pisa", {"carl_rescale": True}, PISA_RANKS),
        ("pisa-center", {}, PISA_CENTER_RANKS),
        ("pisa-center", {"center_margin": 0.01}, PISA_RANKS),
    ],
    ids=["pisa", "pisa-options", "pisa-carl-rescale", "pisa-center", "pisa-center-margin"],
)  # fmt: skip
def test_pisa_parts_and_gradients(name: str, options: dict[str, Any], ranks: list[int]) -> None:
    """All three parts and both gradients, ISR-P weights frozen at the hand-worked ranks."""
    margin = options.get("center_margin", 0.05) if name == "pisa-center" else None
    settings = replace(PisaSettings(), **{**options, "center_margin": margin})
    expected = pisa_expected(pisa_case().rounded(), settings, ranks)
    assert_outcome(run_loss(trainer_loss(name, options), pisa_case()), expected)


# ISR-P weights before the rescale, by hand from the ranks: class 0 (n 5) w = ((5 - r) / 5)^2,
# class 1 (n 2) 1 and 1/4; with the global normalizer M = 5 and bias .25, class 1's rank 1
# gets (.75 * 4 / 5 + .25)^2 and class 0's ((.75 (5 - r) / 5 + .25)^2.
PAPER_RAW = [(3 / 5) ** 2, (1 / 5) ** 2, 1.0, (4 / 5) ** 2, (2 / 5) ** 2, 1.0, 1 / 4]
GLOBAL_RAW = [0.7**2, 0.4**2, 1.0, 0.85**2, 0.55**2, 1.0, 0.85**2]
CENTER_RAW = [(3 / 5) ** 2, (1 / 5) ** 2, 1.0, (4 / 5) ** 2, (2 / 5) ** 2, 1 / 4, 1.0]


@pytest.mark.parametrize(
    "name,options,ranks,raw",
    [
        ("pisa", {}, PISA_RANKS, PAPER_RAW),
        ("pisa", {"isr_normalizer": "global", "isr_bias": 0.25}, PISA_RANKS, GLOBAL_RAW),
        ("pisa-center", {}, PISA_CENTER_RANKS, CENTER_RAW),
    ],
    ids=["pisa", "pisa-global-bias", "pisa-center"],
)
def test_pisa_per_positive_isr_weights(
    name: str, options: dict[str, Any], ranks: list[int], raw: list[float]
) -> None:
    """Each positive's classification gradient is w_i times focal's, w_i from its own rank.

    The rescale makes sum(w L) = sum(L) over the positives, which any weights satisfy, so each
    w_i is checked: up to one common factor it must be the hand-written weight of its rank.
    """
    settings = replace(PisaSettings(), **options)
    expected = pisa_frozen_weights(pisa_case().rounded(), settings, ranks)
    ratios = [e / r for e, r in zip(expected, raw, strict=True)]
    assert ratios == pytest.approx([ratios[0]] * 7, rel=1e-12)
    assert_isr_weights(name, options, pisa_case(), expected)


def assert_isr_weights(
    name: str, options: dict[str, Any], case: Case, expected: list[float]
) -> None:
    """Read each positive's ISR-P weight off the classification gradient (CARL off):
    d cls / d x = w_i dFL/dx / positives on both of the positive's logits."""
    exact = case.rounded()
    focal = Family("focal")
    outcome = run_loss(trainer_loss(name, {**options, "carl_weight": 0.0}), case)
    for (b, n), weight in zip(PISA_POSITIVES, expected, strict=True):
        grad = row_grad(exact.logits[b][n], exact.rows[b][n].label, focal)
        for c in range(2):
            got = outcome.logits_grad[b][n][c] * exact.num_positives / grad[c]
            assert got == pytest.approx(weight, rel=1e-4), (b, n, c)


def with_object_c_anchors(c0: Box, c1: Box) -> Case:
    """The PISA case with object C's two positives on other anchors."""
    anchors = list(PISA_ANCHORS)
    anchors[5], anchors[6] = c0, c1
    return replace(pisa_case(), anchors=anchors)


# Equal IoU .45: C0 (-10, 40, 9, 50) 90 / 200, centre (-.5, 45) outside; C1 (0, 40, 4.5, 50)
# 45 / 100, centre inside. Plain PISA: input order, C0 first; pisa-center: C1 first, by the
# margin (.50 > .45) and, with margin 0, by the centre breaking the tie.
TIE_CASE = ((-10.0, 40.0, 9.0, 50.0), (0.0, 40.0, 4.5, 50.0))
# C0 as before (.4634, outside); C1 (-10, 40, 10, 51): 100 / 220 = .4545 with its centre
# (0, 45.5) on C's left edge, which counts as inside: .4545 + .05 > .4634.
EDGE_CASE = ((-10.5, 40.0, 9.5, 50.0), (-10.0, 40.0, 10.0, 51.0))


@pytest.mark.parametrize(
    "name,options,anchors,c_ranks",
    [
        ("pisa", {}, TIE_CASE, [0, 1]),
        ("pisa-center", {}, TIE_CASE, [1, 0]),
        ("pisa-center", {"center_margin": 0.0}, TIE_CASE, [1, 0]),
        ("pisa", {}, EDGE_CASE, [0, 1]),
        ("pisa-center", {}, EDGE_CASE, [1, 0]),
    ],
    ids=["tie-pisa", "tie-center", "tie-center-margin-0", "edge-pisa", "edge-center"],
)
def test_pisa_center_ties_and_edges(
    name: str, options: dict[str, Any], anchors: tuple[Box, Box], c_ranks: list[int]
) -> None:
    """README: at equal effective IoU the centre-inside sample ranks first; edges inclusive."""
    case = with_object_c_anchors(*anchors)
    exact = case.rounded()
    ious = [iou(decode(exact.deltas[1][n], exact.anchors[n]), GT_C) for n in (5, 6)]
    assert ious == pytest.approx([0.45, 0.45] if anchors == TIE_CASE else [95 / 205, 100 / 220])
    margin = options.get("center_margin", 0.05) if name == "pisa-center" else None
    settings = replace(PisaSettings(), center_margin=margin)
    ranks = PISA_RANKS[:5] + c_ranks
    assert pisa_ranks(exact, settings) == ranks
    assert_isr_weights(name, options, case, pisa_frozen_weights(exact, settings, ranks))


def test_carl_gradient_into_the_classifier() -> None:
    """dCARL/dx_i = (1 - b) P / S (L_i - sum_j v_j L_j / S) / P * p_i (1 - p_i), k = 1,
    S = sum v, on each positive's own-class logit; zero on every other logit."""
    exact = pisa_case().rounded()
    num_pos, bias = exact.num_positives, 0.2
    probs = [sigmoid(exact.logits[b][n][exact.rows[b][n].label]) for b, n in PISA_POSITIVES]
    reg_losses = [
        reg_value_and_grad(exact.deltas[b][n], exact.anchors[n], exact.rows[b][n].gt_box, Reg())[0]
        for b, n in PISA_POSITIVES
    ]
    v = [(1 - bias) * p + bias for p in probs]
    s = sum(v)
    weighted_mean = sum(vi * li for vi, li in zip(v, reg_losses, strict=True)) / s
    expected = zeros_like_grid(exact.logits)
    for (b, n), p, li in zip(PISA_POSITIVES, probs, reg_losses, strict=True):
        dcarl_dp = (1 - bias) * num_pos / s * (li - weighted_mean) / num_pos
        expected[b][n][exact.rows[b][n].label] = dcarl_dp * p * (1 - p)
    value = sum(vi * num_pos / s * li for vi, li in zip(v, reg_losses, strict=True)) / num_pos
    outcome = run_loss(trainer_loss("pisa"), pisa_case(), backward_of=lambda parts: parts["carl"])
    assert outcome.parts["carl"] == pytest.approx(value, rel=VALUE_REL)
    assert sum(abs(g) for image in expected for a in image for g in a) > 1e-3
    assert_grid(outcome.logits_grad, expected, "dCARL/d cls_logits")


# ---------------------------------------------------------------------------------------------
# random / ohem: CE + regression on sampled anchors / number sampled
# ---------------------------------------------------------------------------------------------


def sampled_expected(case: Case, chosen: list[tuple[int, int]], reg_weight: float) -> Outcome:
    """CE over the chosen (image, anchor)s and smooth-L1 over the chosen positives, / count."""
    count = len(chosen)
    assert len(set(chosen)) == count
    cls, reg = 0.0, 0.0
    logits_grad, deltas_grad = zeros_like_grid(case.logits), zeros_like_grid(case.deltas)
    for b, n in chosen:
        row = case.rows[b][n]
        assert row.valid
        cls += row_loss(case.logits[b][n], row.label, CE)
        logits_grad[b][n] = [g / count for g in row_grad(case.logits[b][n], row.label, CE)]
        if row.positive:
            value, grad = reg_value_and_grad(case.deltas[b][n], case.anchors[n], row.gt_box, Reg())
            reg += value
            deltas_grad[b][n] = [reg_weight * g / count for g in grad]
    return Outcome({"cls": cls / count, "reg": reg_weight * reg / count}, logits_grad, deltas_grad)


# Every valid anchor of the small case: image 0 has 2 positives + 2 negatives, image 1 1 + 3.
ALL_VALID = [(0, 0), (0, 2), (0, 1), (0, 4), (1, 1), (1, 0), (1, 2), (1, 3)]


@pytest.mark.parametrize("name", ["random", "ohem"])
@pytest.mark.parametrize("reg_weight", [1.0, 2.0])
def test_sampling_with_room_to_spare_takes_every_valid_anchor(name: str, reg_weight: float) -> None:
    """num_samples 8, pos_fraction .5: room for 4 positives (2 and 1 exist) and 8 - positives
    negatives (2 and 3 exist), so whatever the keys, all 8 valid anchors are taken, the slots
    left over are not, and both parts are divided by 8."""
    options = {"num_samples": 8, "pos_fraction": 0.5, "reg_weight": reg_weight}
    torch.manual_seed(0)
    outcome = run_loss(trainer_loss(name, options), small_case())
    assert_outcome(outcome, sampled_expected(small_case().rounded(), ALL_VALID, reg_weight))


def test_ohem_takes_the_highest_loss_anchors() -> None:
    """num_samples 3, pos_fraction .4: one positive and two negatives per image, by CE.

    Image 0: positives' CE (anchor 0 / anchor 2) decide which one is hard; its two negatives
    fill the room. Image 1: its one positive, and the two of three negatives with the highest CE.
    The ignored anchors have the highest CE of all and must never be taken.
    """
    exact = small_case().rounded()
    ce = {(b, n): row_loss(exact.logits[b][n], row.label, CE) for b, n, row in exact.cells()}
    assert max(ce, key=ce.get) in {(0, 3), (1, 4)}  # the ignored anchors
    chosen = []
    for b, image in enumerate(exact.rows):
        positives = [(b, n) for n, row in enumerate(image) if row.positive]
        negatives = [(b, n) for n, row in enumerate(image) if row.valid and not row.positive]
        chosen += sorted(positives, key=ce.get, reverse=True)[:1]
        chosen += sorted(negatives, key=ce.get, reverse=True)[:2]
    # By hand: image 0 positives' CE .504 (anchor 0) > .280 (anchor 2); image 1 negatives'
    # CE .849 (anchor 0) > .316 (anchor 3) > .141 (anchor 2).
    assert set(chosen) == {(0, 0), (0, 1), (0, 4), (1, 1), (1, 0), (1, 3)}
    options = {"num_samples": 3, "pos_fraction": 0.4}
    outcome = run_loss(trainer_loss("ohem", options), small_case())
    assert_outcome(outcome, sampled_expected(exact, chosen, 1.0))


def test_random_sampling_follows_its_seeded_keys() -> None:
    """random draws one uniform key per anchor (torch's global RNG) and keeps the largest:
    replaying the draw with the same seed says which anchors were sampled."""
    exact = small_case().rounded()
    options = {"num_samples": 3, "pos_fraction": 0.4}
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        keys = torch.rand(2, 5).tolist()
        chosen = []
        for b, image in enumerate(exact.rows):
            positives = [n for n, row in enumerate(image) if row.positive]
            negatives = [n for n, row in enumerate(image) if row.valid and not row.positive]
            chosen += [(b, n) for n in sorted(positives, key=lambda n: -keys[b][n])[:1]]
            chosen += [(b, n) for n in sorted(negatives, key=lambda n: -keys[b][n])[:2]]
        seen.add(tuple(chosen))
        torch.manual_seed(seed)
        outcome = run_loss(trainer_loss("random", options), small_case())
        assert_outcome(outcome, sampled_expected(exact, chosen, 1.0))
    assert len(seen) > 1  # the seeds really pick different samples


def test_random_sampling_count_is_all_that_matters_for_equal_anchors() -> None:
    """pos_fraction .67 of 3: both of image 0's positives and one of its two negatives, image
    1's positive and two of its three negatives. All negatives share logits, so every draw gives
    the same value: (sum of 3 positives' CE + 3 negatives' CE) / 6, with exactly 1 and 2
    negatives of the images carrying gradient."""
    same = [-1.0, 0.5]
    logits = [
        [
            list(a) if row.positive or not row.valid else same
            for a, row in zip(img, rows, strict=True)
        ]
        for img, rows in zip(SMALL_LOGITS, SMALL_ROWS, strict=True)
    ]
    case = replace(small_case(), logits=logits)
    exact = case.rounded()
    positives = [(b, n) for b, n, row in exact.cells() if row.positive]
    negative_ce = row_loss(same, -1, CE)
    expected_cls = (sum(row_loss(exact.logits[b][n], exact.rows[b][n].label, CE)
                        for b, n in positives) + 3 * negative_ce) / 6  # fmt: skip
    negative_grad = [g / 6 for g in row_grad(same, -1, CE)]
    for seed in range(4):
        torch.manual_seed(seed)
        outcome = run_loss(trainer_loss("random", {"num_samples": 3, "pos_fraction": 0.67}), case)
        assert outcome.parts["cls"] == pytest.approx(expected_cls, rel=VALUE_REL)
        for b, wanted in ((0, 1), (1, 2)):
            carrying = [
                n for n, row in enumerate(exact.rows[b])
                if not row.positive and any(outcome.logits_grad[b][n])
            ]  # fmt: skip
            assert len(carrying) == wanted
            for n in carrying:
                assert exact.rows[b][n].valid
                assert outcome.logits_grad[b][n] == pytest.approx(negative_grad, rel=1e-5)


def test_settings_dataclasses_track_registry_defaults() -> None:
    """The hand-written defaults above are README's, and the registry agrees with them."""
    ghm = {f.name: f.default for f in fields(GhmSettings)}
    assert {k: LOSSES["ghm"].defaults[k] for k in ghm} == ghm
    pisa = {f.name: f.default for f in fields(PisaSettings) if f.name != "center_margin"}
    assert {k: LOSSES["pisa"].defaults[k] for k in pisa} == pisa
    assert LOSSES["pisa-center"].defaults["center_margin"] == 0.05
    for name, fam in SIGMOID_DEFAULTS.items():
        for key in ("alpha", "gamma", "beta"):
            if key in LOSSES[name].defaults:
                assert LOSSES[name].defaults[key] == getattr(fam, key), (name, key)
    assert LOSSES["focal"].defaults["reg_beta"] == Reg().beta
    assert LOSSES["focal"].defaults["reg_mu"] == Reg().mu
