"""The sync tests' kill loops: killing a real process at a chosen point of its own output, and asking
a stock ngclient whether what it left is still a valid repository."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater


def kill_after_lines(proc: subprocess.Popen[str], prefix: str, wanted: int, rng: random.Random,
                     jitter: float) -> bool:
    """SIGKILL ``proc`` once it has printed ``wanted`` lines starting with ``prefix`` (or ended), half the
    time after a random pause of up to ``jitter`` seconds so kills also land between two lines. True when
    the kill interrupted it (it was still running)."""
    assert proc.stdout is not None
    seen = 0
    while seen < wanted:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.startswith(prefix)
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0, jitter))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def ngclient_accepts(url: str, root: bytes, metadata_dir: Path) -> str:
    """Stock ngclient (``metadata_dir`` its trusted state, kept across calls by the caller): refresh,
    resolve and download the stable channel index at ``url``; return its text."""
    with tempfile.TemporaryDirectory() as targets:
        updater = Updater(str(metadata_dir), f"{url}metadata/", targets, f"{url}targets/", bootstrap=root)
        updater.refresh()
        info = updater.get_targetinfo("stable/index.json")
        assert info is not None
        path = updater.download_target(info, os.path.join(targets, "index.json"))
        return Path(path).read_text()


def driver_iterations(proc: subprocess.CompletedProcess[str], expected: int) -> tuple[list[dict[str, Any]],
                                                                                     list[dict[str, Any]]]:
    """The JSON lines a kill-loop driver printed: (all rows, one per iteration); asserts that no
    iteration found a problem, the driver succeeded and ran ``expected`` iterations."""
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    lines = [r for r in rows if "i" in r]
    failed = [r for r in lines if r["problems"]]
    assert not failed, failed[:3]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(lines) == expected
    return rows, lines
