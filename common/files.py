"""Replacing a file so that a crash never leaves half of it, with the permissions a user expects.

Every output (checkpoints, reports, models, datasets) goes through here: written to a temporary
sibling, flushed to disk, then renamed over the target, so a reader sees the old file or the new
one. The temporary file is created private (0600) by `tempfile.mkstemp`; before the rename it gets
the mode any new file would get under the process's umask (0644 under the usual 022), so a run's
files stay readable by the group that shares the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _new_file_mode() -> int:
    """0666 less the process's umask: what open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(handle)` into a temporary sibling, fsync, chmod, rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    replace_atomically(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, obj: Any, compact: bool = False) -> None:
    """JSON, indented for people unless `compact` (large machine-read files)."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2) + "\n"
    write_text_atomic(path, text)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Place `source` at `target` (folders made as needed): a hard link where the file system
    allows one (no second copy of a dataset's images), else a copy with its timestamps."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
