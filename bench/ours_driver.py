"""Our client's update timed in-process, warm: run by ``bench/delta.py`` with the client venv's Python.

Issue 23 judges client time in-process "after imports, both clients warm": tufup's driver imports
``tufup.client`` (and with it tuf, bsdiff4, tarfile) before its timer starts; this does the same for ours:
it imports every module of the installed ``pinnacle_updates`` client and formats packages (the update path
imports some of them lazily, which a long-running agent or an embedding application has done long before
its next update), then times ``AutoUpdater(install_dir).install()`` through the public API, the same call
the CLI, the agent and embedding applications make. Prints one JSON line: version, seconds, bytes.

    python bench/ours_driver.py INSTALL_DIR
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path


def warm() -> int:
    """Import every module of the client and the shared formats (not the agent's web server, the demo, or the
    command line); the number imported."""
    import pinnacle_updates.client as client
    import pinnacle_updates.formats as formats

    count = 0
    for package in (client, formats):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if any(part in info.name for part in (".agent", ".demo", ".cli", "__main__")):
                continue
            importlib.import_module(info.name)
            count += 1
    # httpx imports its connection machinery (httpcore's, h11) on the first request; requests, which tufup's
    # client uses, imports all of it up front.
    for name in ("httpx", "httpcore._sync.connection", "httpcore._sync.http11", "h11", "zstandard", "bsdiff4",
                 "tarfile", "lzma", "bz2"):
        importlib.import_module(name)
    return count


def main() -> None:
    install_dir = Path(sys.argv[1])
    warm()
    from pinnacle_updates.client import AutoUpdater

    started = time.perf_counter()
    result = AutoUpdater(install_dir).install()
    seconds = time.perf_counter() - started
    if result.outcome != "committed":
        raise SystemExit(f"the update ended {result.outcome}: {result.reason}")
    print(json.dumps({"version": result.version, "seconds": round(seconds, 4), "bytes": result.bytes_downloaded,
                      "duration": result.duration}))


if __name__ == "__main__":
    main()
