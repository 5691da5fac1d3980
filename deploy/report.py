"""Writing reports safely and showing several side by side."""

from __future__ import annotations

from typing import Any

from common.files import write_json_atomic

__all__ = ["format_metrics_table", "write_json_atomic"]

_COLUMNS = ("name", "AP", "AP50", "AP75", "p50 ms", "throughput")


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.{digits}f}"


def _row(name: str, report: dict[str, Any]) -> list[str]:
    metrics = report.get("metrics") or {}
    total = (report.get("latency") or {}).get("total_ms") or {}
    return [
        name,
        _number(metrics.get("AP"), 3),
        _number(metrics.get("AP50"), 3),
        _number(metrics.get("AP75"), 3),
        _number(total.get("p50"), 2),
        _number(report.get("throughput_ips"), 1),
    ]


def format_metrics_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Plain-text table, one line per (name, report): AP, AP50, AP75, p50 total ms, images/s.

    Missing values (a latency-only benchmark has no metrics) show as "-".
    """
    cells = [list(_COLUMNS)] + [_row(name, report) for name, report in rows]
    widths = [max(len(row[col]) for row in cells) for col in range(len(_COLUMNS))]

    def render(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(cells[0]), rule, *(render(row) for row in cells[1:])])
