"""Command line: plan the mutants, run the baselines, run what the cache lacks, report."""

from __future__ import annotations

import argparse
import importlib.util
import queue
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mutation.baseline import Baseline, load_or_run_baseline
from mutation.cache import ResultCache, result_key, tests_hash
from mutation.config import ModuleGroup, Settings, load_settings, select_files
from mutation.execute import Job, Outcome, run_jobs, without_parameters
from mutation.operators import Mutant, find_mutants
from mutation.report import Result, write_reports
from mutation.workspace import (
    check_imports_from,
    child_environment,
    content_hash,
    make_workspace,
    remove_workspace,
    snapshot,
)


@dataclass(frozen=True)
class Planned:
    mutant: Mutant
    group: ModuleGroup
    equivalent_why: str | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mutation",
        description="Mutation testing: each mutant in a private copy of the tree, tested by a new "
        "pytest process; results are cached in .mutation/ so a rerun resumes.",
    )
    parser.add_argument("--config", type=Path, default=Path("mutation.toml"), help="mutation.toml")
    parser.add_argument("--root", type=Path, help="repo root (default: the config's folder)")
    parser.add_argument("--module", action="append", default=[], help="only files under PATH")
    parser.add_argument("--max-mutants", type=int, help="run a random sample of N mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-mutants sample")
    parser.add_argument("--jobs", type=int, help="mutants run in parallel (default: config)")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--out", type=Path, help="results folder (default: ROOT/.mutation)")
    parser.add_argument("--rerun", action="store_true", help="ignore cached results")
    parser.add_argument(
        "--recheck-killed",
        action="store_true",
        help="re-run mutants killed before when the tests they ran have changed since "
        "(default: a kill stands while the mutated file is unchanged)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = (args.root or args.config.resolve().parent).resolve()
    settings = load_settings(args.config, root)
    files = snapshot(root)
    plan = plan_mutants(settings, select_files(settings, args.module), files)
    if args.max_mutants is not None and args.max_mutants < len(plan):
        plan = sorted(
            random.Random(args.seed).sample(plan, args.max_mutants),
            key=lambda p: (p.mutant.path, p.mutant.line, p.mutant.col),
        )
    if args.list:
        for planned in plan:
            print(_listing(planned))
        print(f"{len(plan)} mutants", file=sys.stderr)
        return 0
    if importlib.util.find_spec("coverage") is None:
        print("mutation: needs the `coverage` package (pip install coverage)", file=sys.stderr)
        return 2
    out = (args.out or root / ".mutation").resolve()
    jobs = max(1, args.jobs or settings.jobs)
    text = run_plan(
        plan,
        files,
        settings,
        out,
        jobs,
        use_cache=not args.rerun,
        keep_kills=not args.recheck_killed,
    )
    print(text)
    return 0


def _listing(planned: Planned) -> str:
    mutant = planned.mutant
    note = f"  [equivalent: {planned.equivalent_why}]" if planned.equivalent_why else ""
    return f"{mutant.describe()}  ({mutant.operator}, id {mutant.id}){note}"


def plan_mutants(
    settings: Settings, chosen: list[tuple[ModuleGroup, str]], files: dict[str, bytes]
) -> list[Planned]:
    """Every mutant of the chosen files, with its group and, if equivalent, why."""
    plan = []
    for group, path in chosen:
        if path not in files:
            print(f"mutation: skipping {path}: git ignores it", file=sys.stderr)
            continue
        source = files[path].decode()
        lines = source.split("\n")
        for mutant in find_mutants(source, path, settings.operators):
            line_text = lines[mutant.line - 1] if mutant.line <= len(lines) else ""
            why = next((e.why for e in settings.equivalents if e.matches(mutant, line_text)), None)
            plan.append(Planned(mutant, group, why))
    return plan


def run_plan(
    plan: list[Planned],
    files: dict[str, bytes],
    settings: Settings,
    out: Path,
    jobs: int,
    use_cache: bool = True,
    keep_kills: bool = True,
) -> str:
    """Baselines, then every mutant not already in the cache; writes and returns the report."""
    workspaces = [make_workspace(files) for _ in range(jobs)]
    try:
        _check_copies_are_imported(workspaces[0], plan)
        groups = {p.group for p in plan if p.equivalent_why is None}
        baselines = _baselines(groups, files, workspaces, out / "baseline")
        cache = ResultCache(out / "results.json")
        results, pending = _classify(
            plan, baselines, files, settings, cache, use_cache, keep_kills and use_cache
        )
        started = time.monotonic()
        results += _run_pending(pending, workspaces, files, cache)
        wall = time.monotonic() - started
    finally:
        for workspace in workspaces:
            remove_workspace(workspace)
    return write_reports(results, out, wall, jobs)


def _check_copies_are_imported(workspace: Path, plan: list[Planned]) -> None:
    packages = {p.mutant.path.split("/")[0].removesuffix(".py") for p in plan}
    check_imports_from(workspace, packages, child_environment(workspace))


def _baselines(
    groups: set[ModuleGroup], files: dict[str, bytes], workspaces: list[Path], store: Path
) -> dict[ModuleGroup, Baseline | str]:
    """One coverage run per group (cached), as many at once as there are workspaces.

    A group whose baseline fails maps to the error text instead.
    """
    free: queue.Queue[Path] = queue.Queue()
    for workspace in workspaces:
        free.put(workspace)

    def baseline_of(group: ModuleGroup) -> Baseline | str:
        workspace = free.get()
        try:
            return load_or_run_baseline(group, files, workspace, store)
        except RuntimeError as error:  # one broken selection must not stop the other modules
            return str(error)
        finally:
            free.put(workspace)

    ordered = sorted(groups, key=lambda g: g.name)
    with ThreadPoolExecutor(max_workers=len(workspaces)) as pool:
        baselines = dict(zip(ordered, pool.map(baseline_of, ordered), strict=True))
    for group, baseline in baselines.items():
        if isinstance(baseline, str):
            print(f"baseline {group.name} FAILED, its mutants are errors:\n{baseline}", flush=True)
            continue
        print(
            f"baseline {group.name}: {len(baseline.durations)} passing tests, "
            f"{sum(baseline.durations.values()) + baseline.startup:.1f} s",
            flush=True,
        )
        for test in baseline.failing:
            print(f"  warning: fails unmutated, not used: {test}", flush=True)
    return baselines


@dataclass(frozen=True)
class _Pending:
    job: Job
    key: str
    module: str


def _classify(
    plan: list[Planned],
    baselines: dict[ModuleGroup, Baseline | str],
    files: dict[str, bytes],
    settings: Settings,
    cache: ResultCache,
    use_cache: bool,
    keep_kills: bool = False,
) -> tuple[list[Result], list[_Pending]]:
    """Results known without running (equivalent, not covered, cached) and the jobs to run."""
    results: list[Result] = []
    pending: list[_Pending] = []
    for planned in plan:
        mutant, module = planned.mutant, planned.group.name
        if planned.equivalent_why is not None:
            results.append(Result(mutant, "equivalent", why=planned.equivalent_why, module=module))
            continue
        baseline = baselines[planned.group]
        if isinstance(baseline, str):
            results.append(Result(mutant, "error", why=baseline.splitlines()[0], module=module))
            continue
        tests = baseline.tests_for(mutant)
        if tests is None:
            results.append(Result(mutant, "not covered", module=module))
            continue
        file_hash = content_hash(files[mutant.path])
        key = result_key(mutant, file_hash, tests_hash(tests, files))
        cached = cache.get(key) if use_cache else None
        if cached is None and keep_kills:
            cached = cache.killed_before(mutant, file_hash)
        if cached is not None:
            results.append(_result(mutant, cached, len(tests), module, ran=False))
            continue
        pending.append(_Pending(_job(mutant, tests, baseline, settings), key, module))
    return results, pending


def _job(mutant: Mutant, tests: list[str], baseline: Baseline, settings: Settings) -> Job:
    """The tests to run, their timeout, and the broader fallback should their ids vanish."""
    broad = without_parameters(tests)
    broad_cases = [t for t in baseline.durations if without_parameters([t])[0] in broad]

    def timeout(selection: list[str]) -> float:
        seconds = baseline.seconds_for(selection)
        return max(settings.min_timeout, settings.timeout_factor * seconds)

    return Job(mutant, tuple(tests), timeout(tests), broad, timeout(broad_cases))


def _result(mutant: Mutant, outcome: Outcome, tests_run: int, module: str, ran: bool) -> Result:
    return Result(
        mutant,
        outcome.status,
        seconds=outcome.seconds if ran else 0.0,
        killed_by=outcome.killed_by,
        why=outcome.detail,
        tests_run=tests_run,
        module=module,
    )


def _run_pending(
    pending: list[_Pending], workspaces: list[Path], files: dict[str, bytes], cache: ResultCache
) -> list[Result]:
    keys = {p.job.mutant: p.key for p in pending}
    modules = {p.job.mutant: p.module for p in pending}
    sources = {p.job.mutant.path: files[p.job.mutant.path].decode() for p in pending}
    results: list[Result] = []

    def done(job: Job, outcome: Outcome) -> None:
        cache.put(keys[job.mutant], job.mutant, outcome)
        results.append(_result(job.mutant, outcome, len(job.tests), modules[job.mutant], ran=True))
        by = f" by {outcome.killed_by}" if outcome.killed_by else ""
        print(
            f"[{len(results)}/{len(pending)}] {outcome.status:<8} {outcome.seconds:5.1f}s "
            f"{job.mutant.describe()}{by}",
            flush=True,
        )

    run_jobs([p.job for p in pending], workspaces, sources, done)
    return results
