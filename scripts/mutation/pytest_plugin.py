"""pytest plugin for the baseline run (under `coverage run`): one coverage context per test.

A fixture shared beyond one test (module or session scope) runs inside whichever test asks for it
first; its lines get a `fixture:<name>` context instead, later mapped to every test using it.
Per-test durations and outcomes go to the JSON file named by $MUTATION_BASELINE_OUT.
"""

from __future__ import annotations

import json
import os
from typing import Any

import coverage
import pytest

FIXTURE_PREFIX = "fixture:"
_tests: dict[str, dict[str, Any]] = {}
_current = ""


def _switch(context: str) -> None:
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(context)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    global _current
    _tests[item.nodeid] = {
        "fixtures": sorted(getattr(item, "fixturenames", ())),
        "duration": 0.0,
        "outcome": "passed",
    }
    _current = item.nodeid
    _switch(item.nodeid)
    yield
    _current = ""
    _switch("")


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    shared = fixturedef.scope != "function"
    if shared:
        _switch(FIXTURE_PREFIX + fixturedef.argname)
    try:
        yield
    finally:
        if shared:
            _switch(_current)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _tests.get(report.nodeid)
    if entry is None:
        return
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("MUTATION_BASELINE_OUT")
    if out:
        with open(out, "w") as handle:
            json.dump({"tests": _tests}, handle)
