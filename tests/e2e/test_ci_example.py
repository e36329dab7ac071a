"""The example CI pipeline (examples/ci/publish.sh) end to end, with only online keys present.

The key ceremony creates every key and the repository; CI then gets a tarball of ``keys.json``
and the online keys (as a secret would carry it), publishes to beta, promotes to stable,
refreshes, and uploads to a public directory that a real client installs from.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys
from pinnacle_updates.repo_tools.store import Repository
from tests.client.test_client_attacks import Client
from tests.conftest import ROOT

SCRIPT = ROOT / "examples" / "ci" / "publish.sh"
WORKFLOW = ROOT / "examples" / "ci" / "publish.yml"
SECRET = "ci-secret-passphrase"
ONLINE = ("timestamp", "snapshot", "stable", "beta", "alpha")


def _tarball(keys_dir: Path, roles: tuple[str, ...]) -> str:
    store = KeyStore(keys_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(keys_dir / "keys.json", arcname="keys.json")
        for entry in store.keys.values():
            if entry.role in roles:
                tar.add(keys_dir / entry.private_file, arcname=entry.private_file)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def ceremony(tmp_path: Path) -> tuple[Path, Repository]:
    keys = tmp_path / "ceremony-keys"
    create_keys(keys, SECRET, root_threshold=2, root_keys=3)
    repo = Repository(tmp_path / "repo-state")
    ops.init_repository(repo, KeyStore(keys, passphrase=lambda role: SECRET))
    return keys, repo


def _run(tmp_path: Path, repo: Repository, keys_b64: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACLE_")}
    env.update(REPO_DIR=str(repo.path), PUBLIC_DIR=str(tmp_path / "public"), PINNACLE_ONLINE_KEYS_B64=keys_b64,
               PINNACLE_KEY_PASSPHRASE=SECRET, PINNACLE_RELEASE=f"{sys.executable} -m pinnacle_updates.repo_tools")
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_pipeline_publishes_promotes_and_refreshes_with_online_keys_only(ceremony, tmp_path: Path, source,
                                                                         serve) -> None:  # type: ignore[no-untyped-def]
    keys, repo = ceremony
    online = _tarball(keys, ONLINE)
    steps = [("release", "1.0.0", str(source("1.0.0"))), ("promote", "1.0.0"), ("refresh",)]
    for step in steps:
        proc = _run(tmp_path, repo, online, *step)
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
    public = tmp_path / "public"
    assert (public / "metadata" / "timestamp.json").read_bytes() == (repo.metadata_dir / "timestamp.json").read_bytes()
    assert repo.root_versions() == [1] and repo.load().targets.signed.version == 1  # offline roles untouched
    client = Client(tmp_path / "install")
    client("init", "--repo", serve(public).url, "--root", str(public / "metadata" / "1.root.json"))
    client("install")
    assert client.status()["version"] == "1.0.0"


def test_pipeline_refuses_offline_keys_and_bad_usage(ceremony, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys, repo = ceremony
    with_root = _run(tmp_path, repo, _tarball(keys, (*ONLINE, "root")), "refresh")
    assert with_root.returncode == 2 and "root or targets private key" in with_root.stderr
    assert _run(tmp_path, repo, _tarball(keys, ONLINE), "launch").returncode == 2
    assert not (tmp_path / "public").exists()


def test_workflow_runs_only_modes_the_script_has() -> None:
    modes = set(re.findall(r"publish\.sh (\w+)", WORKFLOW.read_text()))
    assert modes == {"release", "promote", "refresh"}
    script = SCRIPT.read_text()
    assert all(f"    {mode})" in script for mode in modes)
