"""common/files.py: a replaced file is whole, readable by the group, and never half-written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from common.files import replace_atomically, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "report.json"
    write_json_atomic(path, {"AP": 0.5})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0666 less umask 022, not 0600
    os.umask(0o027)
    write_json_atomic(path, {"AP": 0.6})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert json.loads(path.read_text()) == {"AP": 0.6}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(b"old weights")

    def crash(handle) -> None:
        handle.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, crash)
    assert path.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_compact_json_has_no_spaces(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"a": [1, 2]}, compact=True)
    assert (tmp_path / "a.json").read_text() == '{"a":[1,2]}'
