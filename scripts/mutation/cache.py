""".mutation/results.json: outcomes keyed so a rerun only runs what changed.

Key: the mutated file's content hash, the mutant id and a hash of the tests that ran (their node
ids and the content of their files), so editing a test file re-runs the mutants it guards.

A mutant once killed stays killed while its file is unchanged (`killed_before`): adding tests
cannot revive it, and re-running the hundreds already killed after each new test is what made a
rerun cost an hour. Weakening or deleting a test can; `--recheck-killed` re-runs them all.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from mutation.execute import Outcome
from mutation.operators import Mutant
from mutation.workspace import content_hash

_FORMAT = 1
_KILLS = ("killed", "timeout")


def result_key(mutant: Mutant, file_hash: str, tests_hash: str) -> str:
    return f"{mutant.path}|{file_hash}|{mutant.id}|{tests_hash}"


def tests_hash(tests: list[str] | tuple[str, ...], files: dict[str, bytes]) -> str:
    """Hash of the node ids and of every file they live in plus every conftest.py."""
    test_files = sorted({t.split("::", 1)[0] for t in tests})
    conftests = sorted(p for p in files if p.endswith("conftest.py"))
    parts = ["\n".join(tests)] + [files.get(p, b"") for p in test_files + conftests]
    return content_hash(*parts)


class ResultCache:
    """The results file, loaded once and rewritten (atomically) after every new outcome."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._results: dict[str, dict] = {}
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("format") == _FORMAT:
                self._results = stored["results"]

    def get(self, key: str) -> Outcome | None:
        entry = self._results.get(key)
        if entry is None or entry["outcome"]["status"] == "error":
            return None  # an error says nothing about the mutant: try it again
        return Outcome(**entry["outcome"])

    def killed_before(self, mutant: Mutant, file_hash: str) -> Outcome | None:
        """A kill of this very mutant of this very file, by whatever tests ran then."""
        prefix = f"{mutant.path}|{file_hash}|{mutant.id}|"
        for key, entry in self._results.items():
            if key.startswith(prefix) and entry["outcome"]["status"] in _KILLS:
                return Outcome(**entry["outcome"])
        return None

    def put(self, key: str, mutant: Mutant, outcome: Outcome) -> None:
        with self._lock:
            self._results[key] = {"mutant": mutant.describe(), "outcome": asdict(outcome)}
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"format": _FORMAT, "results": self._results}, indent=0))
        os.replace(partial, self.path)
