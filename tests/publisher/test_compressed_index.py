"""The compressed channel index (``<channel>/index.json.zst``, issue 23) on the publisher side.

Every operation that writes a channel index (init, publish, rollout, halt/resume, yank, promote,
feedback, archiving out of the live window, channel add) also signs its zstd form, one frame of
exactly the JSON's bytes with the size declared; operations that re-sign a role without a new
index (key rotation, refresh) keep both listed. ``verify`` reports a .zst that is not the JSON,
and ``sync`` carries it like every target.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import zstandard

from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.index import ChannelIndex, Feedback, compressed_index_path, index_path
from pinnacle_updates.formats.rollout import Schedule
from pinnacle_updates.repo_tools import channels, fleet, rotate, sync
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.core import metadata as meta
from pinnacle_updates.repo_tools.errors import VerificationFailed
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.client.repo_edits import resign, sign_target
from tests.conftest import run_cli

Source = Callable[..., Path]


def _pair(repo: Repository, channel: str) -> tuple[bytes, bytes]:
    """The committed ``index.json`` and ``index.json.zst`` of ``channel``, after checking the .zst is
    one frame declaring its size and holding exactly the JSON (nothing after it)."""
    targets = repo.load().channel(channel).signed.targets
    data, packed = (repo.target_location(p, targets[p].hashes["sha256"]).read_bytes()
                    for p in (index_path(channel), compressed_index_path(channel)))
    params = zstandard.get_frame_parameters(packed)
    assert params.content_size == len(data) and not params.has_checksum
    reader = zstandard.ZstdDecompressor().decompressobj()
    assert reader.decompress(packed) == data and reader.eof and reader.unused_data == b""
    return data, packed


def test_every_index_writer_signs_the_compressed_index(
    tmp_path: Path, keys_dir: Path, source: Source,
) -> None:
    keys = KeyStore(shutil.copytree(keys_dir, tmp_path / "keys"))  # channel add writes a key: a private copy
    repo = Repository(tmp_path / "repo")
    ops.init_repository(repo, keys, live_window=2)
    signed: dict[str, int] = {}

    def step(channel: str, *releases: str) -> None:
        """This step signed a new channel role, whose pair is sound and holds the expected releases
        (an index may come out byte for byte as before: a resume in the second of its pause)."""
        version = repo.load().channel(channel).signed.version
        assert version > signed.get(channel, 0)
        signed[channel] = version
        data, _ = _pair(repo, channel)
        assert [r.version for r in ChannelIndex.from_bytes(data).releases] == list(releases)

    for channel in ("stable", "beta", "alpha"):  # init
        step(channel)
    for version in ("1.0.0", "1.1.0"):
        ops.publish(repo, keys, ops.PublishRequest("stable", version, "patch", "any", source(version)))
    step("stable", "1.0.0", "1.1.0")
    fleet.rollout(repo, keys, "stable", "1.1.0", schedule=Schedule.fixed(10))
    step("stable", "1.0.0", "1.1.0")
    fleet.rollout(repo, keys, "stable", "1.1.0", pause=True)  # what watch's halt does
    step("stable", "1.0.0", "1.1.0")
    fleet.rollout(repo, keys, "stable", "1.1.0", resume=True)
    step("stable", "1.0.0", "1.1.0")
    fleet.set_feedback(repo, keys, "stable", Feedback("https://collector.example/v1/reports"))
    step("stable", "1.0.0", "1.1.0")
    ops.promote(repo, keys, "stable", "beta", "1.0.0")
    step("beta", "1.0.0")
    ops.publish(repo, keys, ops.PublishRequest("stable", "1.2.0", "patch", "any", source("1.2.0")))
    step("stable", "1.1.0", "1.2.0")  # 1.0.0 archived out of the live window of 2
    fleet.yank(repo, keys, "stable", "1.1.0", "breaks the cache")
    step("stable", "1.1.0", "1.2.0")
    channels.add_channel(repo, keys, "nightly")
    step("nightly")
    rotate.rotate_key(repo, keys, "stable")  # re-signed by the new key: both still listed
    _pair(repo, "stable")
    report = verify_repository(repo.path, ops.utcnow())
    assert report.problems == [] and report.warnings == []


def test_the_compressed_index_is_deterministic(repo: Repository) -> None:
    index = repo.channel_index(repo.load(), "stable")
    first = ops._set_index(meta.new_channel_role(meta.expiry(ops.utcnow(), 1)), "stable", index)
    second = ops._set_index(meta.new_channel_role(meta.expiry(ops.utcnow(), 1)), "stable", index)
    assert first == second and [p for p, _, _ in first] == [index_path("stable"), compressed_index_path("stable")]


def _sign_packed(repo: Repository, keys: KeyStore, packed: bytes) -> None:
    sign_target(repo, keys, compressed_index_path("stable"), packed)


def test_verify_reports_a_compressed_index_that_is_not_the_json(
    repo: Repository, keystore: KeyStore, source: Source,
) -> None:
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0")))
    data, _ = _pair(repo, "stable")
    _sign_packed(repo, keystore, zstandard.compress(data.replace(b'"type":"patch"', b'"type":"major"')))
    proc = run_cli("pinnacle-release", "verify", str(repo.path), check=False)
    assert proc.returncode == VerificationFailed.exit_code == ExitCode.VERIFICATION, proc.stderr
    assert ("stable/index.json.zst: decompresses to other bytes than stable/index.json (clients that read it "
            "would see another index)") in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    _sign_packed(repo, keystore, b"not zstd")
    problems = verify_repository(repo.path, ops.utcnow()).problems
    assert len(problems) == 1 and problems[0].startswith("stable/index.json.zst: not readable as zstd ("), problems
    _sign_packed(repo, keystore, zstandard.compress(data) + zstandard.compress(b" "))  # a frame too many
    problems = verify_repository(repo.path, ops.utcnow()).problems
    assert len(problems) == 1 and "decompresses to other bytes than stable/index.json" in problems[0], problems


def test_verify_accepts_a_repository_without_the_compressed_index(
    repo: Repository, keystore: KeyStore, source: Source,
) -> None:
    """An older publisher's repository: no .zst listed (its stored file is then an unreferenced leftover)."""
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0")))
    resign(repo, keystore, lambda targets: targets.pop(compressed_index_path("stable")))
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_sync_carries_the_compressed_index(
    tmp_path: Path, repo: Repository, keystore: KeyStore, source: Source,
) -> None:
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0")))
    dest = tmp_path / "mirror"
    sync.sync(repo.path, dest)
    _, packed = _pair(repo, "stable")
    assert _pair(Repository(dest), "stable")[1] == packed
    assert verify_repository(dest, ops.utcnow()).problems == []
