"""Every user-facing option that changes the computation is shown to change it.

tests/pipeline/test_train_options_reach_config.py (and test_compare.py / test_tensorrt.py for their commands) show that
each flag reaches its config object; these tests show the second half: the value changes what
is built or run, against expected values worked out here by hand (README, the papers, the
formulas in the docstrings), not read back from the code under test.

Most tests go through the real `pipeline train` CLI with `pipeline.training.run_training`
replaced by a spy that keeps the TrainConfig, then build the real `Trainer` (or, for the loss
table, the two builder calls `Trainer.__init__` makes) from it. Two runs train for real through
the CLI with a non-default `--loss`, to show the trainer itself uses it.

Options shown to take effect by existing tests, so not repeated here (each checked by breaking
the line it guards and watching the test fail):
- train `--strict`: test_bad_input.py `test_bad_input_is_one_clear_line[*-strict]` (an
  unreadable image / bad box trains through without it).
- train `--resume`: test_resume.py `test_killed_and_resumed_run_ends_with_the_same_weights`.
- train `--nproc-per-node`: test_distributed_train.py `test_two_processes_train_like_one`.
- export `--calib-images` (ONNX int8): test_quantize.py `test_int8_export_and_eval_through_the_cli`
  (6 of the 12 training images; the TensorRT path is checked here).
- export `--precision int8`: the same test (model.int8.onnx, metadata precision int8).
- eval `--strict`: test_bad_input.py `test_bad_input_is_one_clear_line[eval-corrupt-image-strict]`.
- eval `--cuda-api`, `--cuda-graph`: test_end_to_end.py `test_eval_engine_options_reach_the_loader`
  (their effect needs a GPU: test_tensorrt.py, `gpu`-marked).
Options with no computation to change: train `--overwrite` (output policy), `--compile`
(same numbers, only faster: checking the wrapper costs 2 s here, running it minutes), eval
`--json` / `--results` / `--overwrite`, export `--out` / `--overwrite`. Not shown: export
`--data` (parity and calibration images; telling them apart would mean comparing pixels).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deploy.evaluate
import export.tensorrt
import pipeline.evaluation
import pipeline.exporting
import pipeline.study.compare
import pipeline.training
import pipeline.validation
import train.step
import train.trainer
from common.contract import Detections
from common.errors import InputError
from deploy.metadata import ModelMetadata, read_onnx_metadata
from tests.cli_support import TINY, invoke, make_tiny_dataset
from train.assign import AnchorAssignment
from train.builders import resolved_loss_options
from train.config import TrainConfig
from train.losses import (
    FocalDetectionLoss,
    FocalStarDetectionLoss,
    GhmDetectionLoss,
    OhemLoss,
    PisaCenterDetectionLoss,
    PisaDetectionLoss,
    RandomSamplingLoss,
    build_loss,
)
from train.step import TrainStep
from train.trainer import Trainer

# Small and CPU-only, so a Trainer builds in well under a second.
BASE = ["--device", "cpu", "--img-size", "64", "--fpn-channels", "16", "--head-convs", "1",
        "--workers", "0", "--batch-size", "4", "--epochs", "1"]  # fmt: skip
# Tests that take real optimizer steps: a quarter of resnet18's parameters and a tenth of its
# step time here; one shape for all of them, so the CPU kernels' first-call set-up is paid once.
SMALL = ["--backbone", "mobilenet_v3_large", "--batch-size", "2"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


class _NotTrained:
    """What the CLI prints from when run_training is replaced."""

    best_ap, best_path, last_path = 0.0, Path("best.pt"), Path("last.pt")


def config_from_cli(data: Path, out: Path, *flags: object) -> TrainConfig:
    """The TrainConfig the real `pipeline train` hands to training for these flags."""
    captured: list[TrainConfig] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            pipeline.training, "run_training", lambda c: captured.append(c) or _NotTrained()
        )
        result = invoke("train", "--data", data, "--out", out, *BASE, *flags)
    assert result.exit_code == 0, result.output
    return captured[0]


@pytest.fixture
def cli_config(tiny_data: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    runs = itertools.count()
    return lambda *flags, data=tiny_data: config_from_cli(data, tmp_path / f"r{next(runs)}", *flags)


@pytest.fixture
def cli_trainer(cli_config: Callable[..., TrainConfig]) -> Callable[..., Trainer]:
    """`cli_trainer(*flags)`: the real Trainer built from what `pipeline train FLAGS` passes."""
    return lambda *flags, **kw: Trainer(cli_config(*flags, **kw))


def loss_from_cli(cli_config: Callable[..., TrainConfig], *flags: object) -> Any:
    """The loss exactly as Trainer.__init__ builds it (cheaper than a whole Trainer)."""
    config = cli_config(*flags)
    return build_loss(config.loss, resolved_loss_options(config))


def first_batch(trainer: Trainer) -> tuple[torch.Tensor, list[dict], list]:
    trainer.sampler.set_epoch(1)
    return next(iter(trainer.loader))


def fit_in_memory(trainer: Trainer) -> dict[str, Any]:
    """trainer.fit() with checkpoints and history kept in memory (100+ MB of writes each)."""
    saved: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            train.trainer, "save_atomic", lambda obj, path: saved.update({path.name: obj})
        )
        patch.setattr(
            train.trainer,
            "write_text_atomic",
            lambda path, text: saved.update({path.name: json.loads(text)}),
        )
        trainer.fit()
    return saved


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for key, value in module.state_dict().items()
    }


def one_positive_assignment() -> AnchorAssignment:
    """One anchor (0, 0, 10, 10), positive for class 0, matched to the box (5, 5, 15, 15)."""
    return AnchorAssignment(
        labels=torch.tensor([[0]]),
        positive=torch.tensor([[True]]),
        valid=torch.tensor([[True]]),
        gt_boxes=torch.tensor([[[5.0, 5.0, 15.0, 15.0]]]),
        gt_ids=torch.tensor([[0]]),
        max_iou=torch.tensor([[1 / 7]]),
        anchors=torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
    )


def loss_parts_on_one_positive(loss: Any) -> dict[str, float]:
    """Logit 0 (p = 0.5) and zero deltas (the predicted box is the anchor) for that anchor."""
    parts = loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 4), one_positive_assignment())
    return {k: float(v) for k, v in parts.items()}


# ----------------------------------------------------------------------------- train: loss
# Defaults from README's loss table and the papers, typed in here.
LOSS_DEFAULTS: dict[str, tuple[type, dict[str, Any]]] = {
    "ce": (FocalDetectionLoss, {"gamma": 0.0}),
    "balanced-ce": (FocalDetectionLoss, {"alpha": 0.75, "gamma": 0.0}),
    "focal-star": (FocalStarDetectionLoss, {"gamma": 4.0, "beta": 0.0}),
    "ghm": (GhmDetectionLoss, {"bins": 30, "momentum": 0.75, "reg_mu": 0.02, "reg_bins": 10,
                               "reg_momentum": 0.7, "reg_weight": 10.0, "reg_loss": "asl1"}),
    "pisa": (PisaDetectionLoss, {"isr_k": 2.0, "isr_bias": 0.0, "carl_k": 1.0,
                                 "carl_bias": 0.2, "reg_beta": 0.11}),
    "pisa-center": (PisaCenterDetectionLoss, {"center_margin": 0.05, "carl_bias": 0.2}),
    "random": (RandomSamplingLoss, {"num_samples": 256, "pos_fraction": 0.25}),
    "ohem": (OhemLoss, {"num_samples": 256, "pos_fraction": 0.25}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LOSS_DEFAULTS))
def test_loss_builds_that_loss_with_its_papers_defaults(name: str, cli_config) -> None:
    loss = loss_from_cli(cli_config, "--loss", name)
    kind, defaults = LOSS_DEFAULTS[name]
    assert type(loss) is kind
    assert {key: getattr(loss, key) for key in defaults} == defaults
    if name == "ce":
        assert loss.alpha < 0  # "alpha off"
    if name == "ghm":  # the options reach GHM-C and GHM-R themselves
        assert (loss.cls_harmonizer.density.bins, loss.cls_harmonizer.density.momentum) == (
            30,
            0.75,
        )
        assert (loss.reg_harmonizer.mu, loss.reg_harmonizer.density.bins) == (0.02, 10)
        assert loss.reg_harmonizer.density.momentum == 0.7


def test_loss_opt_gamma_changes_the_focal_term(cli_config) -> None:
    """Focal, one positive at p = 0.5: alpha (1 - p)^gamma (-log p) = 0.25 * 0.5^1.5 * ln 2."""
    loss = loss_from_cli(cli_config, "--loss-opt", "gamma=1.5")
    assert loss.gamma == 1.5
    cls = loss_parts_on_one_positive(loss)["cls"]
    assert cls == pytest.approx(0.25 * 0.5**1.5 * math.log(2), rel=1e-5)


def test_reg_loss_giou_makes_the_box_term_giou(cli_config) -> None:
    """Predicted box (0,0,10,10) vs (5,5,15,15): IoU 25/175, hull 225, GIoU loss
    1 - 1/7 + (225 - 175)/225 = 68/63, over one positive. Smooth-L1 (the default) would give
    2 * (0.5 - 0.11/2) = 0.89 (deltas 0.5, 0.5, 0, 0)."""
    loss = loss_from_cli(cli_config, "--reg-loss", "giou")
    assert loss_parts_on_one_positive(loss)["reg"] == pytest.approx(68 / 63, rel=1e-5)


# ----------------------------------------------------------------------------- train: optimizer
def _no_decay_parameters(model: nn.Module) -> set[int]:
    """Norm layers' parameters and every bias: what detectors train without weight decay."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    found = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters()}
    return found | {id(p) for name, p in model.named_parameters() if name.endswith(".bias")}


def test_optimizer_lr_and_weight_decay_reach_the_param_groups(cli_trainer) -> None:
    trainer = cli_trainer(
        "--optimizer", "sgd", "--lr", "0.5", "--weight-decay", "0.125", "--warmup-iters", "0"
    )
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.SGD
    no_decay = _no_decay_parameters(trainer.model)
    everything = {id(p) for p in trainer.model.parameters()}
    by_decay = {
        group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups
    }
    assert by_decay == {0.125: everything - no_decay, 0.0: no_decay}
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]  # no warm-up: full lr at step 0


def _warmup_cosine_by_hand(step: int, warmup: int, total: int) -> float:
    """builders.warmup_cosine's docstring: linear from 0.1 to 1 over `warmup` steps, then cosine
    from 1 down to 0.02 at `total`."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_warmup_iters_set_the_lr_of_the_first_steps(cli_trainer) -> None:
    """3 batches an epoch x 20 epochs, capped at 40 steps: warm-up 7, then cosine over 33."""
    trainer = cli_trainer(
        "--lr", "0.5", "--warmup-iters", "7", "--epochs", "20", "--max-steps", "40"
    )
    lrs = []
    for _ in range(9):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()  # no gradients: a no-op that keeps the scheduler's order check
        trainer.scheduler.step()
    expected = [0.5 * _warmup_cosine_by_hand(step, 7, 40) for step in range(9)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def _paper_by_hand(step: int, warmup: int, total: int) -> float:
    """--recipe paper (train/recipe.py's docstring): linear from 0.001 to 1 over `warmup` steps,
    then 1, divided by 10 from 8/12 of the run and again from 11/12."""
    if step < warmup:
        return 0.001 + 0.999 * step / warmup
    return 1.0 if step < total * 8 / 12 else 0.1 if step < total * 11 / 12 else 0.01


def test_recipe_paper_is_sgd_at_0_01_per_16_images_with_steps(cli_trainer) -> None:
    """36 steps (capped), batch 4: lr 0.01 x 4 / 16, momentum 0.9, weight decay 1e-4 on weights,
    warm-up 5 (given), x0.1 from step 24 and x0.01 from step 33; focal is not clipped, GHM is."""
    trainer = cli_trainer(
        "--recipe", "paper", "--warmup-iters", "5", "--epochs", "20", "--max-steps", "36"
    )
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]
    batch = trainer.config.batch_size
    lrs = []
    for _ in range(36):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    expected = [0.01 * batch / 16 * _paper_by_hand(step, 5, 36) for step in range(36)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert trainer.train_step.grad_clip is None
    assert cli_trainer("--recipe", "paper", "--loss", "ghm").train_step.grad_clip == 35.0
    assert (
        cli_trainer("--loss", "focal").train_step.grad_clip == 35.0
    )  # recipe ours clips every loss


def test_grad_clip_scales_a_norm_10_gradient_to_2_5(cli_trainer) -> None:
    """A real step whose loss is <direction, bias>, |direction| = 10: SGD at lr 1 (its first
    momentum step is the gradient itself) moves the bias by the clipped gradient."""
    trainer = cli_trainer("--grad-clip", "2.5", "--optimizer", "sgd", "--lr", "1",
                          "--weight-decay", "0", "--warmup-iters", "0", *SMALL)  # fmt: skip
    bias = trainer.model.head.cls_out.bias
    direction = torch.randn(bias.shape, generator=torch.Generator().manual_seed(0))
    direction *= 10 / direction.norm()
    trainer.train_step.loss_fn = lambda *_: {"cls": (bias * direction).sum()}
    before = bias.detach().clone()
    images, targets, _ = first_batch(trainer)
    assert trainer.train_step(images, targets) is not None
    moved = before - bias.detach()
    assert moved.norm().item() == pytest.approx(2.5, rel=1e-5)
    assert torch.allclose(moved, direction * 0.25, atol=1e-6)


# ----------------------------------------------------------------------------- train: loop
def test_freeze_bn_keeps_batchnorm_unchanged_through_a_step(cli_trainer) -> None:
    trainer = cli_trainer("--freeze-bn", "--max-steps", "1", "--lr", "0.05", *SMALL)
    norms, weights = batchnorm_state(trainer.model), float_state(trainer.model)
    saved = fit_in_memory(trainer)
    assert saved["history.json"][-1]["step"] == 1
    after = batchnorm_state(trainer.model)
    assert norms and all(torch.equal(norms[k], after[k]) for k in norms), "BatchNorm changed"
    changed = [k for k, v in float_state(trainer.model).items() if not torch.equal(v, weights[k])]
    assert changed and not set(changed) & set(norms)  # it did step, on everything else


def test_ema_decay_blends_the_weights_after_one_step(cli_trainer) -> None:
    """ema.py: ema = d * ema + (1 - d) * weights with d = decay * (1 - exp(-updates / 2000)),
    so after one update ema - w1 = d (w0 - w1); and the EMA is what last.pt ships."""
    trainer = cli_trainer("--ema-decay", "0.75", "--max-steps", "1", "--lr", "0.05",
                          "--warmup-iters", "0", *SMALL)  # fmt: skip
    w0 = float_state(trainer.model)
    saved = fit_in_memory(trainer)
    w1 = float_state(trainer.model)
    shipped = saved["last.pt"]["state_dict"]
    d = 0.75 * (1 - math.exp(-1 / 2000))
    for key in w0:  # float32 rounding: ~6e-8 relative; the blend moves weights by ~1e-5
        expected = w1[key].double() + d * (w0[key].double() - w1[key].double())
        assert torch.allclose(shipped[key].double(), expected, rtol=1e-6, atol=1e-7), key
    assert any(not torch.equal(shipped[k], w1[k]) for k in w0)  # not simply the weights


def test_epochs_batch_size_and_max_steps_decide_how_long_it_trains(
    cli_trainer, monkeypatch
) -> None:
    """12 images in batches of 6: 2 steps an epoch. --epochs 2: steps 2, 4, and the cosine ends
    (lr x 0.02) at step 4. --epochs 5 with --max-steps 3: steps 2, 3, and it ends at step 3. The
    step itself is replaced: what is tested is the loop and schedule around it."""
    batches: list[int] = []

    def counting_step(step: TrainStep, images: torch.Tensor, targets: list) -> dict[str, float]:
        batches.append(len(images))
        step.optimizer.step()  # no gradients: changes nothing, keeps the scheduler's order check
        return {"cls": 1.0}

    monkeypatch.setattr(TrainStep, "__call__", counting_step)
    two_epochs = cli_trainer("--epochs", "2", "--batch-size", "6", "--warmup-iters", "0",
                             "--lr", "0.5")  # fmt: skip
    history = fit_in_memory(two_epochs)["history.json"]
    assert [r["step"] for r in history] == [2, 4] and batches == [6] * 4
    assert two_epochs.scheduler.get_last_lr()[0] == pytest.approx(0.5 * 0.02)
    batches.clear()
    capped = cli_trainer("--epochs", "5", "--batch-size", "6", "--max-steps", "3",
                         "--warmup-iters", "0", "--lr", "0.5")  # fmt: skip
    history = fit_in_memory(capped)["history.json"]
    assert [r["step"] for r in history] == [2, 3] and batches == [6] * 3
    assert capped.scheduler.get_last_lr()[0] == pytest.approx(0.5 * 0.02)


def test_img_size_sets_the_input_and_the_anchors(cli_trainer) -> None:
    """96 px: feature maps 12, 6, 3, 2, 1 (strides 8..128, ceil), 9 anchors a cell."""
    trainer = cli_trainer("--img-size", "96")
    images, _, _ = first_batch(trainer)
    assert images.shape == (4, 3, 96, 96)
    assert trainer.model.anchors.shape == ((144 + 36 + 9 + 4 + 1) * 9, 4)


def test_architecture_options_shape_the_model(cli_trainer) -> None:
    """resnet34 has 3 + 4 + 6 + 3 basic blocks (resnet18: 2 + 2 + 2 + 2)."""
    from torchvision.models.resnet import BasicBlock

    trainer = cli_trainer("--backbone", "resnet34", "--fpn-channels", "24", "--head-convs", "3")
    model, classes = trainer.model, len(trainer.train_set.category_ids)
    assert sum(isinstance(m, BasicBlock) for m in model.backbone.modules()) == 16
    assert [conv[0].out_channels for conv in model.fpn.layer_blocks] == [24, 24, 24]
    for tower in (model.head.cls_tower, model.head.box_tower):
        convs = [m for m in tower if isinstance(m, nn.Conv2d)]
        assert [tuple(c.weight.shape) for c in convs] == [(24, 24, 3, 3)] * 3
    assert tuple(model.head.cls_out.weight.shape) == (9 * classes, 24, 3, 3)


def test_pretrained_loads_the_local_backbone_weights(cli_trainer, tmp_path) -> None:
    import torchvision

    weights = torchvision.models.resnet18(weights=None).state_dict()
    weights["conv1.weight"].fill_(0.25)
    torch.save(weights, tmp_path / "r18.pth")
    trainer = cli_trainer("--pretrained", tmp_path / "r18.pth")
    assert torch.all(trainer.model.backbone.body.conv1.weight == 0.25)


def test_seed_decides_initial_weights_and_data_order(cli_trainer) -> None:
    def head_weights_and_order(seed: int) -> tuple[torch.Tensor, list]:
        trainer = cli_trainer("--seed", seed)
        trainer.sampler.set_epoch(1)
        return trainer.model.head.cls_tower[0].weight.detach().clone(), list(trainer.sampler)

    first, again, other = (head_weights_and_order(s) for s in (3, 3, 4))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert not torch.equal(first[0], other[0]) and first[1] != other[1]


class _FirstConvDtype(Exception):
    """Raised by a hook on the first convolution: its output dtype, and no need to go on."""


def _first_conv_dtype(trainer: Trainer) -> torch.dtype:
    def stop(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        raise _FirstConvDtype(output.dtype)

    trainer.model.backbone.body.conv1.register_forward_hook(stop)
    images, targets, _ = first_batch(trainer)
    with pytest.raises(_FirstConvDtype) as seen:
        trainer.train_step.losses(images, targets)
    return seen.value.args[0]


def test_amp_runs_the_forward_in_bfloat16_on_cpu_and_no_amp_in_float32(
    cli_trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train.step, "cpu_has_native_bf16", lambda: True)
    assert _first_conv_dtype(cli_trainer("--amp")) == torch.bfloat16
    assert _first_conv_dtype(cli_trainer("--no-amp")) == torch.float32


def test_amp_trains_in_float32_where_the_cpu_would_emulate_bf16(
    cli_trainer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Emulated bf16 made a resnet18 step 15x slower than fp32 on an AVX2-only CPU: --amp says
    so once and trains in float32 there."""
    monkeypatch.setattr(train.step, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="train.step"):
        assert _first_conv_dtype(cli_trainer("--amp")) == torch.float32
    assert "no native bf16" in caplog.text


def test_workers_start_that_many_loader_processes(cli_trainer) -> None:
    loader = cli_trainer("--workers", "2").loader
    assert loader.num_workers == 2 and loader.persistent_workers


def test_cache_images_decodes_once_so_training_no_longer_reads_the_files(
    cli_trainer, tiny_data, tmp_path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    trainer = cli_trainer("--cache-images", data=data)
    for image in (data / "train").iterdir():
        image.unlink()
    images, _, unreadable = first_batch(trainer)
    assert unreadable == [] and len(images) == 4


def test_data_selects_the_dataset_trained_and_validated_on(cli_trainer, tiny_data) -> None:
    """make_tiny_dataset: 12 training and 6 validation images (the built-in set: 1200 / 200)."""
    trainer = cli_trainer()
    assert Path(trainer.train_set.ann_file) == tiny_data / "annotations" / "instances_train.json"
    assert (len(trainer.train_set), len(trainer.val_set)) == (12, 6)


def test_device_cuda_is_refused_on_a_machine_without_one(cli_config) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    config = cli_config("--device", "cuda")
    with pytest.raises(InputError, match="--device cuda: no CUDA device"):
        Trainer(config)


# ----------------------------------------------------------------------------- train: for real
def _train_for_real(tiny_data: Path, out: Path, *flags: object) -> list[int]:
    """`pipeline train` unpatched; returns how many images each validation scored."""
    validated: list[int] = []
    real_evaluate = pipeline.validation.evaluate

    def counting_evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        report = real_evaluate(*args, **kwargs)
        validated.append(report["num_images"])
        return report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.validation, "evaluate", counting_evaluate)
        result = invoke("train", "--data", tiny_data, "--out", out, *TINY, "--device", "cpu",
                        "--max-steps", "1", *SMALL, *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    return validated


@pytest.fixture(scope="module")
def pisa_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("runs") / "pisa"
    return out, _train_for_real(tiny_data, out, "--loss", "pisa", "--max-val-images", "2")


def test_real_train_with_pisa_trains_with_carl(pisa_run) -> None:
    """Only PISA has a CARL part; focal (the default) records cls and reg alone."""
    out, _ = pisa_run
    history = json.loads((out / "history.json").read_text())
    assert {k for k in history[-1] if k.startswith("loss_")} == {
        "loss_cls",
        "loss_reg",
        "loss_carl",
    }
    assert history[-1]["loss_carl"] > 0


def test_max_val_images_validates_on_exactly_that_many(pisa_run) -> None:
    _, validated = pisa_run
    assert validated == [2]  # of 6 validation images


def test_real_train_with_ghm_updates_and_saves_ghm_state(tiny_data, tmp_path) -> None:
    """GHM's moving averages of its histograms start at zero and hold the first batch's bin
    counts after one step (ema_init=first); a focal run saves no loss state at all."""
    _train_for_real(tiny_data, tmp_path / "ghm", "--loss", "ghm", "--max-val-images", "1")
    payload = torch.load(tmp_path / "ghm" / "last.pt", weights_only=True)
    assert payload["loss"] == "ghm"
    for part in ("cls_harmonizer", "reg_harmonizer"):
        counts = payload["loss_state"][f"{part}.density.acc_sum"]
        assert counts.sum() > 0, part


def test_eval_device_cuda_for_a_checkpoint_is_one_clear_error_without_a_gpu(
    pisa_run, tiny_data
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    best = pisa_run[0] / "best.pt"
    result = invoke("eval", "--model", best, "--data", tiny_data, "--device", "cuda")
    assert result.exit_code == 2 and "CUDA" in result.output


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(pisa_run, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = invoke("export", "--weights", pisa_run[0] / "best.pt", "--out", out, "--data",
                    tiny_data, "--opset", "18", "--precision", "fp16")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _default_domain_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _float16_initializers(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_opset_sets_the_models_opset(exported: Path) -> None:
    assert _default_domain_opset(exported) == 18  # default 17


def test_precision_fp16_writes_a_half_precision_network(exported: Path) -> None:
    half = exported.with_name("model.fp16.onnx")
    assert _float16_initializers(half) > 0 and _float16_initializers(exported) == 0
    assert read_onnx_metadata(half).extra["precision"] == "fp16"


class _BuildStopped(Exception):
    """Raised by the stand-in TensorRT builder once it has seen what it was asked to build."""


def test_trt_batch_workspace_and_calib_images_reach_the_engine_builder(
    pisa_run, exported, tiny_data, tmp_path, monkeypatch
) -> None:
    """No GPU here: the builder is replaced (what it builds with these is `gpu`-tested), and so
    are the float ONNX export and its parity check, which every export runs (the fixture's)."""
    asked: dict[str, Any] = {}

    def fake_build(onnx_path: Path, engine_path: Path, options: Any, images: Any) -> None:
        asked.update(options=options, images=len(list(images)), engine=Path(engine_path).name)
        raise _BuildStopped

    monkeypatch.setattr(export.tensorrt, "require_tensorrt", lambda: None)
    monkeypatch.setattr(export.tensorrt, "build_engine", fake_build)
    monkeypatch.setattr(
        pipeline.exporting, "export_onnx", lambda m, out, *a, **k: shutil.copy(exported, out)
    )
    parity = {"max_box_diff": 0.0, "max_score_diff": 0.0, "match": True}
    monkeypatch.setattr(pipeline.exporting, "check_parity", lambda *a: parity)
    with pytest.raises(_BuildStopped):
        invoke("export", "--weights", pisa_run[0] / "best.pt", "--out", tmp_path / "model.onnx",
               "--data", tiny_data, "--trt", "--precision", "int8", "--batch", "4",
               "--workspace", "2", "--calib-images", "5")  # fmt: skip
    options = asked["options"]
    assert (options.precision, options.max_batch, options.workspace_gb) == ("int8", 4, 2.0)
    assert asked["images"] == 5 and asked["engine"] == "model.int8.engine"


# ----------------------------------------------------------------------------- eval
class _RecordingPredictor:
    """Detects nothing; records the batch sizes it was called with."""

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata, self.batches = metadata, []

    def __call__(self, images: np.ndarray) -> Detections:
        batch = len(images)
        self.batches.append(batch)
        return Detections(
            np.zeros(batch, np.int64),
            np.zeros((batch, 100, 4), np.float32),
            np.zeros((batch, 100), np.float32),
            -np.ones((batch, 100), np.int64),
        )


def test_eval_options_decide_which_images_in_which_batches(
    tiny_data, tmp_path, monkeypatch
) -> None:
    """--split train --max-images 5 --batch-size 4 --warmup 2: the first 5 training images, in
    batches of 4 (the last padded), after 2 untimed runs of the first batch: 4 calls."""
    categories = json.loads((tiny_data / "annotations" / "instances_train.json").read_text())
    ids = [c["id"] for c in categories["categories"]]
    predictor = _RecordingPredictor(ModelMetadata([str(i) for i in ids], ids, 64))
    monkeypatch.setattr(pipeline.evaluation, "load_predictor", lambda *a, **k: predictor)
    read: list[Path] = []
    real_load = deploy.evaluate.load_image
    monkeypatch.setattr(
        deploy.evaluate, "load_image", lambda p: read.append(Path(p)) or real_load(p)
    )
    report_path = tmp_path / "report.json"
    result = invoke("eval", "--model", tmp_path / "m.onnx", "--data", tiny_data,
                    "--split", "train", "--max-images", "5", "--batch-size", "4",
                    "--warmup", "2", "--json", report_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert predictor.batches == [4, 4, 4, 4]
    assert {p.parent for p in read} == {tiny_data / "train"} and len(set(read)) == 5
    report = json.loads(report_path.read_text())
    assert (report["num_images"], report["batch_size"]) == (5, 4)


def test_eval_provider_reaches_onnx_runtime(exported: Path, tiny_data: Path) -> None:
    """`auto` runs on the CPU here; asking for CUDA must not quietly do the same."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    result = invoke("eval", "--model", exported, "--data", tiny_data, "--provider", "cuda")
    assert result.exit_code == 2 and "CUDAExecutionProvider is not available" in result.output


# ----------------------------------------------------------------------------- compare
SHARED = ["--lr", "0.5", "--epochs", "3", "--optimizer", "sgd", "--reg-loss", "giou",
          "--max-val-images", "3", "--ema-decay", "0.5", "--freeze-bn", "--no-amp"]  # fmt: skip


def _perfect_detections(tiny_data: Path, count: int) -> list[dict[str, Any]]:
    val = json.loads((tiny_data / "annotations" / "instances_val.json").read_text())
    first = sorted(i["id"] for i in val["images"])[:count]
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in val["annotations"]
        if a["image_id"] in first
    ]


def test_compare_trains_deploys_and_reports_what_its_options_say(
    tiny_data, tmp_path, monkeypatch
) -> None:
    """Training, export and scoring replaced: ghm runs detect every object (AP 1), pisa runs
    only the first image's (AP from pycocotools), so against --baseline pisa, ghm's effect is
    1 - AP(pisa)."""
    from deploy.evaluate import load_coco, score_coco

    val_ann = tiny_data / "annotations" / "instances_val.json"
    coco_gt = load_coco(val_ann)
    first_3 = sorted(coco_gt.getImgIds())[:3]  # --max-val-images 3 (SHARED)
    pisa_ap = score_coco(coco_gt, _perfect_detections(tiny_data, 1), first_3)
    assert 0.0 < pisa_ap["AP"] < 1.0
    trained: list[TrainConfig] = []
    deployed: list[str] = []
    scored: list[str] = []

    def fake_train(config: TrainConfig) -> None:
        trained.append(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        record = {"epoch": 1, "step": 1, "seconds": 1.0, "images_per_second": 1.0, "loss_cls": 1.0}
        (Path(config.out) / "history.json").write_text(json.dumps([record]))

    def fake_deploy(backend: str, weights: Path, run_dir: Path) -> Path:
        deployed.append(backend)
        return run_dir / "model.x"

    def fake_eval(name: str, model: Path, config: TrainConfig) -> dict[str, Any]:
        scored.append(name)
        good = config.loss == "ghm"
        detections = _perfect_detections(tiny_data, 3 if good else 1)
        (Path(config.out) / f"detections_{name}.json").write_text(json.dumps(detections))
        ap = 1.0 if good else pisa_ap["AP"]
        report = {"metrics": {"AP": ap}, "skipped_images": 0,
                  "latency": {"total_ms": {"p50": 1.0, "mean": 1.0}}}  # fmt: skip
        (Path(config.out) / f"report_{name}.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(pipeline.study.compare, "run_training", fake_train)
    monkeypatch.setattr(pipeline.study.compare, "build_deployed_model", fake_deploy)
    monkeypatch.setattr(pipeline.study.compare, "eval_in_run", fake_eval)
    out = tmp_path / "study"
    result = invoke("compare", "--out", out, "--data", tiny_data, "--losses", "ghm,pisa",
                    "--seeds", "2", "--seed", "5", "--backend", "onnx-int8", "--baseline", "pisa",
                    "--resamples", "50", "--loss-opt", "gamma=1.5", *BASE, *SHARED)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [(c.loss, c.seed) for c in trained] == [("ghm", 5), ("pisa", 5), ("ghm", 6), ("pisa", 6)]
    assert [Path(c.out).name for c in trained] == ["ghm-s5", "pisa-s5", "ghm-s6", "pisa-s6"]
    assert [c.loss_options for c in trained] == [{}, {"gamma": "1.5"}, {}, {"gamma": "1.5"}]
    alone = config_from_cli(tiny_data, out, *SHARED)  # what `pipeline train` would train
    for config in trained:
        same = {
            k: v
            for k, v in vars(config).items()
            if k not in ("out", "loss", "seed", "loss_options")
        }
        assert same == {k: getattr(alone, k) for k in same}
    assert deployed == ["onnx-int8"] * 4 and sorted(set(scored)) == ["onnx-int8", "pytorch"]
    report = json.loads((out / "report.json").read_text())
    assert report["num_val_images"] == 3
    assert report["backends"] == ["onnx-int8"] and set(report["effects"]["onnx-int8"]) == {"ghm"}
    effect = report["effects"]["onnx-int8"]["ghm"]
    assert effect["resamples"] == 50 and effect["seeds"] == [5, 6]
    assert effect["delta"] == pytest.approx(1.0 - pisa_ap["AP"])


def _fake_compare_runs(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """compare with training, export and scoring replaced: each run "detects" every object of
    the first 3 val images (AP 1); returns the configs it was asked to train, as they come."""
    trained: list[TrainConfig] = []

    def fake_train(config: TrainConfig) -> None:
        trained.append(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        record = {"epoch": 1, "step": 1, "seconds": 1.0, "images_per_second": 1.0}
        (Path(config.out) / "history.json").write_text(json.dumps([record]))

    def fake_eval(name: str, model: Path, config: TrainConfig) -> dict[str, Any]:
        (Path(config.out) / f"detections_{name}.json").write_text(
            json.dumps(_perfect_detections(tiny_data, 3))
        )
        return {"metrics": {"AP": 1.0}, "latency": {"total_ms": {"p50": 1.0, "mean": 1.0}}}

    monkeypatch.setattr(pipeline.study.compare, "run_training", fake_train)
    monkeypatch.setattr(pipeline.study.compare, "build_deployed_model", lambda *a: a[2] / "m.x")
    monkeypatch.setattr(pipeline.study.compare, "eval_in_run", fake_eval)
    return trained


def test_compare_variants_train_their_loss_with_their_options(
    tiny_data, tmp_path, monkeypatch
) -> None:
    """--variant NAME=LOSS:K=V runs LOSS with K=V under NAME; --loss-opt reaches it as its loss."""
    trained = _fake_compare_runs(tiny_data, monkeypatch)
    out = tmp_path / "study"
    result = invoke("compare", "--out", out, "--data", tiny_data, "--losses", "ghm,ghm-r-alone",
                    "--variant", "ghm-r-alone=ghm:ghm_c=false", "--seeds", "1",
                    "--resamples", "10", "--loss-opt", "bins=20", *BASE, *SHARED)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [(c.loss, Path(c.out).name) for c in trained] == [
        ("ghm", "ghm-s0"),
        ("ghm", "ghm-r-alone-s0"),
    ]
    assert [c.loss_options for c in trained] == [
        {"bins": "20"},
        {"ghm_c": "false", "bins": "20"},
    ]
    report = json.loads((out / "report.json").read_text())
    assert set(report["per_loss"]) == {"ghm", "ghm-r-alone"}
    assert report["variants"] == {
        "ghm-r-alone": {"loss": "ghm", "options": {"ghm_c": "false", "bins": "20"}}
    }
    assert "Variant ghm-r-alone: ghm with ghm_c=false, bins=20." in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "variant,losses,complaint",
    [
        ("ghm-r-alone", "ghm-r-alone", "expected NAME=LOSS:KEY=VALUE"),
        ("focal=ghm:ghm_c=false", "focal", "already a loss"),
        ("x=nope:a=1", "x", "unknown loss 'nope'"),
        ("x=ghm", "x", "at least one KEY=VALUE"),
        ("x=ghm:ghm_c", "x", "expected KEY=VALUE, got 'ghm_c'"),
        ("x=ghm:no_such_option=1", "x", "no_such_option"),
        ("x=ghm:ghm_c=false", "ghm", "x: not in --losses"),
    ],
)
def test_compare_refuses_bad_variants_in_one_line(
    tiny_data, tmp_path, variant: str, losses: str, complaint: str
) -> None:
    out = tmp_path / "study"
    result = invoke("compare", "--out", out, "--data", tiny_data, "--losses", losses,
                    "--variant", variant, *BASE, *SHARED)  # fmt: skip
    assert result.exit_code == 2
    assert complaint in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_compare_reference_pairs_with_an_earlier_study_or_refuses_it_in_one_line(
    tiny_data, tmp_path, monkeypatch
) -> None:
    """--reference: a finished study on the same val images is paired run by run; a folder
    without a report, or a study that validated on other images, is one line before training."""
    trained = _fake_compare_runs(tiny_data, monkeypatch)
    args = ["--data", tiny_data, "--losses", "focal", "--seeds", "1", "--resamples", "10",
            *BASE, *SHARED]  # fmt: skip
    first = invoke("compare", "--out", tmp_path / "clean", *args)
    assert first.exit_code == 0, first.output
    second = invoke(
        "compare", "--out", tmp_path / "again", "--reference", tmp_path / "clean", *args
    )
    assert second.exit_code == 0, second.output
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert report["versus_reference"]["onnx"]["focal"]["change"]["delta"] == 0.0

    (tmp_path / "empty").mkdir()
    trained.clear()
    nothing = invoke("compare", "--out", tmp_path / "x", "--reference", tmp_path / "empty", *args)
    assert nothing.exit_code == 2 and "no report.json" in nothing.output
    other = tmp_path / "other-data"
    assert invoke("data", "synth", "--out", other, "--num-train", 4, "--num-val", 3,
                  "--seed", 7).exit_code == 0  # fmt: skip
    moved = json.loads((tmp_path / "clean" / "report.json").read_text())
    moved["training"]["data"] = str(other)
    (tmp_path / "clean" / "report.json").write_text(json.dumps(moved))
    elsewhere = invoke("compare", "--out", tmp_path / "y", "--reference", tmp_path / "clean", *args)
    assert elsewhere.exit_code == 2 and "validated on other images" in elsewhere.output
    assert trained == [] and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
