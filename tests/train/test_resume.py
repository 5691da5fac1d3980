"""Exact resume: a run killed after epoch 1 of 2 and resumed ends where an uninterrupted run ends.

The kill is a real SIGKILL of the training process, sent right after epoch 1's checkpoints are
written (the earliest point a resume can start from; a kill later in epoch 2 resumes from the
same last.pt). GHM (moving averages of its gradient-density histograms), an EMA of the weights
and a DataLoader worker are all on, so every piece of state last.pt carries is exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import save_atomic
from train.data.synthetic import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--img-size", "64", "--fpn-channels", "16", "--head-convs", "1", "--workers", "1",
       "--warmup-iters", "1", "--batch-size", "4", "--epochs", "2", "--loss", "ghm",
       "--ema-decay", "0.9", "--keep-state"]  # fmt: skip
# Runs the CLI with a hook that SIGKILLs the process once epoch 1's checkpoints are on disk.
KILL_AFTER_EPOCH_1 = """
import os, signal, sys
import train.trainer
build = train.trainer.Trainer.__init__
def init(self, *args, **kwargs):
    build(self, *args, **kwargs)
    self.on_epoch_end = lambda e: os.kill(os.getpid(), signal.SIGKILL) if e == 1 else None
train.trainer.Trainer.__init__ = init
from pipeline.cli import cli
cli(sys.argv[1:], prog_name="pipeline")
"""


def _pipeline(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    entry = ["-c", script] if script else ["-m", "pipeline"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *entry, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    data = generate_synthetic_dataset(tmp_path / "data", num_train=12, num_val=4)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _pipeline("train", "--data", str(data), "--out", str(straight), *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    args = ["train", "--data", str(data), "--out", str(killed), *RUN]
    done = _pipeline(*args, script=KILL_AFTER_EPOCH_1)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert _load(killed / "last.pt")["resume"]["epoch"] == 1
    done = _pipeline("train", "--resume", str(killed), "--keep-state")  # a runtime option
    assert done.returncode == 0, done.stderr[-3000:]

    expected, resumed = _load(straight / "last.pt"), _load(killed / "last.pt")
    assert resumed["resume"]["epoch"] == expected["resume"]["epoch"] == 2
    for name, value in expected["state_dict"].items():  # the EMA weights, which ship
        assert torch.equal(resumed["state_dict"][name], value), name
    for name, value in expected["resume"]["model"].items():  # the raw weights
        assert torch.equal(resumed["resume"]["model"][name], value), name
    assert set(expected["loss_state"]) == {
        "cls_harmonizer.density.acc_sum", "reg_harmonizer.density.acc_sum"
    }  # fmt: skip
    for name, value in expected["loss_state"].items():  # GHM's moving averages
        assert torch.equal(resumed["loss_state"][name], value), name
    losses = [{k: v for k, v in r.items() if k.startswith("loss_") or k == "AP"}
              for r in expected["history"]]  # fmt: skip
    assert [{k: r[k] for k in losses[0]} for r in resumed["history"]] == losses


def test_resume_needs_a_run_with_training_state(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no last.pt" in result.output


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def half_write(obj: object, handle) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError):
        save_atomic({"epoch": 2}, path)
    assert _load(path) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_resume_refuses_options_it_would_ignore(tmp_path: Path, tmp_path_factory) -> None:
    from tests.cli_support import TINY, invoke, make_tiny_dataset

    data, run = make_tiny_dataset(tmp_path_factory), tmp_path / "run"
    assert invoke("train", "--data", data, "--out", run, *TINY, "--keep-state").exit_code == 0
    before = (run / "last.pt").read_bytes()

    changed = invoke("train", "--resume", run, "--epochs", "5")
    assert changed.exit_code == 2
    assert "--epochs 5 differs from the run's 1" in changed.output
    loss_opt = invoke("train", "--resume", run, "--loss-opt", "gamma=3")
    assert loss_opt.exit_code == 2 and "gamma 2.0 -> 3.0" in loss_opt.output
    reg_loss = invoke("train", "--resume", run, "--reg-loss", "giou")
    assert reg_loss.exit_code == 2 and "reg_loss smooth-l1 -> giou" in reg_loss.output
    other_out = invoke("train", "--resume", run, "--out", tmp_path / "elsewhere")
    assert other_out.exit_code == 2 and "--out" in other_out.output
    overwrite = invoke("train", "--resume", run, "--overwrite")
    assert overwrite.exit_code == 2 and "--overwrite" in overwrite.output
    assert (run / "last.pt").read_bytes() == before  # nothing on disk touched
    assert not (tmp_path / "elsewhere").exists()

    # The stored values themselves, runtime options and the run's own folder are accepted.
    # Loss options are compared as the loss reads them: focal's own gamma and box loss are no change.
    same = invoke("train", "--resume", run, "--epochs", "1", "--workers", "0", "--out", run,
                  "--loss-opt", "gamma=2.0", "--reg-loss", "smooth-l1")  # fmt: skip
    assert same.exit_code == 0, same.output
