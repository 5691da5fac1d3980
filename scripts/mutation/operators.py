"""Mutation operators: the AST finds what to mutate, the edit is a span of the original text.

Editing the text (not `ast.unparse`) keeps the formatting, so a mutant's line number is exact and
`path:line: original -> mutated` shows the code as an engineer sees it.
"""

from __future__ import annotations

import ast
import bisect
import io
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PRAGMA = "pragma: no mutate"

OPERATORS = (
    "arith",  # + - * / // % ** & | and their augmented forms
    "compare",  # < <= > >= == != is/is not in/not in
    "boolean",  # and <-> or
    "not",  # `not x` -> `x`
    "unary",  # `-x` -> `x`, `~x` -> `x`
    "number",  # 0 -> 1, 1 -> 0, n -> n + 1, x -> x + 1.0
    "bool",  # True <-> False
    "string",  # "key" -> "XXkeyXX", only for identifier-like strings (choices, keys)
    "return",  # `return expr` -> `return None`
    "call",  # a bare call statement -> `pass`
)

_BINARY = {
    ast.Add: ("+", "-"),
    ast.Sub: ("-", "+"),
    ast.Mult: ("*", "/"),
    ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"),
    ast.Mod: ("%", "/"),
    ast.Pow: ("**", "*"),
    ast.BitAnd: ("&", "|"),
    ast.BitOr: ("|", "&"),
}
_COMPARE = {
    ast.Lt: ("<", "<="),
    ast.LtE: ("<=", "<"),
    ast.Gt: (">", ">="),
    ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="),
    ast.Is: ("is", "is not"),
    ast.IsNot: ("is not", "is"),
    ast.In: ("in", "not in"),
    ast.NotIn: ("not in", "in"),
}
_COMPARE_WORDS = {"<", "<=", ">", ">=", "==", "!=", "is", "not", "in"}
_UNARY = {ast.Not: "not", ast.USub: "unary", ast.Invert: "unary"}
_KEY_LIKE = re.compile(r"^-{0,2}[A-Za-z_][\w.\-:/]*$")
_TEXT_KEYWORDS = {"help", "short_help", "metavar", "description", "epilog", "msg", "message"}
_LOG_ROOTS = {"log", "logger", "logging", "_log", "_logger", "LOG", "LOGGER", "warnings"}
_SKIPPED_FIELDS = {
    ast.arg: {"annotation"},
    ast.FunctionDef: {"returns"},
    ast.AsyncFunctionDef: {"returns"},
    ast.AnnAssign: {"annotation"},
    ast.Assert: {"msg"},
}


@dataclass(frozen=True)
class Mutant:
    """One edit: replace [line:col, end_line:end_col) of `path` (1-based lines, char columns)."""

    path: str
    operator: str
    line: int
    col: int
    end_line: int
    end_col: int
    original: str
    replacement: str
    cover_line: int  # a line that runs whenever the mutated code does (its statement's first)

    @property
    def id(self) -> str:
        return f"{self.line}:{self.col}:{self.operator}:{_one_line(self.replacement)}"

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {_short(self.original)} -> {_short(self.replacement)}"


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def _short(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split()) or repr(text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def apply_mutant(source: str, mutant: Mutant) -> str:
    """`source` with exactly the mutant's span replaced."""
    starts = _line_starts(source)
    begin = starts[mutant.line - 1] + mutant.col
    end = starts[mutant.end_line - 1] + mutant.end_col
    if source[begin:end] != mutant.original:
        raise ValueError(f"{mutant.describe()}: the source changed under the mutant")
    return source[:begin] + mutant.replacement + source[end:]


def _line_starts(source: str) -> list[int]:
    starts = [0]
    for line in io.StringIO(source, newline="").readlines():
        starts.append(starts[-1] + len(line))
    return starts


class _Source:
    """The text, its tokens and conversions from AST byte offsets to character columns."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = io.StringIO(text, newline="").readlines()
        self.starts = _line_starts(text)
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text, newline="").readline))
        self.token_starts = [token.start for token in self.tokens]

    def _char_col(self, line: int, byte_col: int) -> int:
        return len(self.lines[line - 1].encode()[:byte_col].decode("utf-8", "replace"))

    def start(self, node: ast.AST) -> tuple[int, int]:
        return node.lineno, self._char_col(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> tuple[int, int]:
        return node.end_lineno, self._char_col(node.end_lineno, node.end_col_offset)

    def segment(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        return self.text[self.starts[start[0] - 1] + start[1] : self.starts[end[0] - 1] + end[1]]

    def tokens_between(
        self, start: tuple[int, int], end: tuple[int, int], wanted: set[str]
    ) -> list[tokenize.TokenInfo]:
        first = bisect.bisect_left(self.token_starts, start)
        found = []
        for token in self.tokens[first:]:
            if token.start >= end:
                break
            if token.end <= end and token.string in wanted:
                found.append(token)
        return found

    def has_pragma(self, first: int, last: int) -> bool:
        return any(PRAGMA in self.lines[n - 1] for n in range(first, last + 1))


@dataclass
class _Context:
    source: _Source
    path: str
    cover_line: int
    parent: ast.AST | None

    def mutant(
        self,
        operator: str,
        start: tuple[int, int],
        end: tuple[int, int],
        replacement: str,
    ) -> Mutant:
        original = self.source.segment(start, end)
        if "\n" in original and "\n" not in replacement:
            replacement += "\n" * original.count("\n")  # keep every later line where it was
        return Mutant(
            self.path, operator, *start, *end, original, replacement, cover_line=self.cover_line
        )


def find_mutants(
    source: str, path: str, operators: tuple[str, ...] | list[str] = OPERATORS
) -> list[Mutant]:
    """Every mutant of `source` for the enabled operators, in source order, each one compiling."""
    tree = ast.parse(source)
    src = _Source(source)
    enabled = set(operators)
    mutants: list[Mutant] = []
    for node, cover_line, parent in _walk(tree, 0, None):
        context = _Context(src, path, cover_line, parent)
        for make in _MAKERS.get(type(node), ()):
            for mutant in make(node, context):
                if mutant.operator in enabled and _usable(mutant, src):
                    mutants.append(mutant)
    return sorted(set(mutants), key=lambda m: (m.line, m.col, m.operator, m.replacement))


def _usable(mutant: Mutant, src: _Source) -> bool:
    if src.has_pragma(mutant.line, mutant.end_line) or src.has_pragma(
        mutant.cover_line, mutant.cover_line
    ):
        return False
    try:
        compile(apply_mutant(src.text, mutant), mutant.path, "exec", ast.PyCF_ONLY_AST)
    except SyntaxError:
        return False
    return True


def _walk(
    node: ast.AST, cover_line: int, parent: ast.AST | None
) -> Iterator[tuple[ast.AST, int, ast.AST | None]]:
    """Nodes worth mutating with their cover line and parent; skipped subtrees are not entered."""
    if _skipped(node):
        return
    if isinstance(node, ast.stmt):
        cover_line = node.lineno
    if cover_line:
        yield node, cover_line, parent
    skipped_fields = _SKIPPED_FIELDS.get(type(node), set())
    for field, value in ast.iter_fields(node):
        if field in skipped_fields:
            continue
        child_line = cover_line
        if field == "args" and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            child_line = _first_body_line(node)  # defaults matter when the function runs
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _walk(child, child_line, node)


def _first_body_line(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    for statement in function.body:
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
            return statement.lineno
    return function.lineno


def _skipped(node: ast.AST) -> bool:
    """Code whose mutants only show up as noise: messages, docstrings, typing-only blocks."""
    if isinstance(node, ast.Raise | ast.JoinedStr | ast.Import | ast.ImportFrom | ast.Global):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True  # docstrings and other bare strings
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return _is_log_call(node.value)  # removing a log line changes nothing testable
    if isinstance(node, ast.Call):
        return _is_log_call(node)
    if isinstance(node, ast.If):
        return _is_type_checking(node.test) or _is_main_guard(node.test)
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
    return False


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    return ""


def _is_log_call(call: ast.Call) -> bool:
    name = _dotted_name(call.func).removeprefix("self.")
    return name == "print" or name.split(".")[0] in _LOG_ROOTS


def _is_type_checking(test: ast.expr) -> bool:
    return _dotted_name(test).split(".")[-1] == "TYPE_CHECKING"


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and _dotted_name(test.left) == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _binary(node: ast.BinOp | ast.AugAssign, context: _Context) -> Iterator[Mutant]:
    symbols = _BINARY.get(type(node.op))
    if symbols is None:
        return
    symbol, swapped = symbols
    left, right = (
        (node.left, node.right) if isinstance(node, ast.BinOp) else (node.target, node.value)
    )
    suffix = "" if isinstance(node, ast.BinOp) else "="
    src = context.source
    for token in src.tokens_between(src.end(left), src.start(right), {symbol + suffix})[:1]:
        yield context.mutant("arith", token.start, token.end, swapped + suffix)


def _compare(node: ast.Compare, context: _Context) -> Iterator[Mutant]:
    src = context.source
    operands = [node.left, *node.comparators]
    for op, before, after in zip(node.ops, operands, operands[1:], strict=False):
        tokens = src.tokens_between(src.end(before), src.start(after), _COMPARE_WORDS)
        if tokens:
            yield context.mutant("compare", tokens[0].start, tokens[-1].end, _COMPARE[type(op)][1])


def _boolean(node: ast.BoolOp, context: _Context) -> Iterator[Mutant]:
    word, swapped = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
    src = context.source
    for before, after in zip(node.values, node.values[1:], strict=False):
        for token in src.tokens_between(src.end(before), src.start(after), {word})[:1]:
            yield context.mutant("boolean", token.start, token.end, swapped)


def _unary(node: ast.UnaryOp, context: _Context) -> Iterator[Mutant]:
    operator = _UNARY.get(type(node.op))
    if operator is not None:
        src = context.source
        yield context.mutant(operator, src.start(node), src.start(node.operand), "")


def _constant(node: ast.Constant, context: _Context) -> Iterator[Mutant]:
    value = node.value
    src = context.source
    start, end = src.start(node), src.end(node)
    if isinstance(value, bool):
        yield context.mutant("bool", start, end, str(not value))
    elif isinstance(value, int | float):
        yield context.mutant("number", start, end, _changed_number(value))
    elif isinstance(value, str) and _is_key_like(node, context):
        text = src.segment(start, end)
        opening = re.match(r"^[A-Za-z]*('''|\"\"\"|'|\")", text)
        if opening and "\n" not in text:
            quote = opening.end()
            mutated = f"{text[:quote]}XX{text[quote : -len(opening.group(1))]}XX{opening.group(1)}"
            yield context.mutant("string", start, end, mutated)


def _changed_number(value: int | float) -> str:
    if isinstance(value, int):
        return {0: "1", 1: "0"}.get(value, str(value + 1))
    return repr(value + 1.0)


def _is_key_like(node: ast.Constant, context: _Context) -> bool:
    """Strings that select something (choices, dict keys, option names), not prose."""
    if not _KEY_LIKE.match(node.value) or len(node.value) > 40:
        return False
    parent = context.parent
    return not (isinstance(parent, ast.keyword) and parent.arg in _TEXT_KEYWORDS)


def _return(node: ast.Return, context: _Context) -> Iterator[Mutant]:
    value = node.value
    if value is None or (isinstance(value, ast.Constant) and value.value is None):
        return
    src = context.source
    yield context.mutant("return", src.start(value), src.end(value), "None")


def _call_statement(node: ast.Expr, context: _Context) -> Iterator[Mutant]:
    if isinstance(node.value, ast.Call):
        src = context.source
        yield context.mutant("call", src.start(node), src.end(node), "pass")


_MAKERS: dict[type, tuple[Callable[..., Iterator[Mutant]], ...]] = {
    ast.BinOp: (_binary,),
    ast.AugAssign: (_binary,),
    ast.Compare: (_compare,),
    ast.BoolOp: (_boolean,),
    ast.UnaryOp: (_unary,),
    ast.Constant: (_constant,),
    ast.Return: (_return,),
    ast.Expr: (_call_statement,),
}
