"""Output paths are checked before any work, so a long run never fails at its last write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError


def check_output_file(path: Path, overwrite: bool = True) -> None:
    """Create `path`'s folder and prove it writable; refuse an existing file unless `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise PipelineError(f"{path}: already exists; pass --overwrite to replace it")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise PipelineError(f"{path}: cannot write there ({existing} is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot write there ({exc.strerror or exc})") from exc


def next_run_dir(base: Path) -> Path:
    """`base` if it is free (absent or empty), else the first free `base`2, `base`3, ...: a run
    without --out never lands in (or is refused by) an earlier run's folder."""

    def free(path: Path) -> bool:
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))

    if free(base):
        return base
    number = 2
    while not free(base.with_name(f"{base.name}{number}")):
        number += 1
    return base.with_name(f"{base.name}{number}")
