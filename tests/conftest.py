"""Shared fixtures: real keys, real repositories, a real HTTP server process on 127.0.0.1 (nginx by default)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys
from pinnacle_updates.repo_tools.store import Repository
from tests.nginx_server import NginxServer, find_nginx

ROOT = Path(__file__).resolve().parent.parent


def run_cli(tool: str, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``pinnacle-release``/``pinnacle-update`` as a user would: a separate process."""
    module = {"pinnacle-release": "pinnacle_updates.repo_tools", "pinnacle-update": "pinnacle_updates.client"}[tool]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def result_json(stdout: str) -> Any:
    """What a command run with ``--json`` printed as its result: stdout is that one document, or, from
    a command that shows progress (``formats.progress``), JSON-line events and the result last."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return json.loads(stdout.splitlines()[-1])


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create files (parents included); a value starting with '#!' gets the execute bit."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        if data.startswith(b"#!"):
            path.chmod(0o755)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its content (or link target): to prove nothing changed."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    create_keys(path, passphrase=None)
    return path


@pytest.fixture
def keystore(keys_dir: Path) -> KeyStore:
    return KeyStore(keys_dir)


@pytest.fixture
def repo(tmp_path: Path, keystore: KeyStore) -> Repository:
    repository = Repository(tmp_path / "repo")
    ops.init_repository(repository, keystore)
    return repository


@pytest.fixture
def source(tmp_path: Path) -> Callable[..., Path]:
    """``source(version, **extra_files)`` makes a small app tree that differs per version."""
    counter = iter(range(10_000))

    def make(version: str = "1.0.0", files: dict[str, bytes | str] | None = None) -> Path:
        root = tmp_path / f"src-{version}-{next(counter)}"
        base: dict[str, bytes | str] = {
            "bin/app": f"#!/bin/sh\necho app {version}\n",
            "lib/data.bin": bytes(range(256)) * 64,
            "share/VERSION": version,
        }
        base.update(files or {})
        return write_tree(root, base)

    return make


class PythonServer:
    """A ``pinnacle-release serve`` child process and the base URL it printed."""

    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


ServedRepo = NginxServer | PythonServer
"""What ``start_server`` returns: ``.url``, ``.stop()`` (idempotent), ``.process``."""

SERVER_ENV = "PINNACLE_TEST_SERVER"


def server_kind() -> str:
    """Which server the suite's repositories are served by: ``nginx`` (the default; a plain
    ``pinnacle-release serve`` when nginx is not installed, except on CI, where that fails), or
    ``python`` with ``PINNACLE_TEST_SERVER=python``."""
    wanted = os.environ.get(SERVER_ENV, "").strip().lower() or "nginx"
    if wanted not in ("nginx", "python"):
        raise AssertionError(f"{SERVER_ENV}={wanted!r}: use nginx or python")
    if wanted == "nginx" and find_nginx() is None:
        if os.environ.get("CI", "").lower() == "true" or os.environ.get(SERVER_ENV):
            raise AssertionError(f"nginx is not installed (apt-get install nginx-light); CI and {SERVER_ENV}=nginx "
                                 f"need it, {SERVER_ENV}=python uses the Python server")
        return "python"
    return wanted


def start_server(directory: Path, kind: str | None = None) -> ServedRepo:
    """Serve ``directory`` on 127.0.0.1: nginx, or ``pinnacle-release serve DIR --port 0`` as a
    child process (its URL comes from its first line); ``kind`` defaults to :func:`server_kind`."""
    if (kind or server_kind()) == "nginx":
        return NginxServer(directory)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinnacle_updates.repo_tools", "serve", str(directory), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return PythonServer(line.split()[1], proc)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], ServedRepo]]:
    started: list[ServedRepo] = []

    def _serve(directory: Path) -> ServedRepo:
        served = start_server(directory)
        started.append(served)
        return served

    yield _serve
    for served in started:
        served.stop()
