"""Crashes and numerical faults: kill -9 while checkpoints are written, non-finite losses.

Checkpoints and reports go to a temporary sibling and are renamed into place, so a process killed
at any moment leaves either the previous best.pt / last.pt or a complete new one, never a torn
file. A non-finite loss skips the step with a warning naming the loss part; N in a row stop the
run with one line, and the checkpoints of the last good epoch stay as they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pipeline.cli
import train.trainer
from tests.corpus import TINY, assert_one_line_error, invoke, make_dataset
from train.checkpoint import load_checkpoint, model_from_checkpoint

LONG_RUN = ["--epochs", "1000", "--max-steps", "1000"]  # killed long before it ends


def _train_args(data: Path, out: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("train", "--data", data, "--out", out, *TINY, *extra)]


def _assert_checkpoints_usable(out: Path) -> None:
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(out / name)  # raises on a torn or foreign file
        model = model_from_checkpoint(payload, out / name)
        assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    json.loads((out / "history.json").read_text())


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _wait_for(condition: object, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "training never started writing checkpoints"
        time.sleep(0.005)


def _kill_during_writes(data: Path, out: Path, delay: float | None) -> bool:
    """Start a long run over `out`; kill -9 it as soon as a temporary checkpoint exists
    (delay None) or `delay` s after its first new last.pt. Returns whether a write was torn."""
    before = (out / "last.pt").stat().st_mtime_ns
    args = _train_args(data, out, "--overwrite", *LONG_RUN)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if delay is None:
            _wait_for(lambda: bool(_temporaries(out)), process)
        else:
            _wait_for(lambda: (out / "last.pt").stat().st_mtime_ns != before, process)
            time.sleep(delay)
        torn = bool(_temporaries(out))
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return torn


@pytest.mark.slow
def test_kill_9_while_writing_checkpoints_keeps_them_loadable(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "data"), tmp_path / "run"
    first = invoke(*_train_args(data, out))
    assert first.exit_code == 0, first.output
    rng = random.Random(7)
    for attempt, delay in enumerate([None, rng.uniform(0, 1.0), rng.uniform(0, 1.0)]):
        stale = out / ".last.pt.left-by-a-kill.tmp"
        stale.write_bytes(b"torn")
        torn = _kill_during_writes(data, out, delay)
        assert torn or attempt > 0, "the first kill was meant to land mid-write"
        assert delay is None or not stale.exists()  # the next run clears old temporaries
        _assert_checkpoints_usable(out)


class _NanOnCalls:
    """Wraps a loss: on the calls numbered in `bad` (1-based), part "cls" is NaN."""

    def __init__(self, loss: object, bad: set[int]) -> None:
        self.loss, self.bad, self.calls = loss, bad, 0

    def __call__(self, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        self.calls += 1
        parts = self.loss(*args, **kwargs)  # type: ignore[operator]
        if self.calls in self.bad:
            parts = {**parts, "cls": parts["cls"] * float("nan")}
        return parts

    def __getattr__(self, name: str) -> object:  # state_dict etc. of the real loss
        return getattr(self.loss, name)


def _patch_loss(monkeypatch: pytest.MonkeyPatch, bad: set[int]) -> None:
    """NaN on the loss calls in `bad`; at most 2 non-finite steps in a row."""
    build = train.trainer.build_loss
    monkeypatch.setattr(
        train.trainer, "build_loss", lambda *a, **k: _NanOnCalls(build(*a, **k), bad)
    )
    to_config = pipeline.cli.config_from_command_line
    monkeypatch.setattr(
        pipeline.cli,
        "config_from_command_line",
        lambda out, options: dataclasses.replace(to_config(out, options), max_bad_steps=2),
    )


def test_non_finite_losses_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """2 steps per epoch, N = 2. Loss call 2 is NaN: skipped, training goes on (epochs 1-2 end
    at step 3). Calls 5 and 6 (epoch 3) are NaN: the run stops with one line; the checkpoints
    of epoch 2 are untouched."""
    _patch_loss(monkeypatch, {2, 5, 6})
    data, out = make_dataset(tmp_path / "data"), tmp_path / "run"
    args = _train_args(data, out, "--batch-size", 1, "--epochs", 5, "--max-steps", 10)
    line = assert_one_line_error(invoke(*args), str(out))
    assert (
        "2 consecutive non-finite losses" in line and "last good best.pt and last.pt kept" in line
    )
    # 3 warnings: the isolated bad step did not count towards the 2 in a row
    assert caplog.text.count("non-finite loss in cls; step skipped") == 3
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 3]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    _assert_checkpoints_usable(out)
