"""The mutation runner (scripts/mutation): its operators, its edits and a whole run on a toy repo.

No torch here: the end-to-end run mutates a 4-line module guarded by a 2-test file, in seconds.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from mutation.baseline import Baseline  # noqa: E402
from mutation.cli import main  # noqa: E402
from mutation.execute import outcome_of, run_pytest  # noqa: E402
from mutation.operators import Mutant, apply_mutant, find_mutants  # noqa: E402
from mutation.report import Result, markdown_table  # noqa: E402
from mutation.workspace import check_imports_from, child_environment  # noqa: E402

SNIPPET = textwrap.dedent(
    '''\
    """Module docstring: never mutated."""
    import logging
    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        ANSWER = 42
    __all__ = ["pick"]
    log = logging.getLogger(__name__)
    LIMIT = 5  # pragma: no mutate
    OPTION = dict(name="fast", help="fast")


    def pick(kind, values, scale=2.0):
        """Docstring: never mutated."""
        log.info("picking %s", kind + "x")
        if kind == "max" and not values:
            raise ValueError(f"empty {kind}: {1 + 1}")
        total = -sum(values) * scale
        flag = True
        values.sort(
            reverse=flag,
        )
        return total if flag is None else total // 3
    '''
)

# (line, operator, original, replacement) for SNIPPET, in source order.
EXPECTED = [
    (10, "string", '"fast"', '"XXfastXX"'),
    (13, "number", "2.0", "3.0"),
    (16, "compare", "==", "!="),
    (16, "string", '"max"', '"XXmaxXX"'),
    (16, "boolean", "and", "or"),
    (16, "not", "not ", ""),
    (18, "unary", "-", ""),
    (18, "arith", "*", "/"),
    (19, "bool", "True", "False"),
    (20, "call", "values.sort(\n        reverse=flag,\n    )", "pass\n\n"),
    (23, "return", "total if flag is None else total // 3", "None"),
    (23, "compare", "is", "is not"),
    (23, "arith", "//", "/"),
    (23, "number", "3", "4"),
]


def _found(source: str) -> list[tuple[int, str, str, str]]:
    return [(m.line, m.operator, m.original, m.replacement) for m in find_mutants(source, "m.py")]


def test_operators_give_exactly_the_expected_mutants() -> None:
    assert _found(SNIPPET) == EXPECTED


def test_docstrings_log_calls_raise_messages_typing_and_pragma_lines_are_skipped() -> None:
    lines = {line for line, *_ in _found(SNIPPET)}
    assert lines.isdisjoint({1, 6, 7, 8, 9, 14, 15, 17})


def test_a_default_argument_is_covered_by_the_function_body_not_the_def_line() -> None:
    (default,) = [m for m in find_mutants(SNIPPET, "m.py") if m.line == 13]
    assert default.cover_line == 15  # first statement after the docstring


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_applying_a_mutant_changes_exactly_its_span(index: int) -> None:
    mutant = find_mutants(SNIPPET, "m.py")[index]
    mutated = apply_mutant(SNIPPET, mutant)
    before, after = SNIPPET.splitlines(), mutated.splitlines()
    assert len(after) == len(before)  # later line numbers stay exact
    changed = {n + 1 for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    assert changed and changed <= set(range(mutant.line, mutant.end_line + 1))
    start = sum(len(line) + 1 for line in before[: mutant.line - 1]) + mutant.col
    assert mutated[:start] == SNIPPET[:start]
    assert mutated[start : start + len(mutant.replacement)] == mutant.replacement
    assert mutated[start + len(mutant.replacement) :] == SNIPPET[start + len(mutant.original) :]


def test_columns_are_characters_even_after_non_ascii_text() -> None:
    (mutant,) = find_mutants('x = "é" if y else 2\n', "m.py")
    assert apply_mutant('x = "é" if y else 2\n', mutant) == 'x = "é" if y else 3\n'


TOY_MODULE = textwrap.dedent(
    """\
    def double_positive(x):
        if x < 0:
            return 0
        return x * 2


    def untested(y):
        return -y
    """
)
TOY_TESTS = textwrap.dedent(
    """\
    from toy import double_positive


    def test_doubles():
        assert double_positive(3) == 6


    def test_negative_gives_zero():
        assert double_positive(-1) == 0
    """
)
TOY_CONFIG = textwrap.dedent(
    """\
    [settings]
    jobs = 2

    [[module]]
    path = "toy.py"
    tests = ["test_toy.py"]

    [[equivalent]]
    path = "toy.py"
    line = "if x < 0:"
    mutation = "< -> <="
    why = "at x == 0 both branches return 0"
    """
)


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    (tmp_path / "toy.py").write_text(TOY_MODULE)
    (tmp_path / "test_toy.py").write_text(TOY_TESTS)
    (tmp_path / "mutation.toml").write_text(TOY_CONFIG)
    return tmp_path


@pytest.mark.slow
def test_a_whole_run_reports_the_expected_counts_and_survivors(toy_repo: Path, capsys) -> None:
    assert main(["--config", str(toy_repo / "mutation.toml")]) == 0
    report = (toy_repo / ".mutation" / "report.md").read_text()
    # mutants, killed, timeout, survived, not covered, equivalent, error, kill rate: 5 / (9 - 1)
    assert "| toy.py | 9 | 5 | 0 | 1 | 2 | 1 | 0 | 62% |" in report
    assert (toy_repo / ".mutation" / "survivors.txt").read_text() == (
        "toy.py:2: 0 -> 1  [ran 2 tests]\n"
        "toy.py:8: -y -> None  [not covered]\n"
        "toy.py:8: - -> ''  [not covered]\n"
    )
    assert "toy.py:4: * -> / by test_toy.py::test_doubles" in capsys.readouterr().out

    assert main(["--config", str(toy_repo / "mutation.toml")]) == 0  # all cached: runs nothing
    rerun = capsys.readouterr().out
    assert "Nothing ran" in rerun and "| toy.py | 9 | 5 | 0 | 1 | 2 | 1 | 0 | 62% |" in rerun


@pytest.mark.slow
def test_a_new_test_reruns_only_the_survivors_unless_kills_are_rechecked(
    toy_repo: Path, capsys
) -> None:
    config = str(toy_repo / "mutation.toml")
    assert main(["--config", config]) == 0
    capsys.readouterr()
    with (toy_repo / "test_toy.py").open("a") as tests:  # kills `x < 0` -> `x < 1`
        tests.write("\n\ndef test_half():\n    assert double_positive(0.5) == 1.0\n")

    assert main(["--config", config]) == 0
    rerun = capsys.readouterr().out
    assert "[1/1] killed" in rerun and "toy.py:2: 0 -> 1" in rerun  # only the survivor ran
    assert "| toy.py | 9 | 6 | 0 | 0 | 2 | 1 | 0 | 75% |" in rerun

    assert main(["--config", config, "--recheck-killed"]) == 0
    # the five killed under the old test file run again; the sixth ran under the current one
    assert "[5/5]" in capsys.readouterr().out


@pytest.mark.slow
def test_a_mutant_that_renames_parametrized_cases_runs_every_case_of_their_function(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "sizes.py").write_text("SIZES = (1, 2)\n")
    (tmp_path / "test_sizes.py").write_text(
        "import pytest\n\nfrom sizes import SIZES\n\n\n"
        '@pytest.mark.parametrize("n", SIZES)\ndef test_positive(n):\n    assert n > 0\n'
    )
    (tmp_path / "mutation.toml").write_text(
        '[[module]]\npath = "sizes.py"\ntests = ["test_sizes.py"]\n'
    )
    assert main(["--config", str(tmp_path / "mutation.toml")]) == 0
    # 1 -> 0 turns test_positive[1] into test_positive[0], which fails; 2 -> 3 still passes
    assert "| sizes.py | 2 | 1 | 0 | 1 | 0 | 0 | 0 | 50% |" in capsys.readouterr().out


def test_list_prints_mutants_and_runs_nothing(toy_repo: Path, capsys) -> None:
    assert main(["--config", str(toy_repo / "mutation.toml"), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 9
    assert listed[0].startswith("toy.py:2: < -> <=") and "[equivalent:" in listed[0]
    assert not (toy_repo / ".mutation").exists()


@pytest.mark.parametrize(
    ("returncode", "output", "status", "killed_by"),
    [
        (0, "1 passed", "survived", ""),
        (1, "FAILED tests/t.py::test_a - assert 1 == 2\n", "killed", "tests/t.py::test_a"),
        (2, "ERROR tests/t.py - ImportError: boom\n", "killed", "tests/t.py"),
        (1, "FAILED tests/t.py::test_b[a b] - x\n", "killed", "tests/t.py::test_b[a b]"),
        (-9, "", "killed", "rc -9"),
        (
            4,
            "_ ERROR collecting tests/t.py _\nERROR tests/t.py - RuntimeError\n",
            "killed",
            "tests/t.py",
        ),
        (4, "ERROR: not found: /w/tests/t.py::test_a[1]\n", "error", ""),
        (5, "no tests ran\n", "error", ""),
    ],
)
def test_pytest_exit_status_decides_the_outcome(
    returncode: int, output: str, status: str, killed_by: str
) -> None:
    outcome = outcome_of(returncode, output, 1.0)
    assert (outcome.status, outcome.killed_by) == (status, killed_by)


def test_a_hanging_test_run_is_a_timeout(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(60)\n")
    outcome = run_pytest(tmp_path, ["test_hang.py"], timeout=1.0)
    assert outcome.status == "timeout" and outcome.seconds < 10


def test_imports_must_come_from_the_copy(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    check_imports_from(tmp_path, {"toy"}, child_environment(tmp_path))
    with pytest.raises(RuntimeError, match="not the copy"):
        check_imports_from(tmp_path, {"pytest"}, child_environment(tmp_path))


def _mutant_at(line: int, cover_line: int | None = None, path: str = "m.py") -> Mutant:
    return Mutant(path, "number", line, 0, line, 1, "1", "0", cover_line or line)


def test_tests_for_a_line_follow_contexts_shared_fixtures_and_import_time() -> None:
    baseline = Baseline(
        durations={"t::slow": 2.0, "t::fast": 0.1, "t::other": 0.5},
        failing=[],
        startup=1.0,
        lines={"m.py": {3: ["t::slow", "t::fast"], 5: ["fixture:model"], 7: [""], 9: ["t::gone"]}},
        fixtures={"t::slow": ["model"], "t::fast": [], "t::other": ["model", "tmp_path"]},
    )
    assert baseline.tests_for(_mutant_at(3)) == ["t::fast", "t::slow"]  # fastest first
    assert baseline.tests_for(_mutant_at(5)) == ["t::other", "t::slow"]  # users of the fixture
    assert baseline.tests_for(_mutant_at(7)) == ["t::fast", "t::other", "t::slow"]  # import time
    assert baseline.tests_for(_mutant_at(8)) is None  # no test runs line 8
    assert baseline.tests_for(_mutant_at(9)) is None  # run only by a test failing unmutated
    assert baseline.tests_for(_mutant_at(2, cover_line=3)) == ["t::fast", "t::slow"]
    assert baseline.seconds_for(["t::fast", "t::slow"]) == pytest.approx(3.1)


def test_table_has_a_row_per_file_a_subtotal_per_module_and_a_total() -> None:
    def result(path: str, status: str) -> Result:
        return Result(_mutant_at(1, path=path), status, module="pkg/")

    table = markdown_table(
        [
            result("pkg/a.py", "killed"),
            result("pkg/a.py", "equivalent"),
            result("pkg/b.py", "survived"),
        ]
    )
    assert table.splitlines()[2:] == [
        "| pkg/a.py | 2 | 1 | 0 | 0 | 0 | 1 | 0 | 100% |",
        "| pkg/b.py | 1 | 0 | 0 | 1 | 0 | 0 | 0 | 0% |",
        "| *pkg/ (all)* | 3 | 1 | 0 | 1 | 0 | 1 | 0 | 50% |",
        "| **total** | 3 | 1 | 0 | 1 | 0 | 1 | 0 | 50% |",
    ]
