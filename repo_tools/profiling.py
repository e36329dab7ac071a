"""Where a publish spends its time: ``pinnacle-release publish --profile``.

One :class:`Profile` per command. It sees the phases the library already reports (``Progress``:
scan, hash, compress, delta, write, sign) through :meth:`Profile.wrap`, and the delta encoders mark
their candidates with :func:`part` (a no-op unless a profile is :func:`recording`). At the end,
:meth:`Profile.line` is ONE line, in a stable format that ``bench/delta.py`` prints verbatim::

    profile: total 30.1 s wall, 48.2 s CPU, peak 1,503 MiB; startup 0.4/0.4; scan 0.0/0.0; hash 0.3/0.3;
    compress 1.9/1.9; delta 25.0/40.1; write 0.1/0.1; sign 0.0/0.0; other 0.2/0.2; delta parts, 2 at once:
    extract 1.0/0.9, read 0.4/0.4, bsdiff-matches 12.3/12.3, bsdiff-lzma 3.1/3.1, zstd-patch 8.0/8.0, ...

(one line; wrapped here). Every figure is ``wall/CPU`` in seconds. A phase's CPU is the process's
(``getrusage``: every thread), so the phases add up to the total: ``startup`` is the process's start
up to the profile's (interpreter, imports, options), ``other`` the time outside any phase. A part's
CPU is the CPU of the thread that ran it (``time.thread_time``) and its wall the time it was open,
both without the parts nested in it (``read`` inside ``solid`` counts once, as ``read``). Parts run
side by side when ``--jobs 2`` builds independent candidates at once: ``N at once`` is the most
threads that were inside parts at the same moment (up to 3: bsdiff here, the whole-archive frame
and a file's zstd patch on the two encoder threads); above 1, the parts' walls may add up to more
than the delta phase's, their CPU never more than its CPU.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pinnacle_updates.formats.progress import Progress

PREFIX = "profile:"


def process_cpu() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_age() -> float:
    """Wall seconds since this process started (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            started = int(f.read().rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", "rb") as f:
            return max(0.0, float(f.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss() -> int:
    """This process's peak resident bytes so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Profile:
    """Wall and CPU seconds per phase and per delta part since it was made (see the module doc)."""

    def __init__(self) -> None:
        # the totals count from the process's start, as an outside measurement (time, the bench) does:
        # interpreter start, imports and option parsing are the first phase, ``startup``
        cpu, since = process_cpu(), process_age()
        self.wall0, self.cpu0 = time.perf_counter() - since, 0.0
        self.phases: dict[str, list[float]] = {"startup": [since, cpu]}  # name -> [wall, cpu], in order
        self.parts: dict[str, list[float]] = {}
        self._open: tuple[str, float, float] | None = None
        self._running = 0  # threads inside a part now
        self.at_once = 0  # the most threads inside parts at the same time
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- phases (the Progress seam) --

    def start(self, name: str) -> None:
        """Phase ``name`` begins now (ending the open one); a name seen before accumulates."""
        self.end()
        self._open = (name, time.perf_counter(), process_cpu())

    def end(self) -> None:
        if self._open is None:
            return
        name, wall, cpu = self._open
        self._open = None
        _add(self.phases, name, time.perf_counter() - wall, process_cpu() - cpu)

    def wrap(self, progress: Progress) -> Progress:
        """``progress`` as it was, its phases also timed here."""
        return _Timed(progress, self)

    # -- parts (any thread) --

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block as part ``name`` in this thread (self time: nested parts are their own)."""
        stack: list[list[float]] = self._local.__dict__.setdefault("stack", [])
        if not stack:
            with self._lock:
                self._running += 1
                self.at_once = max(self.at_once, self._running)
        frame = [time.perf_counter(), time.thread_time(), 0.0, 0.0]  # start wall, cpu; nested wall, cpu
        stack.append(frame)
        try:
            yield
        finally:
            stack.pop()
            wall, cpu = time.perf_counter() - frame[0], time.thread_time() - frame[1]
            if stack:
                stack[-1][2] += wall
                stack[-1][3] += cpu
            with self._lock:
                self._running -= 0 if stack else 1
                _add(self.parts, name, wall - frame[2], cpu - frame[3])

    # -- the line --

    def line(self) -> str:
        """The one ``profile:`` line (module doc). Ends the open phase."""
        self.end()
        wall, cpu = time.perf_counter() - self.wall0, process_cpu() - self.cpu0
        phases = dict(self.phases)
        other = (wall - sum(w for w, _ in phases.values()), cpu - sum(c for _, c in phases.values()))
        phases["other"] = [max(0.0, other[0]), max(0.0, other[1])]
        text = f"{PREFIX} total {wall:.1f} s wall, {cpu:.1f} s CPU, peak {peak_rss() >> 20:,} MiB"
        text += "".join(f"; {name} {_pair(w, c)}" for name, (w, c) in phases.items())
        if self.parts:
            text += f"; delta parts, {self.at_once} at once: " + ", ".join(
                f"{name} {_pair(w, c)}" for name, (w, c) in self.parts.items())
        return text


def _pair(wall: float, cpu: float) -> str:
    return f"{wall:.1f}/{cpu:.1f}"


def _add(table: dict[str, list[float]], name: str, wall: float, cpu: float) -> None:
    row = table.setdefault(name, [0.0, 0.0])
    row[0] += wall
    row[1] += cpu


class _Timed:
    """A ``Progress`` that forwards everything and times each phase in a :class:`Profile`."""

    def __init__(self, inner: Progress, profile: Profile) -> None:
        self.inner, self.profile = inner, profile

    def start(self, phase: str, total: int = 0, unit: str = "files", detail: str = "") -> None:
        self.profile.start(phase)
        self.inner.start(phase, total, unit, detail)

    def advance(self, amount: int = 1) -> None:
        self.inner.advance(amount)

    def update(self, done: int, total: int | None = None) -> None:
        self.inner.update(done, total)

    def end(self) -> None:
        self.profile.end()
        self.inner.end()


_ACTIVE: Profile | None = None
"""The profile :func:`part` reports to: one command per process records at a time (``publish
--profile``); the encoders' threads see it without it being passed down every call."""


@contextmanager
def recording(profile: Profile | None) -> Iterator[None]:
    """:func:`part` reports to ``profile`` while the block runs (None: nowhere, the default)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, profile
    try:
        yield
    finally:
        _ACTIVE = previous


@contextmanager
def part(name: str) -> Iterator[None]:
    """Time the block as delta part ``name`` when a profile is recording; else nothing."""
    profile = _ACTIVE
    if profile is None:
        yield
        return
    with profile.part(name):
        yield
