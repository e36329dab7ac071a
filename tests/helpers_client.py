"""Real parts for client tests: a publisher repository built with the ``pinnacle-release`` CLI,
a real HTTP server subprocess on 127.0.0.1 (nginx by default), and initialised install directories."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinnacle_updates.client import config
from pinnacle_updates.client.installer import Installer
from tests.conftest import start_server, tree_digest

__all__ = ["tree_digest"]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def release_cli(*args: str) -> str:
    proc = subprocess.run(
        [PY, "-m", "pinnacle_updates.repo_tools.cli",
         *args], cwd=ROOT, env=env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"pinnacle-release {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Repo:
    dir: Path
    keys: Path

    @property
    def root_json(self) -> Path:
        return self.dir / "metadata" / "1.root.json"


def make_repo(base: Path) -> Repo:
    base = base.absolute()
    base.mkdir(parents=True, exist_ok=True)
    repo = Repo(base / "repo", base / "keys")
    release_cli("keys", "init", str(repo.keys), "--insecure-plaintext")
    release_cli("init", str(repo.dir), "--keys", str(repo.keys))
    return repo


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if rel.startswith("bin/"):
            path.chmod(0o755)


def app_files(version: str, healthy: bool = True, n_files: int = 5, size: int = 200) -> dict[str, str | bytes]:
    """A small app whose every file differs between versions (so a mix of two is detectable)."""
    files: dict[str, str | bytes] = {
        "bin/app": f"#!/bin/sh\necho app {version}\n",
        "VERSION": f"{version}\n",
    }
    for i in range(n_files):
        files[f"lib/part{i:03d}.dat"] = _pseudo_random(f"{version}/{i}", size)
    if healthy:
        files["healthy"] = "ok\n"
    return files


def _pseudo_random(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def publish(
    repo: Repo,
    version: str,
    files: Mapping[str, str | bytes],
    *,
    type: str = "patch",
    channel: str = "stable",
    platform: str = "any",
    entry_point: str | None = None,
    migration: str | None = None,
) -> None:
    src = repo.dir.parent / f"src-{channel}-{version}"
    write_tree(src, files)
    extra = ["--entry-point", entry_point] if entry_point else []
    extra += ["--migration", migration] if migration else []
    release_cli(
        "publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", channel,
        "--version", version, "--type", type, "--platform", platform, *extra,
    )  # fmt: skip


@contextlib.contextmanager
def serve(repo_dir: Path) -> Iterator[str]:
    """The suite's repository server (nginx, or ``pinnacle-release serve``: ``tests.conftest.start_server``);
    yields its base URL."""
    served = start_server(repo_dir)
    try:
        yield served.url
    finally:
        served.stop()


@contextlib.contextmanager
def hold_lock(install_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``DIR/lock`` until the block ends (the kernel drops it if it dies)."""
    code = ("import sys; from pinnacle_updates.formats import fsutil\n"
            f"with fsutil.exclusive_lock({str(install_dir / 'lock')!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([PY, "-c", code], cwd=ROOT, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def copy_install(template: Path, dest: Path) -> Path:
    """A private copy of an install directory a module fixture prepared once (links kept as links)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


def init_client(install_dir: Path, repo_url: str, repo: Repo, **settings: Any) -> Installer:
    defaults: dict[str, Any] = {
        "health_command": "test -f healthy",
        "health_interval": 0.0,
        "health_retries": 2,
    }
    defaults.update(settings)
    config.init(install_dir, repo_url, repo.root_json, "stable", "any", **defaults)
    return Installer(install_dir)
