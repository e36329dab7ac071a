"""Repository integrity properties: every tampered byte is caught; SIGKILL during publish never breaks it."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.archive import Archive
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import ROOT, write_tree


def fetchable_files(repo: Repository) -> list[Path]:
    """What a client can fetch: the root chain, current metadata, every target current metadata references."""
    state = repo.load()
    md = repo.metadata_dir
    files = [md / f"{n}.root.json" for n in repo.root_versions()]
    files.append(md / "timestamp.json")
    files.append(md / f"{state.snapshot.signed.version}.snapshot.json")
    files.append(md / f"{state.targets.signed.version}.targets.json")
    for name, role in state.channels.items():
        files.append(md / f"{role.signed.version}.{name}.json")
        for path, info in role.signed.targets.items():
            files.append(repo.target_location(path, info.hashes["sha256"]))
        archive = Archive(repo, state, name, role)
        for bin_name, bin_md in archive.bins():
            files.append(md / f"{bin_md.signed.version}.{bin_name}.json")
            for path, info in bin_md.signed.targets.items():
                files.append(repo.target_location(path, info.hashes["sha256"]))
        for release in archive.records():
            files += [repo.target_location(ref.path, ref.sha256) for ref in release.targets()]
    return files


@pytest.fixture
def repo(tmp_path: Path, keystore: KeyStore) -> Repository:
    """A repository whose live window is 1, so every publish also archives (bins, records)."""
    repository = Repository(tmp_path / "repo")
    ops.init_repository(repository, keystore, live_window=1, archive_bits=1)
    return repository


def test_flipping_any_byte_of_any_fetchable_file_fails_verify(repo: Repository, keystore: KeyStore, source) -> None:
    for channel, version in (("stable", "1.0"), ("stable", "1.1"), ("beta", "2.0b1")):
        ops.publish(repo, keystore, ops.PublishRequest(channel, version, "patch", "any", source(version)))
    now = ops.utcnow()
    assert verify_repository(repo.path, now).problems == []
    assert verify_repository(repo.path, now).archived == 1
    rng = random.Random(1234)
    files = fetchable_files(repo)
    assert len(files) >= 19  # root chain, 6 roles, 2 bins, indexes, live and archived releases (record, files)
    flips = 0
    for path in files:
        original = path.read_bytes()
        positions = {0, len(original) // 2, len(original) - 1, rng.randrange(len(original))}
        for pos in sorted(positions):
            for mask in (0x01, 0x20):
                data = bytearray(original)
                data[pos] ^= mask
                path.write_bytes(bytes(data))
                try:
                    problems = verify_repository(repo.path, now).problems
                finally:
                    path.write_bytes(original)
                assert problems, f"flipping byte {pos} (^{mask:#x}) of {path.relative_to(repo.path)} went unnoticed"
                flips += 1
    assert flips >= 100
    assert verify_repository(repo.path, now).problems == []


def _publish_cmd(repo: Path, keys: Path, src: Path, version: str) -> list[str]:
    return [sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", str(repo), "--keys", str(keys),
            "--channel", "stable",
            "--version", version, "--type", "patch", "--platform", "linux-x86_64", str(src)]


@pytest.mark.slow
def test_publish_killed_at_random_moments_never_breaks_the_repository(
    repo: Repository, keys_dir: Path, tmp_path: Path, serve
) -> None:
    rng = random.Random(20261126)
    src = write_tree(tmp_path / "src", {"bin/app": "#!/bin/sh\necho hi\n", "lib/blob": rng.randbytes(3 << 20)})
    served = serve(repo.path)
    client_dir = tmp_path / "client-metadata"
    client_dir.mkdir()
    root = (repo.metadata_dir / "1.root.json").read_bytes()

    # Calibrate: how long a publish takes here (the faster of two), so kills spread over its whole run.
    durations = []
    for version in ("0.0.1", "0.0.2"):
        started = time.monotonic()
        subprocess.run(_publish_cmd(repo.path, keys_dir, src, version), check=True, cwd=ROOT, capture_output=True)
        durations.append(time.monotonic() - started)
    duration = min(durations)

    killed = completed = torn = 0
    for n in range(1, 51):
        (src / "share").mkdir(exist_ok=True)
        (src / "share" / "n").write_text(str(n))
        proc = subprocess.Popen(_publish_cmd(repo.path, keys_dir, src, f"1.0.{n}"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Half the kills anywhere, half late in the run where files are written.
        delay = rng.uniform(0, 0.8 * duration) if n % 2 else rng.uniform(0.6 * duration, 1.2 * duration)
        try:
            proc.wait(timeout=delay)
            completed += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        committed = repo.load().channels["stable"].signed.version
        if any(repo.metadata_dir.glob(f"{committed + 1}.stable.json")):
            torn += 1  # killed between writing the channel role and the timestamp
        problems = verify_repository(repo.path, ops.utcnow()).problems
        assert problems == [], f"after publish #{n}: {problems}"
        updater = Updater(str(client_dir), served.url + "metadata/", None, served.url + "targets/", bootstrap=root)
        updater.refresh()
        assert updater.get_targetinfo("stable/index.json") is not None
    assert killed >= 15, f"only {killed} of 50 publishes were killed"
    print(f"publish crash loop: {killed} killed ({torn} between role and timestamp writes), {completed} completed")

    final = subprocess.run(_publish_cmd(repo.path, keys_dir, src, "2.0.0"), cwd=ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert verify_repository(repo.path, ops.utcnow(), deep=True).problems == []
    index = repo.channel_index(repo.load(), "stable")
    assert index.latest("linux-x86_64").version == "2.0.0"  # type: ignore[union-attr]
