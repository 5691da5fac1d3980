"""Private copies of the source tree: the repo is read once, so edits made meanwhile don't leak in."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Not copied when the tree is not a git checkout (git ls-files already leaves ignored files out).
_SKIPPED_DIRS = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".mutation",
    ".pytest_cache",
    ".hypothesis",
}
_SKIPPED_DIRS |= {".ruff_cache", "runs", ".cache", "build", "node_modules"}


def snapshot(root: Path) -> dict[str, bytes]:
    """Tracked and untracked-but-not-ignored files of `root`, read now: {posix path: content}."""
    paths = _git_files(root)
    if paths is None:
        paths = _walked_files(root)
    files = {}
    for rel in paths:
        path = root / rel
        if path.is_file() and not path.is_symlink():
            files[rel] = path.read_bytes()
    return files


def _git_files(root: Path) -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    if not top or Path(top).resolve() != root.resolve():
        return None  # `root` is inside some other checkout (a test's tmp dir): walk it instead
    return [p for p in done.stdout.decode().split("\0") if p]


def _walked_files(root: Path) -> list[str]:
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in names:
            found.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(found)


def content_hash(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def make_workspace(files: dict[str, bytes], parent: Path | None = None) -> Path:
    """A fresh temp directory holding `files`."""
    where = Path(tempfile.mkdtemp(prefix="mutation-", dir=parent))
    for rel, content in files.items():
        target = where / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return where


def remove_workspace(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def child_environment(workspace: Path, extra_path: Path | None = None) -> dict[str, str]:
    """Environment of a pytest child: imports from `workspace`, one thread, no stale bytecode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "COVERAGE"))}
    python_path = [str(workspace)] + ([str(extra_path)] if extra_path else [])
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        # A same-size mutant written in the same second as the last one would reuse its .pyc.
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        NUMEXPR_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def check_imports_from(workspace: Path, packages: set[str], env: dict[str, str]) -> None:
    """Fail fast if the package would be imported from the repo (editable install), not the copy."""
    probe = (
        "import importlib.util, sys\n"
        "for name in sys.argv[1:]:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    where = spec and (spec.origin or list(spec.submodule_search_locations or [None])[0])\n"
        "    print(name, where or None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *sorted(packages)],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        name, origin = line.split(" ", 1)
        if origin == "None" or not Path(origin).resolve().is_relative_to(workspace.resolve()):
            raise RuntimeError(f"`import {name}` resolves to {origin}, not the copy in {workspace}")
