"""``make demo``: the whole product end to end on this machine, with the real CLIs.

``python -m pinnacle_updates.client.demo [DIRECTORY]``: dev keys in ``DIRECTORY/keys``, a
repository in ``DIRECTORY/repository`` served on 127.0.0.1, a sample HTTP app published in four
versions; a client (``DIRECTORY/work/client``) installs v1, updates to v3, then meets a broken v4
whose health check fails and rolls back to v3 by itself. DIRECTORY defaults to a fresh temporary
directory (never the current one); it must be empty or absent. Prints a short summary; exits
non-zero (with the shared exit codes) if anything did not happen as it should.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pinnacle_updates.formats.exitcodes import ExitCode

# set by main() from its DIRECTORY argument
KEYS = REPO = WORK = Path()
APP_SOURCE = Path(__file__).with_name("demo_app") / "app.py"


class DemoFailed(Exception):
    pass


def run(tool: str, *args: str, expect: int = 0) -> dict[str, Any] | list[Any]:
    """Run one CLI command as a user would; return its --json document."""
    module = {"pinnacle-release": "pinnacle_updates.repo_tools", "pinnacle-update": "pinnacle_updates.client"}[tool]
    proc = subprocess.run([sys.executable, "-m", module, *args, "--json"], capture_output=True, text=True)
    if proc.returncode != expect:
        raise DemoFailed(f"{tool} {' '.join(args)} exited {proc.returncode} (expected {expect}):\n"
                         f"{proc.stderr.strip()}")
    if expect != 0:  # under --json the error is the last line of stdout
        error: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
        return {"error": error["message"]}
    try:
        result: dict[str, Any] | list[Any] = json.loads(proc.stdout)
    except ValueError:  # progress events came first, one JSON line each: the result is the last line
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def client(*args: str, expect: int = 0) -> dict[str, Any]:
    result = run("pinnacle-update", "--install-dir", str(WORK / "client"), *args, expect=expect)
    assert isinstance(result, dict)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_app(version: str, broken: bool = False) -> Path:
    """The sample app plus ~2 MB of "bundled libraries" that change a little between releases,
    as real releases do, so the update can travel as a delta."""
    src = WORK / "src" / version
    (src / "bin").mkdir(parents=True)
    shutil.copyfile(APP_SOURCE, src / "bin" / "app.py")
    (src / "bin" / "app.py").chmod(0o755)
    (src / "VERSION").write_text(version + "\n")
    rng = random.Random(7)
    lib = src / "lib"
    lib.mkdir()
    for n in range(4):
        blob = bytearray(rng.randbytes(512 * 1024))
        patch = random.Random(f"{version}-{n}")
        for _ in range(8):  # a few small edits per release
            at = patch.randrange(len(blob) - 64)
            blob[at:at + 64] = patch.randbytes(64)
        (lib / f"module{n}.so").write_bytes(bytes(blob))
    if broken:
        (src / "BROKEN").write_text("this release's /health answers 500\n")
    return src


def app_version(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2) as reply:
            return str(reply.read().decode().strip())
    except OSError:
        return "(not answering)"


def _parse(argv: list[str] | None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m pinnacle_updates.client.demo",
        description="Publish four releases of a sample app and update a client through them on 127.0.0.1: "
                    "an install, a delta update and an automatic rollback from a broken release.",
        epilog=f"Exit codes: 0 the demo ran as it should, {int(ExitCode.INTERNAL)} a step did not, "
               f"{int(ExitCode.USAGE)} a wrong command line (docs/OPERATIONS.md, 'Exit codes').")
    parser.add_argument("directory", nargs="?", type=Path, default=None,
                        help="where keys, repository and client go: empty or absent "
                             "(default: a fresh temporary directory, printed first)")
    args = parser.parse_args(argv)
    if args.directory is None:
        return Path(tempfile.mkdtemp(prefix="pinnacle-demo-"))
    directory: Path = args.directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        parser.error(f"{directory} is not an empty directory (the demo writes keys/, repository/ and work/ there)")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    global KEYS, REPO, WORK
    base = _parse(argv)
    KEYS, REPO, WORK = base / "keys", base / "repository", base / "work"
    print(f"demo in      {base}")
    started = time.monotonic()
    WORK.mkdir()
    server = None
    client_dir = WORK / "client"
    try:
        run("pinnacle-release", "keys", "init", str(KEYS), "--insecure-plaintext", "--force")
        run("pinnacle-release", "init", str(REPO), "--keys", str(KEYS))
        server = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "serve", str(REPO), "--port",
                                   "0"],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]
        print(f"repository   {REPO} served at {url}")

        for version, kind in (("1.0.0", "minor"), ("1.1.0", "minor"), ("1.2.0", "patch")):
            rel = run("pinnacle-release", "publish", str(REPO), "--keys", str(KEYS), "--channel", "stable",
                      "--version", version, "--type", kind, "--platform", "any", "--entry-point", "bin/app.py",
                      str(make_app(version)))
            assert isinstance(rel, dict)
            deltas = ", ".join(f"{d['from']}: {d['length']} B" for d in rel["release"].get("deltas", []))
            print(f"published    {version} ({kind}, full {rel['release']['full']['length']} B"
                  + (f"; deltas from {deltas}" if deltas else "") + ")")

        port = free_port()
        client("init", "--repo", url, "--root", str(REPO / "metadata" / "1.root.json"), "--channel", "stable")
        settings = {
            "start_command": f"nohup python3 bin/app.py serve {port} >> logs/app.log 2>&1 & echo $! > temp/app.pid",
            "stop_command": "if [ -f temp/app.pid ]; then p=$(cat temp/app.pid); kill $p 2>/dev/null; "
                            "for i in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; fi",
            "health_url": f"http://127.0.0.1:{port}/health",
            "health_retries": "8", "health_interval": "0.25", "health_grace_period": "0.2",
        }
        for key, value in settings.items():
            subprocess.run([sys.executable, "-m", "pinnacle_updates.client", "--install-dir", str(client_dir),
                            "config", "set",
                            key, value], check=True, capture_output=True)

        first = client("install", "1.0.0")
        print(f"installed    {first['version']} in slot {first['slot']}; app says {app_version(port)}")
        if app_version(port) != "1.0.0":
            raise DemoFailed("the app does not answer as 1.0.0 after installing it")

        update = client("install")
        print(f"updated      {update['previous_version']} -> {update['version']} in slot {update['slot']} via "
              f"{update.get('path', 'full')}: {update['bytes_downloaded']} B downloaded, "
              f"{update.get('bytes_saved', 0)} B saved ({update['duration']:.2f}s); app says {app_version(port)}")
        if update["version"] != "1.2.0" or app_version(port) != "1.2.0":
            raise DemoFailed("the update to 1.2.0 did not take")
        if update.get("path") not in ("delta", "chain"):
            raise DemoFailed(f"the update did not use a delta ({update.get('fallback_reason') or 'no delta path'})")

        run("pinnacle-release", "publish", str(REPO), "--keys", str(KEYS), "--channel", "stable",
            "--version", "1.3.0", "--type", "patch", "--platform", "any", "--entry-point", "bin/app.py",
            str(make_app("1.3.0", broken=True)))
        print("published    1.3.0 (patch, broken: /health answers 500)")
        failed = client("install", expect=ExitCode.ROLLED_BACK)
        status = client("status")
        print(f"install 1.3.0 failed its health check and rolled back:\n             {failed['error']}")
        print(f"now          {status['version']} in slot {status['slot']} ({status['state']}); "
              f"app says {app_version(port)}; bad versions: {', '.join(status['bad_versions']) or 'none'}")
        if status["version"] != "1.2.0" or app_version(port) != "1.2.0":
            raise DemoFailed("the client is not back on 1.2.0 after the failed update")

        check = client("check")
        print(f"check        {check['reason']}")
        elapsed = time.monotonic() - started
        print(f"demo finished in {elapsed:.1f}s: install, delta update and automatic rollback verified")
        return ExitCode.OK
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL
    finally:
        pid_file = client_dir / "data" / "temp" / "app.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
