"""The unmutated run of a module's tests under coverage: which test executes which line, how long.

A mutant then runs only the tests that execute its line; a mutant on a line no test executes is
a survivor without running anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mutation.config import ModuleGroup
from mutation.execute import RUNNER_HOME
from mutation.operators import Mutant
from mutation.pytest_plugin import FIXTURE_PREFIX
from mutation.workspace import child_environment, content_hash

_FORMAT = 2  # bump when the stored baseline changes shape


@dataclass
class Baseline:
    durations: dict[str, float]  # passing test node id -> seconds
    failing: list[str]  # tests that fail unmutated: never used to kill a mutant
    startup: float  # seconds a pytest run spends outside the tests (imports, collection)
    lines: dict[str, dict[int, list[str]]]  # path -> line -> contexts ("" is import time)
    fixtures: dict[str, list[str]]  # test node id -> fixture names it uses
    use_coverage: bool = True

    def tests_for(self, mutant: Mutant) -> list[str] | None:
        """Passing tests that execute the mutant's line, fastest first; None when none does."""
        if not self.use_coverage:
            return self._fastest_first(self.durations)
        by_line = self.lines.get(mutant.path, {})
        lines = {mutant.cover_line} | ({mutant.line} if mutant.line >= mutant.cover_line else set())
        contexts = {context for line in lines for context in by_line.get(line, ())}
        covering = set()
        for context in contexts:
            covering |= self._tests_of(context)
        if not covering and "" not in contexts:
            return None
        ordered = self._fastest_first(covering)
        if "" in contexts:  # runs at import: any test may see the mutated value
            ordered += self._fastest_first(set(self.durations) - covering)
        return ordered

    def _tests_of(self, context: str) -> set[str]:
        if context.startswith(FIXTURE_PREFIX):
            name = context.removeprefix(FIXTURE_PREFIX)
            return {t for t in self.durations if name in self.fixtures.get(t, ())}
        return {context} if context in self.durations else set()

    def _fastest_first(self, tests: set[str] | dict[str, float]) -> list[str]:
        return sorted(tests, key=lambda t: (self.durations[t], t))

    def seconds_for(self, tests: list[str]) -> float:
        """Expected run time of a pytest process running `tests`."""
        return self.startup + sum(self.durations[t] for t in tests)


def baseline_key(group: ModuleGroup, files: dict[str, bytes]) -> str:
    """Changes whenever any Python file outside scripts/ or the group's selection changes."""
    python = sorted(p for p in files if p.endswith(".py") and not p.startswith("scripts/"))
    parts = [str(_FORMAT), repr(group)] + [f"{p}\0" for p in python] + [files[p] for p in python]
    return content_hash(*parts)


def load_or_run_baseline(
    group: ModuleGroup, files: dict[str, bytes], workspace: Path, store: Path
) -> Baseline:
    """The cached baseline of `group` when nothing changed since, else a fresh coverage run."""
    key = baseline_key(group, files)
    cached = store / f"{_safe_name(group.name)}.json"
    if cached.is_file():
        stored = json.loads(cached.read_text())
        if stored.get("key") == key:
            return _from_json(stored["baseline"], group)
    baseline = run_baseline(group, workspace)
    store.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"key": key, "baseline": _to_json(baseline)}))
    return baseline


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "root"


def pytest_selection_args(group: ModuleGroup) -> list[str]:
    args = list(group.tests)
    if group.keyword:
        args += ["-k", group.keyword]
    if group.markers:
        args += ["-m", group.markers]
    return args


def run_baseline(group: ModuleGroup, workspace: Path) -> Baseline:
    """Run the group's tests once, unmutated, under coverage with one context per test."""
    data_file = workspace / f".mutation-coverage-{_safe_name(group.name)}"
    report = workspace / f".mutation-baseline-{_safe_name(group.name)}.json"
    include = ",".join(str(workspace.resolve() / path) for path in group.files)
    command = [sys.executable, "-m", "coverage", "run", f"--data-file={data_file}"]
    command += [f"--include={include}", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors"]  # a test file mid-edit spoils only itself
    command += ["-p", "mutation.pytest_plugin", *pytest_selection_args(group)]
    env = child_environment(workspace, extra_path=RUNNER_HOME)
    env["MUTATION_BASELINE_OUT"] = str(report)
    started = time.monotonic()
    done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1) or not report.is_file():
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"baseline of {group.name} failed (rc {done.returncode}):\n{tail}")
    tests = json.loads(report.read_text())["tests"]
    passing = {t: e["duration"] for t, e in tests.items() if e["outcome"] == "passed"}
    if not passing:
        raise RuntimeError(f"baseline of {group.name}: no test passed; check its `tests` entry")
    return Baseline(
        durations=passing,
        failing=sorted(t for t, e in tests.items() if e["outcome"] == "failed"),
        startup=max(0.0, wall - sum(e["duration"] for e in tests.values())),
        lines=_contexts_by_line(data_file, workspace, group.files),
        fixtures={t: e["fixtures"] for t, e in tests.items()},
        use_coverage=group.use_coverage,
    )


def _contexts_by_line(
    data_file: Path, workspace: Path, paths: tuple[str, ...]
) -> dict[str, dict[int, list[str]]]:
    from coverage import CoverageData  # the runner itself needs coverage only here

    data = CoverageData(basename=str(data_file))
    data.read()
    measured = {Path(f).resolve(): f for f in data.measured_files()}
    lines = {}
    for path in paths:
        name = measured.get((workspace / path).resolve())
        if name is not None:
            by_line = data.contexts_by_lineno(name)
            lines[path] = {line: sorted(contexts) for line, contexts in by_line.items()}
    return lines


def _to_json(baseline: Baseline) -> dict:
    return {
        "durations": baseline.durations,
        "failing": baseline.failing,
        "startup": baseline.startup,
        "lines": {
            p: {str(n): c for n, c in by_line.items()} for p, by_line in baseline.lines.items()
        },
        "fixtures": baseline.fixtures,
    }


def _from_json(raw: dict, group: ModuleGroup) -> Baseline:
    return Baseline(
        durations=raw["durations"],
        failing=raw["failing"],
        startup=raw["startup"],
        lines={p: {int(n): c for n, c in by_line.items()} for p, by_line in raw["lines"].items()},
        fixtures=raw["fixtures"],
        use_coverage=group.use_coverage,
    )
