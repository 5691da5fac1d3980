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


def format_agreement(found: dict[str, Any]) -> str:
    """`eval --compare-to`'s findings as lines: diagnosis first, then the evidence."""
    lines = [f"diagnosis: {line}" for line in found["diagnosis"]]
    counts, diff = found["detections"], found["score_difference"]
    lines.append(
        f"detections: {counts['a']} (A), {counts['b']} (B); {found['paired']} paired (same image "
        f"and class, IoU > {found['match_iou']}; {found['paired_near']['pairs']} at IoU > "
        f"{found['paired_near']['iou']}); only A: {found['only_a']['count']}, only B: "
        f"{found['only_b']['count']}"
    )
    if diff["pairs"]:
        lines.append(f"score B - A on the pairs: mean |d| {diff['mean_abs']:.4f}, "
                     f"max |d| {diff['max_abs']:.4f}")  # fmt: skip
    for title, table in (("per class", found["per_class"]), ("per size", found["per_size"])):
        cells = []
        for name, stats in table.items():
            if not stats["pairs"] and not stats.get("only_a") and not stats.get("only_b"):
                continue
            text = f"{name} {stats['pairs']} paired"
            if "mean_abs" in stats:
                text += f" |d| {stats['mean_abs']:.4f}"
            if "only_a" in stats:
                text += f", only A {stats['only_a']}, only B {stats['only_b']}"
            cells.append(text)
        if cells:
            lines.append(f"{title}: " + "; ".join(cells))
    if found.get("layers"):
        worst = ", ".join(f"{row['tensor']} {row['sqnr_db']:.1f} dB" for row in found["layers"][:5])
        lines.append(f"lowest SQNR of the convolutions both graphs share: {worst}")
    return "\n".join(lines)
