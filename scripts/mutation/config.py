"""mutation.toml: which files to mutate, which tests guard them, which mutants are equivalent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mutation.operators import OPERATORS, Mutant


@dataclass(frozen=True)
class ModuleGroup:
    """Source files mutated together and the pytest selection that must kill their mutants."""

    name: str  # the configured path, e.g. "train/losses/"
    files: tuple[str, ...]  # repo-relative posix paths
    tests: tuple[str, ...]  # pytest args: files, directories or node ids
    keyword: str = ""  # pytest -k
    markers: str = ""  # pytest -m
    use_coverage: bool = True  # False: every mutant runs the whole selection


@dataclass(frozen=True)
class Equivalent:
    """A mutant that cannot change behaviour, matched by file, line text and edit."""

    path: str
    line: str  # the source line, stripped: survives edits that move it
    mutation: str  # "original -> mutated", as printed in survivors.txt
    why: str

    def matches(self, mutant: Mutant, line_text: str) -> bool:
        described = mutant.describe().split(": ", 1)[1]
        return (
            self.path == mutant.path
            and self.line.strip() == line_text.strip()
            and self.mutation.strip() == described
        )


@dataclass(frozen=True)
class Settings:
    jobs: int = 2
    min_timeout: float = 10.0
    timeout_factor: float = 3.0
    operators: tuple[str, ...] = OPERATORS
    groups: tuple[ModuleGroup, ...] = ()
    equivalents: tuple[Equivalent, ...] = field(default_factory=tuple)


def load_settings(config_path: Path, root: Path) -> Settings:
    """Read mutation.toml; module paths (file, directory or glob) are expanded under `root`."""
    raw = tomllib.loads(config_path.read_text())
    general = raw.get("settings", {})
    unknown = set(general.get("operators", ())) - set(OPERATORS)
    if unknown:
        raise ValueError(f"{config_path}: unknown operators {sorted(unknown)}; known: {OPERATORS}")
    default_markers = general.get("markers", "")
    groups = tuple(_group(entry, root, default_markers) for entry in raw.get("module", []))
    equivalents = tuple(
        Equivalent(e["path"], e["line"], e["mutation"], e["why"]) for e in raw.get("equivalent", [])
    )
    return Settings(
        jobs=int(general.get("jobs", 2)),
        min_timeout=float(general.get("min_timeout", 10.0)),
        timeout_factor=float(general.get("timeout_factor", 3.0)),
        operators=tuple(general.get("operators", OPERATORS)),
        groups=groups,
        equivalents=equivalents,
    )


def _group(entry: dict, root: Path, default_markers: str) -> ModuleGroup:
    name = entry["path"]
    files = expand_sources(root, name)
    if not files:
        raise ValueError(f"mutation.toml: module {name!r} matches no .py file under {root}")
    return ModuleGroup(
        name=name,
        files=files,
        tests=_expand_tests(root, entry["tests"]),
        keyword=entry.get("k", ""),
        markers=entry.get("markers", default_markers),
        use_coverage=bool(entry.get("coverage", True)),
    )


def _expand_tests(root: Path, tests: list[str]) -> tuple[str, ...]:
    """Globs (`tests/train/test_losses*.py`) become the files they match now, so new ones join."""
    expanded: list[str] = []
    for test in tests:
        if "::" not in test and any(ch in test for ch in "*?["):
            expanded += sorted(p.relative_to(root).as_posix() for p in root.glob(test))
        else:
            expanded.append(test)
    return tuple(dict.fromkeys(expanded))


def expand_sources(root: Path, pattern: str) -> tuple[str, ...]:
    """A file, every .py under a directory, or a glob; repo-relative posix paths, sorted."""
    target = root / pattern
    if any(ch in pattern for ch in "*?["):
        found = root.glob(pattern)
    elif target.is_dir():
        found = target.rglob("*.py")
    else:
        found = [target] if target.is_file() else []
    return tuple(
        sorted(p.relative_to(root).as_posix() for p in found if "__pycache__" not in p.parts)
    )


def select_files(settings: Settings, wanted: list[str]) -> list[tuple[ModuleGroup, str]]:
    """(group, file) pairs to mutate; `wanted` narrows them to files under the given paths."""
    first_group: dict[str, ModuleGroup] = {}
    for group in settings.groups:
        for path in group.files:
            first_group.setdefault(path, group)  # a file in two modules is mutated once
    pairs = [(group, path) for path, group in first_group.items()]
    if not wanted:
        return pairs
    prefixes = [w.rstrip("/") for w in wanted]
    chosen = [
        (group, path)
        for group, path in pairs
        if any(
            path == p or path.startswith(p + "/") or group.name.rstrip("/") == p for p in prefixes
        )
    ]
    if not chosen:
        raise ValueError(f"--module {wanted}: no configured module file matches")
    return chosen
