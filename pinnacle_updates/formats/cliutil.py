"""What both command-line tools share: one line per error, one exit code, one output shape.

Commands raise their library's root error; the group class made here is the single place where
it becomes ``<program>: error: <message>`` on stderr and the error's ``exit_code``. ``--json``
output is one JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import click


class Failure(click.ClickException):
    """A refusal shown as one line, with the program's name and its own exit code."""

    def __init__(self, program: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.program = program
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default only

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.program}: error: {self.format_message()}", err=True)


def error_group(
    program: str,
    errors: type[Exception],
    details: Callable[[Exception], Iterable[str]] = lambda exc: (),
) -> type[click.Group]:
    """A click group class turning ``errors`` into a ``Failure``; ``details`` may add lines
    (e.g. each problem a verification found) before the one error line."""

    class ErrorGroup(click.Group):
        def main(self, *args: Any, **kwargs: Any) -> NoReturn:
            """click's own usage errors become one line too (click prints usage, a hint and a blank)."""
            kwargs["standalone_mode"] = False
            try:
                result = super().main(*args, **kwargs)
            except click.UsageError as exc:
                command = exc.ctx.command_path if exc.ctx else program
                click.echo(f"{program}: error: {exc.format_message()} (see '{command} --help')", err=True)
                sys.exit(exc.exit_code)
            except click.ClickException as exc:
                exc.show()
                sys.exit(exc.exit_code)
            except click.Abort:
                click.echo(f"{program}: aborted", err=True)
                sys.exit(1)
            sys.exit(result if isinstance(result, int) else 0)

        def invoke(self, ctx: click.Context) -> Any:
            try:
                return super().invoke(ctx)
            except errors as exc:
                for line in details(exc):
                    click.echo(f"{program}: {line}", err=True)
                raise Failure(program, str(exc), getattr(exc, "exit_code", 1)) from exc
            except OSError as exc:  # last resort: a file error no library layer translated is still one line
                where = f": {exc.filename}" if exc.filename else ""
                raise Failure(program, f"{exc.strerror or exc}{where}", 1) from exc

    return ErrorGroup


def emit(as_json: bool, data: Any, human: str) -> None:
    """Print ``data`` as one JSON document, or ``human`` (when not empty)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif human:
        click.echo(human)
