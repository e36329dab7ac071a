"""``verify`` checks every file under ``targets/`` (issue 17, class 9) and never prints a raw control
character: superseded channel indexes and targets older retained metadata versions list are hashed,
files nobody references are reported (a warning when intact, a problem when corrupt or not regular
files), and names from the repository are shown escaped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import pyzstd

from pinnacle_updates.formats.delta_kinds import OpKind
from pinnacle_updates.formats.index import index_path
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.errors import VerificationFailed
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests import helpers_client as hc
from tests.client.test_delta_client import CHAIN, forge_delta, noise, publish_with, republish, rewrite_ops
from tests.conftest import run_cli
from tests.fixtures_repo import FixtureRepo, flip_byte


@pytest.fixture
def three_releases(repo: Repository, keystore: KeyStore, source) -> Repository:  # type: ignore[no-untyped-def]
    for version in ("1.0", "1.1", "1.2"):
        ops.publish(repo, keystore, ops.PublishRequest("stable", version, "patch", "any", source(version), deltas=0))
    return repo


def _superseded_indexes(repo: Repository) -> list[Path]:
    current = repo.load().channels["stable"].signed.targets[index_path("stable")].hashes["sha256"]
    found = sorted(p for p in (repo.targets_dir / "stable").glob("*.index.json") if not p.name.startswith(current))
    assert len(found) == 3  # init's empty index and one per earlier publish, kept for clients mid-update
    return found


def test_clean_repository_hashes_superseded_targets(three_releases: Repository) -> None:
    report = verify_repository(three_releases.path, ops.utcnow())
    assert report.problems == [] and report.warnings == []
    assert report.superseded_targets == 6  # the older indexes (JSON and .zst): every other target is still live
    on_disk = [p for p in three_releases.targets_dir.rglob("*") if p.is_file()]
    assert report.checked_targets == len(on_disk)


def test_a_corrupt_superseded_index_is_named(three_releases: Repository) -> None:
    old = _superseded_indexes(three_releases)[0]
    flip_byte(old, len(old.read_bytes()) // 2)
    problems = verify_repository(three_releases.path, ops.utcnow()).problems
    assert len(problems) == 1, problems
    assert "stable/index.json" in problems[0] and "listed by" in problems[0] and "differs" in problems[0]
    proc = run_cli("pinnacle-release", "verify", str(three_releases.path), check=False)
    assert proc.returncode == VerificationFailed.exit_code, proc.stderr
    assert "stable/index.json" in proc.stderr and "Traceback" not in proc.stderr


def test_unreferenced_files_warn_when_intact_and_fail_when_corrupt(three_releases: Repository,
                                                                   tmp_path: Path) -> None:
    repo = three_releases
    index = _superseded_indexes(repo)[0]
    # an orphan a killed publish leaves: a content-addressed file no metadata lists
    data = b'{"format": 1}\n'
    orphan = repo.targets_dir / "stable" / "any" / "9.9" / f"{hashlib.sha256(data).hexdigest()}.full.tar.zst"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(data)
    report = verify_repository(repo.path, ops.utcnow())
    assert report.problems == [] and len(report.warnings) == 1 and "no retained metadata" in report.warnings[0]
    proc = run_cli("pinnacle-release", "verify", str(repo.path))
    assert "warning:" in proc.stderr and "9.9" in proc.stderr and proc.stdout.startswith("ok:")
    flip_byte(orphan)  # corrupt: a publish of those bytes would reuse the file, so it is a problem
    problems = verify_repository(repo.path, ops.utcnow()).problems
    assert len(problems) == 1 and "does not match its name" in problems[0], problems
    orphan.unlink()
    # a symlink and a FIFO under targets/: problems, and the FIFO never blocks the audit
    os.symlink(index, repo.targets_dir / "stable" / "link.json")
    live = repo.load().channels["stable"].signed.targets[index_path("stable")].hashes["sha256"]
    live_index = repo.targets_dir / "stable" / f"{live}.index.json"
    shutil.move(live_index, tmp_path / "index.json")
    os.mkfifo(live_index)
    proc = run_cli("pinnacle-release", "verify", str(repo.path), "--json", check=False)
    assert proc.returncode == VerificationFailed.exit_code, proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert any("link.json: not a regular file" in p for p in problems), problems
    assert any(f"{live}.index.json: a FIFO, not a regular file" in p for p in problems), problems[0][:400]


def test_names_from_the_repository_are_escaped(tmp_path: Path) -> None:
    """A repository built by hand (the publisher refuses such names): a release whose tree holds an
    ESC sequence, a signed target and an unreferenced file with control characters in their paths."""
    fixture = FixtureRepo(tmp_path / "repo")
    fixture.publish("stable", "1.0.0", files={"\x1b[2J\x1b[31mred": b"x", "app": b"v1\n"})
    fixture.add_target("stable/\x1b]0;title\x07.bin", b"signed")
    fixture.add_target("stable/\u202etxt.exe", b"unsigned", sign=False)
    fixture.commit("stable")
    for args in ((), ("--json",)):
        proc = run_cli("pinnacle-release", "verify", str(fixture.path), *args, check=False)
        assert proc.returncode == VerificationFailed.exit_code, proc.stdout + proc.stderr
        output = proc.stdout + proc.stderr
        assert not any(c in output for c in "\x1b\x07\u202e"), output
        assert "Traceback" not in output
        if args:  # --json: the report (with its warnings) on stdout, the error line (problems in details) on stderr
            output = "\n".join([*json.loads(proc.stderr)["error"]["details"], *json.loads(proc.stdout)["warnings"]])
        assert "\\x1b]0;title\\x07.bin" in output  # the signed target nobody's index references
        assert "\\u202etxt.exe" in output  # the unreferenced file
        assert "\\x1b[2J\\x1b[31mred" in output  # the release tree: unsafe on its platform


def test_deep_applies_every_delta_and_names_one_with_wrong_output(tmp_path: Path) -> None:
    """``verify --deep`` applies each delta to its base with the shared appliers. A delta replaced by a
    well-formed one, properly signed, whose op rebuilds other bytes of the right size: TUF and the
    plain ``verify`` accept it; ``--deep`` names the release, the base and the file."""
    repo = hc.make_repo(tmp_path / "pub")
    for i, version in enumerate(CHAIN):
        publish_with(repo, version, i, deltas=2)
    clean = verify_repository(repo.dir, ops.utcnow(), deep=True)
    assert clean.problems == [] and clean.deltas == 3  # 1.1.0 from 1.0.0; 1.2.0 from 1.1.0 and from 1.0.0
    for whole_archive in (True, False):  # both container kinds, as the publisher builds them
        republish(repo, tmp_path, whole_archive=whole_archive)
        report = verify_repository(repo.dir, ops.utcnow(), deep=True)
        assert report.problems == [] and report.deltas == 3, report.problems

    wrong = pyzstd.compress(noise("not the release", 400_000), 19)  # lib/big.so is 400,000 bytes
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: rewrite_ops(data, {"lib/big.so": (OpKind.ZSTD, wrong)}))
    assert verify_repository(repo.dir, ops.utcnow()).problems == []  # signed and hashed: only applying shows it
    report = verify_repository(repo.dir, ops.utcnow(), deep=True)
    assert report.deltas == 2 and len(report.problems) == 1, report.problems
    assert report.problems[0].startswith("stable 1.1.0 (any): delta from 1.0.0: lib/big.so: "), report.problems
    proc = run_cli("pinnacle-release", "verify", "--deep", str(repo.dir), check=False)
    assert proc.returncode == VerificationFailed.exit_code, proc.stderr
    assert "lib/big.so" in proc.stderr and "Traceback" not in proc.stderr
