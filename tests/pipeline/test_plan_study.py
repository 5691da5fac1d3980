"""scripts/plan_study.py: a study planned from a hand-made finished study with known times."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from plan_study import main, measure_run  # noqa: E402


def finished_run(study: Path, name: str, epochs: list[tuple[int, float]], whole: float) -> None:
    """A run whose epochs end at the given (step, seconds) and which took `whole` seconds."""
    run = study / "runs" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    history = [
        {"epoch": i + 1, "step": step, "seconds": sec} for i, (step, sec) in enumerate(epochs)
    ]
    (run / "history.json").write_text(json.dumps(history))
    (run / "run.json").write_text(json.dumps({"status": "ok"}))
    os.utime(run / "config.json", (1000.0, 1000.0))
    os.utime(run / "run.json", (1000.0 + whole, 1000.0 + whole))


def test_plan_from_measured_steps(tmp_path, capsys):
    study = tmp_path / "study"
    # 100 steps in 200 s of loop (2 s/step) and 260 s whole: 60 s of overhead
    finished_run(study, "ce-s0", [(50, 100.0), (100, 100.0)], 260.0)
    # 100 steps in 300 s (3 s/step), 400 s whole: 100 s overhead
    finished_run(study, "focal-s0", [(50, 150.0), (100, 150.0)], 400.0)
    # a slow outlier: the medians ignore it
    finished_run(study, "ghm-s0", [(100, 1000.0)], 1080.0)  # 10 s/step, 80 s overhead
    (study / "runs" / "pisa-s0").mkdir()  # unfinished: left out
    report = {"losses": ["ce", "focal", "ghm", "pisa"], "seeds": [0]}
    (study / "report.json").write_text(json.dumps(report))
    assert measure_run(study / "runs" / "ce-s0") == {
        "steps": 100,
        "loop_seconds": 200.0,
        "run_seconds": 260.0,
    }
    # median 3 s/step and 80 s overhead; 1200 steps: 3680 s = 1 h 01 min per run;
    # 4 losses x 3 seeds = 12 runs; 2 nodes x 2 at once: 3 waves
    assert main([str(study), "--seeds", "3", "--steps", "1200", "--nodes", "1,2",
                 "--runs-per-node", "2", "--gpus-per-run", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "3.000 s per step, 80 s per run outside the training loop" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    # GPU-hours: 12 runs x 3680 s x 4 GPUs = 49.07 h
    assert rows == ["| 1 | 12 | 1 h 01 min | 6 | 6 h 08 min | 49.1 |",
                    "| 2 | 12 | 1 h 01 min | 3 | 3 h 04 min | 49.1 |"]  # fmt: skip


def test_a_study_without_finished_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "runs" / "ce-s0").mkdir(parents=True)
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
