"""What both command-line tools share: one line per error, one exit code, one output shape.

Commands raise their library's root error; the group class made here is the single place where
it, click's own usage errors and anything unforeseen become output and an exit code from the
shared table (``formats.exitcodes``):

* as text: ``<program>: error: <message>`` on stderr (after any detail lines);
* under ``--json``: one JSON line, ``{"error": {"code": n, "name": "...", "message": "...",
  "details": [...]}}``, on stdout as its last line: stdout under ``--json`` is all JSON (progress
  events as lines, ``formats.progress``, then the result or this error), so a CI job reads the
  outcome from ``tail -n 1``. A command that prints its one result document and then fails
  (``verify``, ``doctor``, ``health-check``, ``status --warn-days``: the document says what is
  wrong) keeps stdout that one document and writes the error line on stderr.

``--json`` output is one JSON document on stdout (``emit``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import click

from .exitcodes import ExitCode
from .redact import redact_text

_JSON = "pinnacle_updates.json"
"""Key in the root context's ``meta``: the command being run was given ``--json``."""
_PRINTED = "pinnacle_updates.printed"
"""Key in the root context's ``meta``: the command printed its result document (``emit``)."""


def error_document(code: int, message: str, details: Sequence[str] = ()) -> dict[str, Any]:
    """The ``--json`` shape of a failure (what the tests and CI scripts parse)."""
    try:
        name = ExitCode(code).name.lower()
    except ValueError:  # not in the table: reported as what it is, never hidden
        name = "unknown"
    error: dict[str, Any] = {"code": int(code), "name": name, "message": message}
    if details:
        error["details"] = list(details)
    return {"error": error}


class Failure(click.ClickException):
    """A refusal shown as one line (text) or one JSON line (``--json``), with its own exit code."""

    def __init__(self, program: str, message: str, exit_code: int, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.program = program
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default only
        self.details = tuple(details)
        self.as_json = False
        self.after_result = False  # a JSON result document is on stdout: the error line goes to stderr

    def show(self, file: Any = None) -> None:
        if self.as_json:
            document = error_document(self.exit_code, self.format_message(), self.details)
            click.echo(json.dumps(document, sort_keys=True), err=self.after_result)
            return
        for line in self.details:
            click.echo(f"{self.program}: {line}", err=True)
        click.echo(f"{self.program}: error: {self.format_message()}", err=True)


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:  # read by the group when the command fails, after its own context is gone
        ctx.find_root().meta[_JSON] = True
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_remember_json,
                           help="Print JSON on stdout: the result, or {\"error\": ...} as the last line.")
"""``--json`` for every command of both tools: its failures are JSON too."""


def _asked_json(tokens: Sequence[str]) -> bool:
    """``--json`` among the command line's options (before any ``--``): for usage errors, which
    happen before the option itself is parsed."""
    words = list(tokens)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


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
            tokens = args[0] if args and args[0] is not None else kwargs.get("args") or sys.argv[1:]
            try:
                result = super().main(*args, **kwargs)
            except click.exceptions.NoArgsIsHelpError as exc:
                exc.show()  # a group alone: its help, as click does
                sys.exit(ExitCode.USAGE)
            except click.UsageError as exc:
                command = exc.ctx.command_path if exc.ctx else program
                usage = Failure(program, f"{exc.format_message()} (see '{command} --help')", ExitCode.USAGE)
                usage.as_json = _asked_json(tokens) or bool(exc.ctx and exc.ctx.meta.get(_JSON))
                usage.show()
                sys.exit(ExitCode.USAGE)
            except click.ClickException as exc:
                exc.show()
                sys.exit(exc.exit_code)
            except click.Abort:
                failure = Failure(program, "interrupted", ExitCode.INTERRUPTED)
                failure.as_json = _asked_json(tokens)
                failure.show()
                sys.exit(ExitCode.INTERRUPTED)
            sys.exit(result if isinstance(result, int) else ExitCode.OK)

        def invoke(self, ctx: click.Context) -> Any:
            try:
                return super().invoke(ctx)
            except Failure as exc:  # raised by a command itself: shown like the rest below
                failure = exc
            except errors as exc:
                failure = Failure(program, str(exc), getattr(exc, "exit_code", ExitCode.INTERNAL), tuple(details(exc)))
            except OSError as exc:  # last resort: a file error no library layer translated is still one line
                where = f": {exc.filename}" if exc.filename else ""
                failure = Failure(program, f"{exc.strerror or exc}{where}", ExitCode.INTERNAL)
            except (click.ClickException, click.Abort, click.exceptions.Exit):
                raise
            except Exception as exc:  # a bug: still one line, never a traceback (PINNACLE_TRACEBACK=1 shows it)
                if os.environ.get("PINNACLE_TRACEBACK"):
                    raise
                text = redact_text(" ".join(str(exc).split()))[:300]
                failure = Failure(program, f"internal error: {type(exc).__name__}: {text} (please report this; "
                                           "PINNACLE_TRACEBACK=1 shows where)", ExitCode.INTERNAL)
            failure.as_json, failure.after_result = bool(ctx.meta.get(_JSON)), bool(ctx.meta.get(_PRINTED))
            raise failure

    return ErrorGroup


def emit(as_json: bool, data: Any, human: str) -> None:
    """Print ``data`` as one JSON document, or ``human`` (when not empty)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        result_printed()  # an error after this goes to stderr: stdout stays one JSON document
    elif human:
        click.echo(human)


def result_printed() -> None:
    """The command's JSON result document is on stdout (from ``emit``, or one line after the events
    of ``formats.progress``): an error after this goes to stderr."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_PRINTED] = True
