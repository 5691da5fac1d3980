"""Per-file table (markdown), totals and the survivors list engineers write tests from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutation.operators import Mutant

STATUSES = ("killed", "timeout", "survived", "not covered", "equivalent", "error")


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    status: str  # one of STATUSES
    seconds: float = 0.0  # 0 for results that ran nothing (cached, not covered, equivalent)
    killed_by: str = ""
    why: str = ""  # equivalent: the reason; error: pytest's complaint
    tests_run: int = 0
    module: str = ""  # the mutation.toml module (file, folder or glob) the file belongs to


def kill_rate(counts: Counter) -> float | None:
    """(killed + timeout) / (all - equivalent); None when nothing counts."""
    counted = sum(counts.values()) - counts["equivalent"]
    return (counts["killed"] + counts["timeout"]) / counted if counted else None


def _row(name: str, counts: Counter) -> str:
    rate = kill_rate(counts)
    cells = [name, str(sum(counts.values()))] + [str(counts[s]) for s in STATUSES]
    cells.append("-" if rate is None else f"{rate:.0%}")
    return "| " + " | ".join(cells) + " |"


def markdown_table(results: list[Result]) -> str:
    """One row per file, a subtotal per module of several files, and the total."""
    by_module: dict[str, dict[str, Counter]] = {}
    for result in results:
        files = by_module.setdefault(result.module, {})
        files.setdefault(result.mutant.path, Counter())[result.status] += 1
    header = ["file", "mutants", *STATUSES, "kill rate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for module, files in sorted(by_module.items()):
        lines += [_row(path, counts) for path, counts in sorted(files.items())]
        if len(files) > 1:
            lines.append(_row(f"*{module} (all)*", sum(files.values(), Counter())))
    total = sum((c for files in by_module.values() for c in files.values()), Counter())
    lines.append(_row("**total**", total))
    return "\n".join(lines)


def survivors_text(results: list[Result]) -> str:
    """`path:line: original -> mutated` per survivor, in file order, not-covered ones marked."""
    lines = []
    for result in sorted(
        results, key=lambda r: (r.mutant.path, r.mutant.line, r.mutant.col, r.mutant.operator)
    ):
        if result.status == "survived":
            lines.append(f"{result.mutant.describe()}  [ran {result.tests_run} tests]")
        elif result.status == "not covered":
            lines.append(f"{result.mutant.describe()}  [not covered]")
    return "\n".join(lines) + ("\n" if lines else "")


def timing_line(results: list[Result], wall: float, jobs: int) -> str:
    ran = [r.seconds for r in results if r.seconds > 0]
    if not ran:
        return f"Nothing ran (all results cached or not needing a run); wall {wall:.0f} s."
    mean = sum(ran) / len(ran)
    return (
        f"Ran {len(ran)} mutants in {wall:.0f} s wall with {jobs} job(s): "
        f"{mean:.1f} s per mutant process, {wall / len(ran):.1f} s wall per mutant."
    )


def write_reports(results: list[Result], out: Path, wall: float, jobs: int) -> str:
    """Write report.md and survivors.txt under `out`; returns the report text."""
    errors = [r for r in results if r.status == "error"]
    text = "# Mutation testing\n\n" + markdown_table(results) + "\n\n"
    text += "Kill rate = (killed + timeout) / (mutants - equivalent).\n\n"
    text += timing_line(results, wall, jobs) + "\n"
    if errors:
        text += "\nErrors (pytest could not run the selection):\n"
        text += "".join(f"- {r.mutant.describe()}: {r.why[:300]}\n" for r in errors)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "survivors.txt").write_text(survivors_text(results))
    return text
