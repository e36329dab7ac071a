"""Issue 23, item 4: ``pinnacle-release publish --profile`` says where the time went in ONE stderr line whose
figures add up (phases to the total, the delta parts within the delta phase); without the flag there is none."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.profiling import Profile, part, recording
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import result_json, run_cli
from tests.publisher.test_delta_publish import _blob

HEAD = re.compile(r"profile: total (\d+\.\d) s wall, (\d+\.\d) s CPU, peak ([\d,]+) MiB$")
FIGURE = re.compile(r"(\S+) (\d+\.\d)/(\d+\.\d)$")
PARTS = re.compile(r"delta parts, (\d+) at once: (.*)$")


Figures = dict[str, tuple[float, float]]


def parse(line: str) -> tuple[tuple[float, float, int], Figures, int, Figures]:
    """``(total wall, CPU, peak MiB), phases, at once, parts`` of a profile line (the documented format)."""
    head, *rest = line.split("; ")
    m = HEAD.match(head)
    assert m, head
    phases: Figures = {}
    parts: Figures = {}
    at_once = 0
    for field in rest:
        if (p := PARTS.match(field)) is not None:
            at_once = int(p.group(1))
            for item in p.group(2).split(", "):
                f = FIGURE.match(item)
                assert f, item
                parts[f.group(1)] = (float(f.group(2)), float(f.group(3)))
            continue
        f = FIGURE.match(field)
        assert f, field
        phases[f.group(1)] = (float(f.group(2)), float(f.group(3)))
    return (float(m.group(1)), float(m.group(2)), int(m.group(3).replace(",", ""))), phases, at_once, parts


def _publish(repo: Repository, keys_dir: Path, version: str, src: Path, *extra: str, check: bool = True) -> (
        tuple[int, str, str]):
    proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "stable",
                   "--version", version, "--type", "minor", "--platform", "linux-x86_64", "--json", *extra, str(src),
                   env={"PINNACLE_PROGRESS": "off"}, check=check)
    return proc.returncode, proc.stdout, proc.stderr


def test_profile_line_with_the_flag_only(repo: Repository, keys_dir: Path, source: Callable[..., Path]) -> None:
    lib = _blob(1, 2 << 20)
    _publish(repo, keys_dir, "1.0.0", source("1.0.0", {"lib/core.so": lib}))
    changed = lib[:1 << 20] + _blob(2, 4096) + lib[(1 << 20) + 4096:]
    _, out, err = _publish(repo, keys_dir, "1.0.1", source("1.0.1", {"lib/core.so": changed}), "--profile")
    assert result_json(out)["deltas"][0]["published"]  # stdout is still the result document
    lines = [line for line in err.splitlines() if line.startswith("profile:")]
    assert len(lines) == 1 and err.strip() == lines[0], err
    (wall, cpu, peak), phases, at_once, parts = parse(lines[0])
    assert list(phases) == ["startup", "scan", "hash", "compress", "delta", "write", "sign", "other"]
    # the phases split the total (each figure is rounded to 0.1 s)
    slack = 0.05 * len(phases) + 0.1
    assert abs(sum(w for w, _ in phases.values()) - wall) <= slack
    assert abs(sum(c for _, c in phases.values()) - cpu) <= slack
    assert cpu > 0 and 0 < peak < 4096
    # every candidate the changed file has is timed, and thread CPU of the parts fits in the delta phase's
    assert {"extract", "manifest-patch", "read", "bsdiff-matches", "bsdiff-lzma", "zstd-patch", "archive",
            "container"} <= set(parts), parts
    assert 1 <= at_once <= 3
    assert sum(c for _, c in parts.values()) <= phases["delta"][1] + 0.05 * len(parts) + 0.1

    _, out, err = _publish(repo, keys_dir, "1.0.2", source("1.0.2", {"lib/core.so": lib}))
    assert "profile:" not in err and result_json(out)["deltas"]


def test_refused_publish_with_profile_is_one_line(repo: Repository, keys_dir: Path,
                                                  source: Callable[..., Path]) -> None:
    code, out, err = _publish(repo, keys_dir, "1.0.0", source("1.0.0"), "--profile", "--memory-budget", "1M",
                              check=False)
    assert code == PublishRefused.exit_code
    error = result_json(out)["error"]  # --json: the one-line error is a document on stdout
    assert "--memory-budget" in error["message"] and "\n" not in error["message"] and "profile:" not in out + err


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_parts_count_self_time_and_threads_at_once() -> None:
    profile = Profile()
    barrier = threading.Barrier(2)

    def worker() -> None:
        with part("side"):
            barrier.wait(timeout=10)
            _spin(0.05)

    with recording(profile):
        thread = threading.Thread(target=worker)
        thread.start()
        with part("outer"):
            barrier.wait(timeout=10)
            _spin(0.05)
            with part("inner"):
                _spin(0.1)
        thread.join()
    with part("nowhere"):  # not recording: nothing is kept
        pass
    assert set(profile.parts) == {"side", "outer", "inner"} and profile.at_once == 2
    # self time: the nested part's CPU is not the outer one's too
    assert 0.04 <= profile.parts["outer"][1] < 0.09 and 0.09 <= profile.parts["inner"][1] < 0.14
    assert 0.04 <= profile.parts["side"][1] < 0.09
    head, *_ = profile.line().split("; ")
    assert HEAD.match(head)
