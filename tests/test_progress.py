"""The progress seam (``formats.progress``): the renderers' output, throttling, the choice a CLI makes,
and the live bar as a terminal shows it (``pinnacle-release publish`` under a pseudo-terminal)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinnacle_updates.formats import progress
from pinnacle_updates.formats.progress import INTERVAL, Bar, JsonLines, Lines, Quiet, for_cli, phase
from pinnacle_updates.repo_tools.errors import UnsafeInputError
from tests.conftest import ROOT, write_tree


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_shape_throttle_and_result_last() -> None:
    out, clock = io.StringIO(), Clock()
    shown = JsonLines(out, clock)
    shown.start("hash", 1000, "bytes")
    for _ in range(50):  # many reports within one interval: no progress event at all
        shown.advance(10)
    clock.now += INTERVAL * 1.5
    shown.advance(10)  # the first report after the interval: one event
    clock.now += 1.0
    shown.update(1000)
    shown.start("sign", 3)  # a new phase ends the open one
    shown.advance(3)
    shown.result({"ok": True, "nested": {"a": [1, 2]}}, "ignored for JSON")
    events = _events(out.getvalue())
    assert [(e.get("event"), e.get("phase")) for e in events] == [
        ("phase", "hash"), ("progress", "hash"), ("progress", "hash"), ("done", "hash"),
        ("phase", "sign"), ("done", "sign"), (None, None)]
    assert events[1]["done"] == 510 and events[1]["total"] == 1000 and events[1]["unit"] == "bytes"
    assert events[3] == {"event": "done", "phase": "hash", "done": 1000, "total": 1000, "unit": "bytes",
                         "elapsed": pytest.approx(1.15), "rate": pytest.approx(1000 / 1.15, abs=0.1)}
    assert events[4]["unit"] == "files" and events[5]["done"] == 3
    assert events[-1] == {"ok": True, "nested": {"a": [1, 2]}}  # the result: one line, the last


def test_phase_context_ends_on_error_and_unknown_unit_is_refused() -> None:
    out = io.StringIO()
    shown = JsonLines(out)
    with pytest.raises(RuntimeError), phase(shown, "delta", 10, "bytes", "from 1.0"):
        raise RuntimeError("boom")
    assert [e["event"] for e in _events(out.getvalue())] == ["phase", "done"]
    assert _events(out.getvalue())[0]["detail"] == "from 1.0"
    with pytest.raises(ValueError, match="unknown progress unit"):
        shown.start("x", unit="lines")
    shown.advance(5)  # nothing open: ignored, no event
    shown.end()
    assert len(out.getvalue().splitlines()) == 2


def test_lines_one_at_start_and_one_at_end_with_totals_and_elapsed() -> None:
    out, clock = io.StringIO(), Clock()
    shown = Lines(out, "pinnacle-release", clock)
    shown.start("compress", 3 * 2**20, "bytes")
    for _ in range(30):
        clock.now += INTERVAL
        shown.advance(2**20 // 10)
    shown.update(3 * 2**20)
    shown.start("scan")
    shown.advance(7)
    shown.end()
    assert out.getvalue().splitlines() == [
        "pinnacle-release: compress (3.0 MiB) ...",
        "pinnacle-release: compress done: 3.0 MiB in 3.0s, 1.0 MiB/s",
        "pinnacle-release: scan ...",
        "pinnacle-release: scan done: 7 files in 0.0s",
    ]


def test_bar_line_rate_estimate_and_final_line() -> None:
    out, clock = io.StringIO(), Clock()
    shown = Bar(out, "pinnacle-update", clock)
    shown.start("download", 100 * 2**20, "bytes")
    clock.now += 2.0
    shown.update(25 * 2**20)
    line = shown.line()
    assert "[######" in line and " 25% " in line and "25.0/100.0 MiB" in line
    assert "12.5 MiB/s" in line and "ETA 6.0s" in line
    shown.update(100 * 2**20)
    shown.end()
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3 and text.endswith("100% 100.0/100.0 MiB 50.0 MiB/s in 2.0s\n")
    unknown = Bar(io.StringIO(), "p", clock)
    unknown.start("sync")
    clock.now += 1.0
    unknown.advance(4)
    assert unknown.line() == f"{'sync':<16} 4 files 4 files/s"


def test_for_cli_picks_by_json_environment_and_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PINNACLE_PROGRESS", raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert isinstance(for_cli("p", True, out, err), JsonLines)
    assert isinstance(for_cli("p", False, out, err), Lines)  # StringIO is not a terminal
    monkeypatch.setenv("PINNACLE_PROGRESS", "off")
    assert isinstance(for_cli("p", False, out, err), Quiet)
    assert isinstance(for_cli("p", True, out, err), JsonLines)  # --json wins: stdout stays machine-readable
    monkeypatch.setenv("PINNACLE_PROGRESS", "bar")
    assert isinstance(for_cli("p", False, out, err), Bar)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            monkeypatch.delenv("PINNACLE_PROGRESS")
            assert isinstance(for_cli("p", False, out, tty), Bar)
            monkeypatch.setenv("PINNACLE_PROGRESS", "lines")
            assert isinstance(for_cli("p", False, out, tty), Lines)
    finally:
        os.close(master)
        os.close(slave)


def test_close_leaves_an_open_phase_as_it_stood() -> None:
    out, err = io.StringIO(), io.StringIO()
    shown = JsonLines(out)
    shown.start("hash", 10, "bytes")
    shown.close()  # the command failed here: no done event
    assert [e["event"] for e in _events(out.getvalue())] == ["phase"]
    bar = Bar(err, "p")
    bar.start("hash", 10, "bytes")
    bar.close()
    assert err.getvalue().endswith(" ETA --\n")  # the bar's line is finished for the error line
    bar.start("sign")
    bar.end()
    bar.close()  # nothing open: nothing more
    assert err.getvalue().endswith("in 0.0s\n")


def test_null_progress_and_byte_callback() -> None:
    progress.NULL.start("x", 5, "bytes")
    progress.NULL.advance(3)
    progress.NULL.update(4, 5)
    progress.NULL.end()
    out = io.StringIO()
    shown = JsonLines(out)
    shown.start("download", unit="bytes")
    on_bytes = progress.byte_callback(shown)
    on_bytes(0, 4096)
    shown.end()
    assert _events(out.getvalue())[-1]["total"] == 4096  # the first report told the total


def test_renderers_overhead_is_small() -> None:
    """A report costs about a microsecond while throttled: a million-chunk job adds about a second
    at most (bounded generously for a shared CPU)."""
    shown = JsonLines(io.StringIO())
    shown.start("hash", 10**9, "bytes")
    started = time.perf_counter()
    for _ in range(100_000):
        shown.advance(10_000)
    per_call = (time.perf_counter() - started) / 100_000
    assert per_call < 20e-6, per_call


def _under_a_terminal(*args: str) -> tuple[int, str, str]:
    """``pinnacle-release ARGS`` with stderr a pseudo-terminal and stdout a pipe: the exit code,
    what the terminal showed and stdout."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PINNACLE_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", *args],
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env, text=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout, _ = proc.communicate(timeout=60)
    return proc.returncode, seen.decode(), stdout


def test_publish_under_a_terminal_shows_the_bar(keys_dir: Path, tmp_path: Path) -> None:
    """The bar (redrawn with carriage returns) on the terminal, the result alone on stdout; a failure
    in the middle of a phase ends the bar's line before the one error line."""
    repo = tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "pinnacle_updates.repo_tools", "init", str(repo), "--keys", str(keys_dir)],
                   check=True, capture_output=True, cwd=ROOT, timeout=60)
    src = write_tree(tmp_path / "src", {f"lib/f{i:02d}.bin": os.urandom(64 << 10) for i in range(40)})
    publish = ("publish", str(repo), "--keys", str(keys_dir), "--channel", "stable", "--type", "minor",
               "--platform", "any")
    code, text, stdout = _under_a_terminal(*publish, "--version", "1.0", str(src))
    assert code == 0, text
    for name in ("scan", "hash", "compress", "write", "sign"):
        assert f"\r\x1b[K{name}" in text, text
    assert "[" in text and "] " in text and "% " in text and "MiB/s" in text and "ETA" in text
    assert "2.5/2.5 MiB" in text  # hash: 40 x 64 KiB, done
    assert stdout.startswith("published stable 1.0 (any, minor)") and stdout.count("\n") == 1

    os.mkfifo(src / "lib" / "zz-pipe")  # refused while hashing, the last path: the hash phase is open
    code, text, stdout = _under_a_terminal(*publish, "--version", "2.0", str(src))
    assert code == UnsafeInputError.exit_code and stdout == ""
    bar, error = text.rstrip("\r\n").rsplit("\r\n", 1)
    assert bar.rsplit("\r\x1b[K", 1)[1].startswith("hash ") and "done" not in bar.rsplit("\r\n", 1)[-1]
    assert error.startswith("pinnacle-release: error: refusing ") and "FIFO" in error
