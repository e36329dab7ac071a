"""Progress of long jobs: one seam the library layers report to, three renderers the CLIs choose.

Library code (publish, delta, sync, ``verify --deep``, install, backups) takes an optional
``Progress`` and reports *phases*: ``start(phase, total, unit)``, then ``advance(n)`` or
``update(done)``, then ``end()`` (a new ``start`` ends the open phase). It never prints; the
default is ``NULL``, which does nothing. A command picks a renderer with :func:`for_cli`:

* ``Bar``: stderr is a terminal: one live line per phase with a bar, rate and estimate;
* ``Lines``: not a terminal (CI logs, pipes): a line on stdout when a phase starts and one when it
  ends, with its totals and elapsed time;
* ``JsonLines``: ``--json``: one JSON object per line on stdout: ``{"event": "phase", ...}`` when a
  phase starts, ``{"event": "progress", ...}`` while it runs, ``{"event": "done", ...}`` when it
  ends; every event has ``phase``, ``done``, ``total`` (0: unknown), ``unit`` (``bytes`` or
  ``files``) and ``elapsed`` (seconds); ``progress`` and ``done`` add ``rate`` (units per second).
  The command's result document follows as the last line (:meth:`Renderer.result`), so a CI job
  can follow the events and read the result from ``tail -n 1``.

Renderers throttle: a ``progress`` event or a bar redraw at most every ``INTERVAL`` seconds, so a
caller may report every chunk at no cost worth measuring. ``PINNACLE_PROGRESS`` overrides the
choice (``bar``, ``lines``, ``json``, ``off``); ``--json`` always gives JSON lines (stdout must stay
machine-readable).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

import click

from .cliutil import emit, result_printed

INTERVAL = 0.1
"""Seconds between two progress events or bar redraws (about 10 a second at most)."""
UNITS = ("bytes", "files")


class Progress(Protocol):
    """Where library code reports the phases of a long job."""

    def start(self, phase: str, total: int = 0, unit: str = "files", detail: str = "") -> None:
        """Begin ``phase`` (ending the open one) of ``total`` ``unit`` (0: not known in advance)."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units of the open phase are done."""

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` units of the open phase are done (and its total is now ``total``, when given)."""

    def end(self) -> None:
        """The open phase is over (nothing when none is open)."""


class NullProgress:
    """Reports nothing: the default of every library function that takes a ``Progress``."""

    def start(self, phase: str, total: int = 0, unit: str = "files", detail: str = "") -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def update(self, done: int, total: int | None = None) -> None:
        pass

    def end(self) -> None:
        pass


NULL = NullProgress()


@contextmanager
def phase(progress: Progress, name: str, total: int = 0, unit: str = "files", detail: str = "") -> Iterator[None]:
    """``start`` ... ``end`` around a block (ended also when the block raises)."""
    progress.start(name, total, unit, detail)
    try:
        yield
    finally:
        progress.end()


def byte_callback(progress: Progress) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback (the form downloads and copies report in) that updates the open
    phase of ``progress``."""

    def on_bytes(done: int, total: int) -> None:
        progress.update(done, total or None)

    return on_bytes


def human_amount(amount: float, unit: str) -> str:
    if unit == "bytes":
        return f"{amount / 2**20:.1f} MiB"
    return f"{int(amount)} files"


def human_rate(rate: float, unit: str) -> str:
    return f"{rate / 2**20:.1f} MiB/s" if unit == "bytes" else f"{rate:.0f} files/s"


def human_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Renderer:
    """A ``Progress`` that keeps the open phase and hands throttled snapshots to ``show``.

    Thread-safe (delta encoders and copy workers may report from their threads). Subclasses
    implement ``opened``, ``moved`` (throttled) and ``closed``, and may override ``result``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.name = ""
        self.detail = ""
        self.unit = "files"
        self.total = 0
        self.done = 0
        self.started = 0.0
        self.last = 0.0
        self.open = False

    # -- the Progress protocol -----------------------------------------------------------------------
    def start(self, phase: str, total: int = 0, unit: str = "files", detail: str = "") -> None:
        if unit not in UNITS:
            raise ValueError(f"unknown progress unit {unit!r} (one of {', '.join(UNITS)})")
        with self.lock:
            if self.open:
                self.closed()
            now = self.clock()
            self.name, self.detail, self.unit, self.total, self.done = phase, detail, unit, max(0, total), 0
            self.started = self.last = now
            self.open = True
            self.opened()

    def advance(self, amount: int = 1) -> None:
        with self.lock:
            if self.open:
                self.done += amount
                self._maybe_move()

    def update(self, done: int, total: int | None = None) -> None:
        with self.lock:
            if self.open:
                self.done = done
                if total is not None:
                    self.total = max(0, total)
                self._maybe_move()

    def end(self) -> None:
        with self.lock:
            if self.open:
                self.closed()
                self.open = False

    def _maybe_move(self) -> None:
        now = self.clock()
        if now - self.last >= INTERVAL:
            self.last = now
            self.moved()

    # -- what a snapshot says --------------------------------------------------------------------------
    def elapsed(self) -> float:
        return max(self.clock() - self.started, 0.0)

    def rate(self) -> float:
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 else 0.0

    def label(self) -> str:
        return f"{self.name} {self.detail}" if self.detail else self.name

    def close(self) -> None:
        """The command is over. A phase still open means it failed there: the phase is left as it
        stood (no ``done``: it did not end) and a terminal's bar line is finished, so that the error
        line starts on a line of its own."""
        with self.lock:
            if self.open:
                self.open = False
                self.abandoned()

    # -- what subclasses show ----------------------------------------------------------------------------
    def abandoned(self) -> None:
        pass

    def opened(self) -> None:
        pass

    def moved(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def result(self, data: Any, human: str) -> None:
        """The command's result: ``human`` (when not empty) on stdout; JSON renderers print ``data``."""
        self.end()
        emit(False, data, human)


class Quiet(Renderer):
    """``PINNACLE_PROGRESS=off``: the phases are kept (and could be asked) but nothing is shown."""


class Lines(Renderer):
    """Not a terminal: one line when a phase starts and one when it ends, on ``out`` (stdout)."""

    def __init__(self, out: IO[str], program: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.out = out
        self.program = program

    def opened(self) -> None:
        size = f" ({human_amount(self.total, self.unit)})" if self.total else ""
        self.out.write(f"{self.program}: {self.label()}{size} ...\n")
        self.out.flush()

    def closed(self) -> None:
        elapsed = self.elapsed()
        rate = f", {human_rate(self.rate(), self.unit)}" if self.done and elapsed >= 0.05 else ""
        amount = f"{human_amount(self.done, self.unit)} " if self.done else ""
        self.out.write(f"{self.program}: {self.label()} done: {amount}in {human_seconds(elapsed)}{rate}\n")
        self.out.flush()


class Bar(Renderer):
    """A terminal: the open phase as one redrawn line on ``out`` (stderr): bar, amounts, rate and
    estimate when the total is known, amount and rate when it is not; the finished line stays."""

    WIDTH = 24

    def __init__(self, out: IO[str], program: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.out = out
        self.program = program

    def line(self, final: bool = False) -> str:
        rate = self.rate()
        if self.total:
            shown = min(self.done, self.total)
            filled = int(self.WIDTH * shown / self.total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            amounts = f"{human_amount(shown, self.unit).split()[0]}/{human_amount(self.total, self.unit)}"
            if final:
                tail = f"in {human_seconds(self.elapsed())}"
            else:
                tail = f"ETA {human_seconds((self.total - shown) / rate)}" if rate > 0 else "ETA --"
            percent = 100 * shown // self.total
            return f"{self.label():<16} [{bar}] {percent:3d}% {amounts} {human_rate(rate, self.unit)} {tail}"
        tail = f"in {human_seconds(self.elapsed())}" if final else human_rate(rate, self.unit)
        amount = human_amount(self.done, self.unit) if self.done else "..."
        return f"{self.label():<16} {amount} {tail}"

    def opened(self) -> None:
        self.moved()

    def moved(self) -> None:
        self.out.write("\r\x1b[K" + self.line())
        self.out.flush()

    def closed(self) -> None:
        self.out.write("\r\x1b[K" + self.line(final=True) + "\n")
        self.out.flush()

    def abandoned(self) -> None:
        self.out.write("\n")
        self.out.flush()


class JsonLines(Renderer):
    """``--json``: one event object per line on ``out`` (stdout), then the result document."""

    def __init__(self, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.out = out

    def event(self, kind: str) -> dict[str, Any]:
        event: dict[str, Any] = {"event": kind, "phase": self.name, "done": self.done, "total": self.total,
                                 "unit": self.unit, "elapsed": round(self.elapsed(), 3)}
        if self.detail:
            event["detail"] = self.detail
        if kind != "phase":
            event["rate"] = round(self.rate(), 1)
        return event

    def write(self, data: Any) -> None:
        self.out.write(json.dumps(data, sort_keys=True, default=str, separators=(",", ":")) + "\n")
        self.out.flush()

    def opened(self) -> None:
        self.write(self.event("phase"))

    def moved(self) -> None:
        self.write(self.event("progress"))

    def closed(self) -> None:
        self.write(self.event("done"))

    def result(self, data: Any, human: str) -> None:
        """The result document on one line, the last one."""
        self.end()
        self.write(data)
        result_printed()


def for_cli(program: str, as_json: bool, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
            mode: str | None = None) -> Renderer:
    """The renderer a command uses: JSON lines with ``--json``; else ``mode`` or ``PINNACLE_PROGRESS``
    when set (bar, lines, off); else a bar when stderr is a terminal and phase lines when not."""
    shown = _choose(program, as_json, stdout if stdout is not None else sys.stdout,
                    stderr if stderr is not None else sys.stderr, mode)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # closed as the command ends, before click shows an error
        ctx.call_on_close(shown.close)
    return shown


def _choose(program: str, as_json: bool, out: IO[str], err: IO[str], mode: str | None) -> Renderer:
    if as_json:
        return JsonLines(out)
    chosen = (mode if mode is not None else os.environ.get("PINNACLE_PROGRESS", "")).strip().lower()
    if chosen == "off":
        return Quiet()
    if chosen == "lines":
        return Lines(out, program)
    if chosen == "bar" or _isatty(err):
        return Bar(err, program)
    return Lines(out, program)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: not a terminal
        return False


__all__ = ["INTERVAL", "NULL", "Bar", "JsonLines", "Lines", "NullProgress", "Progress", "Quiet", "Renderer",
           "byte_callback", "for_cli", "human_amount", "human_rate", "human_seconds", "phase"]
