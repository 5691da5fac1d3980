"""The user-facing error boundary: known input errors become one line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from common.errors import UserError


class PipelineError(UserError, click.ClickException):
    """An error in how the pipeline was asked to run (exit code 2, one line)."""

    exit_code = 2


class TrainingInterrupted(click.ClickException):
    """Ctrl-C during training: say what is kept and how to go on (exit code 130, like SIGINT)."""

    exit_code = 130

    def format_message(self) -> str:
        return self.message

    def show(self, file: Any = None) -> None:
        click.echo(f"Interrupted: {self.message}", file=file, err=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def user_errors_exit_2(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for commands: our own error types print 'Error: ...' and exit 2, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError:
            raise
        except UserError as exc:
            raise PipelineError(one_line(exc)) from exc

    return wrapper
