"""The training loop's bookkeeping, on a detector small enough that a run takes a blink.

A 3-conv backbone stands in for ResNet-18 (registered as "tiny" for these tests only), and most
tests replace the optimizer step with a scripted one, so what is checked is the loop itself:
which steps count, how losses and throughput are averaged, when validation runs, which epoch
best.pt and last.pt hold, when a run stops, and what a resumed run continues from.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import train.trainer
from common.errors import InputError
from train.config import TrainConfig
from train.data.synthetic import generate_synthetic_dataset
from train.data.unreadable import UnreadableImage
from train.distributed import DistContext
from train.errors import NonFiniteLossError
from train.model.backbone import BACKBONES
from train.trainer import Trainer

Parts = dict[str, float] | None
# The scripted steps never call optimizer.step(), which the LR scheduler notices.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


def _tiny_backbone(weights: object = None) -> nn.Sequential:
    """C3, C4, C5 at strides 8, 16, 32 with 4 channels; a BatchNorm for --freeze-bn."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 8, stride=8),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 2, stride=2),
        nn.Conv2d(4, 4, 2, stride=2),
    )


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKBONES, "tiny", (_tiny_backbone, ("1", "2", "3"), (4, 4, 4)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training images: with --batch-size 2, two steps per epoch."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data"), 4, 2, seed=1)


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    options: dict = dict(
        out=out, data=data, backbone="tiny", img_size=64, fpn_channels=8, head_convs=1,
        workers=0, device="cpu", amp=False, batch_size=2, epochs=1, warmup_iters=0, lr=0.01,
        keep_state=True,  # these tests read the training state a finished run's last.pt keeps
    )  # fmt: skip
    return TrainConfig(**{**options, **changes})


class ScriptedStep:
    """Stands in for TrainStep: returns the scripted loss parts (None: a skipped step), then
    {"cls": 1.0}; records each call's images and the training mode of the model and its BN."""

    def __init__(self, forward: nn.Module, script: list[Parts]) -> None:
        self.forward, self.script = forward, list(script)
        self.training: list[bool] = []
        self.bn_training: list[bool] = []  # the tiny backbone's BatchNorm
        self.images: list[torch.Tensor] = []
        self.last_grad_norm: float | None = None

    def __call__(self, images: torch.Tensor, targets: list[dict]) -> Parts:
        self.training.append(self.forward.training)
        self.bn_training.append(self.forward.backbone.body["1"].training)
        self.images.append(images.clone())
        return self.script.pop(0) if self.script else {"cls": 1.0}


def _scripted(trainer: Trainer, *script: Parts) -> ScriptedStep:
    step = ScriptedStep(trainer.model, list(script))
    trainer.train_step = step  # type: ignore[assignment]
    return step


def _clock(monkeypatch: pytest.MonkeyPatch, tick: float) -> None:
    """The trainer's clock advances `tick` seconds per reading. It reads it when an epoch starts,
    after each optimizer step (the step's images/s) and when the epoch ends, so an epoch of n
    steps lasts (n + 1) ticks."""
    readings: Iterator[float] = (tick * i for i in range(10**6))
    monkeypatch.setattr(train.trainer, "time", SimpleNamespace(perf_counter=lambda: next(readings)))


class Validator:
    """Returns the scripted AP of each epoch (no AP where none is given); records the calls."""

    def __init__(self, ap: dict[int, float]) -> None:
        self.ap, self.calls = ap, []

    def __call__(self, model: nn.Module, epoch: int) -> dict[str, float]:
        self.calls.append((epoch, model, model.training))
        return {"AP": self.ap[epoch]} if epoch in self.ap else {}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_epochs_average_the_losses_of_their_steps_and_count_images_per_second(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch, 0.4567)  # not a whole number; epochs of 2 steps: 3 ticks, 1.3701 s
    validate = Validator({1: 0.5, 2: 0.5})
    trainer = Trainer(_config(data, tmp_path / "run", epochs=2), validate)
    good = [{"cls": 1.0, "reg": 2.0}, {"cls": 3.0, "reg": 6.0}, None, {"cls": 5.0, "reg": 1.0}]
    step = _scripted(trainer, *good)
    result = trainer.fit()
    assert result.history == [
        # 2 steps of 2 images in 1.3701 s: 2.919 img/s; losses (1 + 3) / 2 and (2 + 6) / 2
        {"epoch": 1, "step": 2, "seconds": 1.37, "images_per_second": 2.92, "skipped_images": 0,
         "loss_cls": 2.0, "loss_reg": 4.0, "AP": 0.5},
        # the skipped step counts neither as a step nor towards the images trained on, and
        # reads no clock: 1 step, 2 ticks, 2 images / 0.9134 s
        {"epoch": 2, "step": 3, "seconds": 0.91, "images_per_second": 2.19, "skipped_images": 0,
         "loss_cls": 5.0, "loss_reg": 1.0, "AP": 0.5},
    ]  # fmt: skip
    assert trainer._bad_in_a_row == 0  # the good step after the bad one reset the count
    # Every step ran in training mode, also after validation put the model in eval mode.
    assert step.training == [True] * 4
    assert [(e, m is trainer.model, training) for e, m, training in validate.calls] == [
        (1, True, False),
        (2, True, False),
    ]
    # 3 optimizer steps of 4 (2 per epoch): the LR is the schedule's value at step 3
    expected = 0.01 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    # each epoch draws a new order (and new flips) of the same 4 images
    assert not all(torch.equal(a, b) for a, b in zip(step.images[:2], step.images[2:], strict=True))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read from the event files' records (length, crc, Event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_every_step_and_epoch_is_written_to_metrics_csv_and_tensorboard(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch, 0.5)  # each step's reading is 0.5 s after the one before: 2 images / 0.5
    trainer = Trainer(_config(data, tmp_path / "run", epochs=2), Validator({1: 0.25, 2: 0.5}))
    _scripted(trainer, {"cls": 1.0, "reg": 2.0}, {"cls": 3.0, "reg": 6.0}, None, {"cls": 5.0})
    trainer.fit()
    rows = _csv_rows(tmp_path / "run" / "metrics.csv")
    steps = [r for r in rows if r["kind"] == "step"]
    # the LR each step used: the cosine schedule (no warmup, final ratio 0.02) at 0, 1 and 2 of 4
    lrs = [0.01 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * k / 4))) for k in range(3)]
    assert [(r["epoch"], r["step"]) for r in steps] == [("1", "1"), ("1", "2"), ("2", "3")]
    assert [float(r["loss_cls"]) for r in steps] == [1.0, 3.0, 5.0]
    assert [float(r["loss"]) for r in steps] == [3.0, 9.0, 5.0]
    assert [r["loss_reg"] for r in steps] == ["2.0", "6.0", ""]  # no reg in the last step
    assert [float(r["lr"]) for r in steps] == pytest.approx(lrs)
    assert [float(r["images_per_second"]) for r in steps] == [4.0, 4.0, 4.0]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"], r["AP"]) for r in epochs] == [
        ("1", "2", "0.25"),
        ("2", "3", "0.5"),
    ]
    scalars = _tensorboard_scalars(tmp_path / "run")
    assert scalars["train/loss_cls"] == [(1, 1.0), (2, 3.0), (3, 5.0)]
    assert [s for s, _ in scalars["train/lr"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(lrs)
    assert scalars["epoch/AP"] == [(2, 0.25), (3, 0.5)]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_config"]["epochs"] == 2 and config["total_steps"] == 4
    assert config["loss_options"]["gamma"] == 2.0  # focal's default, filled in


def test_max_steps_ends_the_run_mid_epoch_and_validates_that_last_epoch(
    data: Path, tmp_path: Path
) -> None:
    validate = Validator({2: 0.25})
    config = _config(data, tmp_path / "run", epochs=5, max_steps=3, val_every=5)
    trainer = Trainer(config, validate)
    step = _scripted(trainer)
    ended: list[int] = []
    trainer.on_epoch_end = ended.append
    result = trainer.fit()
    assert trainer.total_steps == 3 and len(step.training) == 3
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 2), (2, 3)]
    assert [e for e, _, _ in validate.calls] == [2] and ended == [1, 2]
    assert result.best_ap == 0.25
    assert (result.best_path, result.last_path) == (config.out / "best.pt", config.out / "last.pt")
    assert _load(result.last_path)["resume"]["epoch"] == 2

    # Resuming a run that already made its max_steps trains no further.
    resumed = Trainer(_config(data, tmp_path / "run", epochs=5, max_steps=3, resume=config.out))
    again = _scripted(resumed)
    assert [r["epoch"] for r in resumed.fit().history] == [1, 2]
    assert again.training == []


def test_validation_runs_every_val_every_epochs_and_on_the_last(data: Path, tmp_path: Path) -> None:
    validate = Validator({2: 0.2, 3: 0.1})
    config = _config(data, tmp_path / "run", epochs=3, val_every=2)
    trainer = Trainer(config, validate)
    _scripted(trainer)
    result = trainer.fit()
    assert [e for e, _, _ in validate.calls] == [2, 3]
    assert ["AP" in r for r in result.history] == [False, True, True]
    # epoch 1 had no AP but was the run's first best.pt; epoch 2's AP replaced it
    best, last = _load(config.out / "best.pt"), _load(config.out / "last.pt")
    assert (best["epoch"], best["metrics"]["AP"], "resume" in best) == (2, 0.2, False)
    assert (last["epoch"], last["metrics"]["AP"]) == (3, 0.1)
    assert last["resume"]["best_ap"] == 0.2 and result.best_ap == 0.2
    assert last["history"] == result.history and last["train_config"]["val_every"] == 2
    assert "loss_state" in last
    text = (config.out / "history.json").read_text()
    assert json.loads(text) == result.history
    assert text.startswith('[\n  {\n    "epoch": 1,')  # indented by 2


def test_best_pt_moves_only_on_a_strictly_higher_finite_ap(data: Path, tmp_path: Path) -> None:
    validate = Validator({1: 0.3, 2: math.nan, 3: 0.3})
    config = _config(data, tmp_path / "run", epochs=3)
    trainer = Trainer(config, validate)
    _scripted(trainer)
    result = trainer.fit()
    assert [e for e, _, _ in validate.calls] == [1, 2, 3]
    assert _load(config.out / "best.pt")["epoch"] == 1
    assert result.best_ap == 0.3 and _load(config.out / "last.pt")["resume"]["best_ap"] == 0.3


def test_without_a_validator_best_pt_is_the_last_epoch(data: Path, tmp_path: Path) -> None:
    """No AP to choose by (a dataset without a val split): the latest weights are the best known,
    not the first epoch's."""
    config = _config(data, tmp_path / "run", epochs=3)
    trainer = Trainer(config)
    assert trainer.best_ap == -1.0  # "no AP", as a run without a validator ends
    _scripted(trainer)
    result = trainer.fit()
    assert all("AP" not in r for r in result.history)
    assert _load(config.out / "best.pt")["epoch"] == 3
    assert result.best_ap == -1.0


def test_consecutive_non_finite_steps_stop_the_run_keeping_the_checkpoints(
    data: Path, tmp_path: Path
) -> None:
    config = _config(data, tmp_path / "run", epochs=5, max_bad_steps=2)
    trainer = Trainer(config)
    # epoch 1 good; epoch 2: a bad step, then a good one (the count restarts); epoch 3: 2 bad
    step = _scripted(trainer, {"cls": 1.0}, {"cls": 1.0}, None, {"cls": 1.0}, None, None)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    assert str(error.value) == (
        f"{config.out}: training stopped after 2 consecutive non-finite losses (lower --lr or "
        "check the data); last good best.pt and last.pt kept"
    )
    assert len(step.training) == 6
    assert _load(config.out / "last.pt")["resume"]["epoch"] == 2

    fresh = Trainer(_config(data, tmp_path / "fresh", epochs=5, max_bad_steps=2))
    fresh_step = _scripted(fresh, None, None)
    with pytest.raises(NonFiniteLossError, match="; no checkpoint written yet$"):
        fresh.fit()
    assert len(fresh_step.training) == 2  # the first bad step alone does not stop the run


def test_unreadable_images_are_counted_and_warned_about_once(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = Trainer(_config(data, tmp_path / "run", epochs=2))
    images, targets, _ = next(iter(trainer.loader))
    bad = [UnreadableImage(0, "a.png: cannot decode"), UnreadableImage(1, "b.png: truncated")]
    # per epoch: a batch with nothing readable, then one with 2 images and an unreadable one
    trainer.loader = [(None, [], bad[:1]), (images, targets, bad[1:])]  # type: ignore[assignment]
    step = _scripted(trainer)
    with caplog.at_level(logging.WARNING, logger="train.trainer"):
        history = trainer.fit().history
    assert [(r["step"], r["skipped_images"]) for r in history] == [(1, 2), (2, 2)]
    assert len(step.training) == 2
    assert caplog.text.count("a.png: cannot decode; image skipped") == 1
    assert caplog.text.count("b.png: truncated; image skipped") == 1
    assert "epoch 2: skipped 2 unreadable training images" in caplog.text

    nothing = Trainer(_config(data, tmp_path / "nothing"))
    nothing.loader = [(None, [], bad)]  # type: ignore[assignment]
    with pytest.raises(InputError, match="none of the 2 training images of epoch 1 could be read"):
        nothing.fit()

    strict = Trainer(_config(data, tmp_path / "strict", strict=True))
    strict.loader = [(images, targets, bad[1:])]  # type: ignore[assignment]
    with pytest.raises(InputError, match=r"^b.png: truncated \(--strict\)$"):
        strict.fit()


def test_a_resumed_run_continues_from_last_pt(data: Path, tmp_path: Path) -> None:
    config = _config(data, tmp_path / "run", epochs=2)
    trainer = Trainer(config, Validator({1: 0.4}))
    _scripted(trainer, {"cls": 2.0}, None)  # epoch 1 ends on a bad step

    def crash(epoch: int) -> None:
        raise KeyboardInterrupt  # killed once epoch 1's checkpoints are written

    trainer.on_epoch_end = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()

    resumed = Trainer(_config(data, tmp_path / "run", epochs=2, resume=config.out))
    assert (resumed.epoch, resumed._step, resumed.best_ap, resumed._bad_in_a_row) == (1, 1, 0.4, 1)
    assert [r["epoch"] for r in resumed.history] == [1]
    assert resumed.scheduler.last_epoch == 1
    step = _scripted(resumed)
    result = resumed.fit()
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 1), (2, 3)]
    assert len(step.training) == 2
    # no AP in epoch 2: best.pt stays epoch 1's, though this process has not written one
    assert _load(config.out / "best.pt")["epoch"] == 1
    assert result.best_ap == 0.4


def test_with_ema_validation_and_checkpoints_use_the_averaged_weights(
    data: Path, tmp_path: Path
) -> None:
    validate = Validator({1: 0.1})
    config = _config(data, tmp_path / "run", ema_decay=0.9)
    trainer = Trainer(config, validate)
    result = trainer.fit()  # the real step: weights and EMA move
    assert trainer.ema is not None
    assert [(e, m is trainer.ema.module, t) for e, m, t in validate.calls] == [(1, True, False)]
    for path in (result.best_path, result.last_path):
        saved = _load(path)["state_dict"]
        for name, value in trainer.ema.module.state_dict().items():
            assert torch.equal(saved[name], value), name
    raw = _load(result.last_path)["resume"]["model"]
    weights = trainer.model.state_dict()
    assert all(torch.equal(raw[name], value) for name, value in weights.items())
    assert any(not torch.equal(raw[name], value) for name, value in saved.items())  # EMA != raw


def test_step_trains_the_model_on_one_batch(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(data, tmp_path / "run"))
    images, targets, _ = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    parts = trainer.train_step(images, targets)
    assert parts is not None and set(parts) == {"cls", "reg"}
    assert all(math.isfinite(v) and v > 0 for v in parts.values())
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_freeze_bn_keeps_batchnorm_frozen_and_in_eval_mode(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(data, tmp_path / "run", freeze_bn=True))
    bn = trainer.model.backbone.body["1"]
    assert isinstance(bn, nn.BatchNorm2d)
    assert not any(p.requires_grad for p in bn.parameters())
    step = _scripted(trainer)
    trainer.fit()
    assert step.training == [True, True] and step.bn_training == [False, False]


def test_the_seed_decides_the_initial_weights(data: Path, tmp_path: Path) -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        return list(Trainer(_config(data, tmp_path / "run", seed=seed)).model.parameters())

    first, same, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a, b) for a, b in zip(first, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_lr_schedule_warms_up_then_decays_over_the_steps(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(data, tmp_path / "run", epochs=3, warmup_iters=2))
    _scripted(trainer)
    lrs = []
    for _ in range(6):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.scheduler.step()
    # 6 steps, 2 of warm-up from 0.1x; then cosine from 1x to 0.02x over the 4 others
    factors = [0.1, 0.55] + [0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([0.01 * f for f in factors])


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    """A real (gloo, 1-process) group, so a Trainer told it is one of 2 ranks can wrap in DDP."""
    init = f"file://{tmp_path / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_rank_1_trains_its_shard_under_ddp_with_its_own_seed_and_writes_nothing(
    data: Path,
    tmp_path: Path,
    process_group: None,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(data, tmp_path / "run", seed=5)
    with caplog.at_level(logging.WARNING, logger="train.trainer"):
        trainer = Trainer(config, context=DistContext(rank=1, world_size=2))
        # the last thing __init__ does on rank 1: reseed with seed + rank
        assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(6)))
    assert caplog.text == ""  # rank 0 alone warns about per-process BatchNorm
    forward = trainer.train_step.forward
    assert isinstance(forward, DistributedDataParallel) and forward.module is trainer.model
    assert forward.device_ids is None and forward.gradient_as_bucket_view
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in trainer.model.modules())  # CPU
    assert trainer.loader.pin_memory is False
    step = _scripted(trainer)
    history = trainer.fit().history
    assert len(step.images) == 2 and all(len(images) == 1 for images in step.images)  # 2 of 4
    assert [r["step"] for r in history] == [2]
    assert not config.out.exists()
    assert capsys.readouterr().err == ""  # rank 0 alone shows a progress bar


def test_rank_0_averages_the_epoch_over_ranks_and_skips_batches_another_rank_lacks(
    data: Path,
    tmp_path: Path,
    process_group: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _clock(monkeypatch, 2.0)
    with caplog.at_level(logging.WARNING, logger="train.trainer"):
        trainer = Trainer(_config(data, tmp_path / "run", batch_size=2, epochs=1),
                          context=DistContext(rank=0, world_size=2))  # fmt: skip
    assert "BatchNorm statistics are per process on CPU" in caplog.text
    # rank 0 goes on with the stream the model was drawn from, as a 1-process run does
    assert not torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(0)))
    synced: list[int] = []  # last.pt's epoch when the ranks meet at the end of an epoch
    last = tmp_path / "run" / "last.pt"
    monkeypatch.setattr(train.trainer, "barrier", lambda: synced.append(_load(last)["epoch"]))
    asked: list[bool] = []

    def all_ranks_true(flag: torch.Tensor) -> bool:  # rank 1 has no first batch
        asked.append(bool(flag))
        return len(asked) > 1

    monkeypatch.setattr(train.trainer, "all_ranks_true", all_ranks_true)
    # rank 1's (loss sums, images stepped on, images skipped)
    rank_1 = ({"cls": 4.0, "reg": 2.0}, 3, 1)
    monkeypatch.setattr(train.trainer, "all_gather_objects", lambda own: [own, rank_1])
    step = _scripted(trainer, {"cls": 1.0})
    history = trainer.fit().history
    assert asked == [True, True] and len(step.images) == 1
    assert synced == [1]
    # 1 step here (2 ticks); (1 + 4) / 2 ranks / 1 step; reg only on rank 1: (0 + 2) / 2 / 1;
    # images: 1 here + 3 on rank 1 in 4 s
    assert history == [
        {"epoch": 1, "step": 1, "seconds": 4.0, "images_per_second": 1.0, "skipped_images": 1,
         "loss_cls": 2.5, "loss_reg": 1.0},
    ]  # fmt: skip


def test_a_run_refuses_an_earlier_runs_folder_unless_overwriting(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier run")
    with pytest.raises(InputError, match="already holds a trained run"):
        Trainer(_config(data, out)).fit()
    stale = out / ".last.pt.killed-mid-write.tmp"
    stale.write_bytes(b"torn")
    overwrite = Trainer(_config(data, out, overwrite=True))
    _scripted(overwrite)
    overwrite.fit()
    assert not stale.exists() and _load(out / "best.pt")["epoch"] == 1


def test_a_finished_run_keeps_only_weights_in_last_pt_unless_keep_state(
    data: Path, tmp_path: Path
) -> None:
    """The training state is kept while the run trains (an interrupted run resumes) and dropped
    after the last epoch, where it has nothing left to resume."""
    config = _config(data, tmp_path / "run", epochs=2, keep_state=False)
    trainer = Trainer(config)
    states: list[bool] = []
    trainer.on_epoch_end = lambda epoch: states.append("resume" in _load(config.out / "last.pt"))
    _scripted(trainer)
    trainer.fit()
    assert states == [True, False]
    last = _load(config.out / "last.pt")
    assert last["epoch"] == 2 and "state_dict" in last and "optimizer" not in str(last.keys())
    with pytest.raises(InputError, match="finished all 2 epochs, so there is nothing to resume"):
        Trainer(_config(data, tmp_path / "run", epochs=2, resume=config.out))
