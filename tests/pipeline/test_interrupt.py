"""Ctrl-C during training (one message saying what last.pt holds and the command that resumes
from it exactly, exit code 130, and that command working), and the run folder chosen when --out
is not given."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline.training
from pipeline.cli import cli
from tests.cli_support import TINY, invoke, make_tiny_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


def _train(*args: object):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


def _in_epoch_2(make_validator, action):
    """A make_validator whose validator calls `action()` when epoch 2 ends (its 2nd call)."""

    def make(*args, **kwargs):
        validate, calls = make_validator(*args, **kwargs), []

        def wrapped(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                action()
            return validate(*a, **k)

        return wrapped

    return make


@pytest.mark.slow
def test_ctrl_c_in_epoch_2_says_last_pt_holds_epoch_1_and_resume_finishes_the_run(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline.training.make_validator

    def press_ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.training, "make_validator", _in_epoch_2(real, press_ctrl_c))
    out = tmp_path / "run"
    budget = [*TINY, "--epochs", 2, "--max-steps", 4]  # later flags win: 2 epochs of 2 steps
    result = _train("--data", tiny_data, "--out", out, *budget)
    assert result.exit_code == 130, result.output
    assert f"{out / 'last.pt'} holds epoch 1" in result.output
    assert f"pipeline train --resume {out}" in result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert (out / "results.png").is_file()  # the curves so far, drawn on the way out

    monkeypatch.setattr(pipeline.training, "make_validator", real)
    resumed = _train("--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert [e["epoch"] for e in json.loads((out / "history.json").read_text())] == [1, 2]
    # epoch 2's steps of the interrupted attempt were dropped from the logs, then logged again
    with (out / "metrics.csv").open(newline="") as f:
        rows = [(r["kind"], r["step"]) for r in csv.DictReader(f)]
    assert rows == [("step", "1"), ("step", "2"), ("step", "3"), ("epoch", "3"), ("step", "4"),
                    ("epoch", "4")]  # fmt: skip


def test_sigterm_in_epoch_2_stops_like_ctrl_c_and_puts_the_old_handler_back(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill PID` (a backgrounded run ignores SIGINT) keeps epoch 1 and says how to resume."""
    kill = _in_epoch_2(
        pipeline.training.make_validator, lambda: os.kill(os.getpid(), signal.SIGTERM)
    )
    monkeypatch.setattr(pipeline.training, "make_validator", kill)

    def ignore(signum: int, frame: object) -> None: ...

    default = signal.signal(signal.SIGTERM, ignore)  # were training not to handle it: no effect
    try:
        out = tmp_path / "run"
        result = _train("--data", tiny_data, "--out", out, *TINY, "--epochs", 2, "--max-steps", 4)
        assert result.exit_code == 130, result.output
        assert f"{out / 'last.pt'} holds epoch 1" in result.output
        assert signal.getsignal(signal.SIGTERM) is ignore
    finally:
        signal.signal(signal.SIGTERM, default)


def test_ctrl_c_before_any_epoch_says_there_is_nothing_to_resume(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.trainer import Trainer

    def pressed(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", pressed)
    result = _train("--data", tiny_data, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 130
    assert "no epoch had finished" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_without_out_each_run_gets_the_next_free_folder(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train").mkdir(parents=True)  # empty: still free
    for expected in ("runs/train", "runs/train2", "runs/train3"):
        result = _train("--data", tiny_data, *TINY)
        assert result.exit_code == 0, result.output
        assert (tmp_path / expected / "last.pt").is_file(), expected
    assert not (tmp_path / "runs" / "train4").exists()


def test_training_on_a_busy_machine_says_how_to_share_it(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.training import warn_if_busy

    with caplog.at_level("WARNING", logger="pipeline.training"):
        warn_if_busy(cpus=2, load=2.1)  # a compare's own previous run: quiet
        assert caplog.text == ""
        warn_if_busy(cpus=2, load=3.0)
    assert "load 3.0 on 2 CPUs" in caplog.text and "give each --threads 1" in caplog.text


@pytest.mark.slow
def test_threads_sets_the_torch_threads_the_run_computes_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    seen = []

    class Spy(pipeline.training.Trainer):
        def fit(self, *args: object, **kwargs: object) -> object:
            seen.append(torch.get_num_threads())
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(pipeline.training, "Trainer", Spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = invoke("train", "--out", tmp_path / "run", *TINY, "--threads", "1")
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == [1]
