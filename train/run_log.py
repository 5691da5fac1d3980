"""What a run writes while it trains, for people watching it: metrics.csv and TensorBoard events.

metrics.csv has one row per optimizer step (`kind` step: loss parts, learning rate, gradient norm,
images per second) and one per epoch (`kind` epoch: the epoch's record, AP and friends when
validated). A column appears when its first value does (the file is rewritten then, which
happens a few times per run). A resumed run first drops the rows after the step it resumes
from, and TensorBoard is told the same (`purge_step`), so both read as one uninterrupted run.
Only the main process writes.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from common.files import write_text_atomic

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"
RESULTS_PNG = "results.png"  # drawn from metrics.csv by pipeline/results_plot.py
LEADING_COLUMNS = ["kind", "epoch", "step"]


class MetricsCsv:
    """Rows of differing keys in one CSV: appended as they come, the header grown when needed."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.columns = list(LEADING_COLUMNS)
        rows: list[dict[str, Any]] = []
        if resume_step is not None and path.is_file():
            self.columns, rows = self._read()
            rows = [r for r in rows if _step_of(r) <= resume_step]
        self._rewrite(rows)

    def add(self, row: dict[str, Any]) -> None:
        grown = _merge(self.columns, row)
        if grown != self.columns:  # a new column: read what is written, write it again wider
            rows = self._read()[1]
            self.columns = grown
            self._rewrite([*rows, row])
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def _read(self) -> tuple[list[str], list[dict[str, Any]]]:
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return _merge(self.columns, reader.fieldnames or []), rows

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, text.getvalue())


def _merge(columns: list[str], keys: Any) -> list[str]:
    return columns + [k for k in keys if k not in columns]


def _step_of(row: dict[str, str]) -> int:
    try:
        return int(row.get("step") or 0)
    except ValueError:
        return 0


class TensorBoardEvents:
    """Scalars into TensorBoard event files in the run folder (`tensorboard --logdir runs`)."""

    def __init__(self, out: Path, resume_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(out), purge_step=resume_step, flush_secs=30)

    def add(self, prefix: str, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class RunLog:
    """metrics.csv and TensorBoard events of one run; does nothing off the main process."""

    def __init__(self, out: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.csv = MetricsCsv(out / METRICS_CSV, resume_step)
        self.events = TensorBoardEvents(out, resume_step)

    def step(self, epoch: int, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.csv.add({"kind": "step", "epoch": epoch, "step": step, **values})
        self.events.add("train", values, step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.csv.add({"kind": "epoch", **record})
        numbers = {
            k: float(v)
            for k, v in record.items()
            if k not in ("epoch", "step") and isinstance(v, (int, float))
        }
        self.events.add("epoch", numbers, int(record["step"]))
        self.events.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.events.close()


def clear_run_log(out: Path) -> None:
    """Remove an earlier run's logs and curves (a run started again with --overwrite)."""
    for stale in [out / METRICS_CSV, out / RESULTS_PNG, *out.glob(EVENTS_GLOB)]:
        stale.unlink(missing_ok=True)
