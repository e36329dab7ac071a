"""The publisher's failure paths: a refused request prints one line, exits non-zero and
leaves REPO_DIR exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinnacle_updates.repo_tools.keys import create_keys
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import run_cli, tree_digest, write_tree


@pytest.fixture
def published(repo: Repository, keys_dir: Path, tmp_path: Path) -> Path:
    src = write_tree(tmp_path / "src", {"bin/app": "#!/bin/sh\necho 1\n"})
    run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "stable",
            "--version", "1.0", "--type", "minor", "--platform", "any", str(src))
    return src


def _refused(*args: str) -> str:
    proc = run_cli("pinnacle-release", *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def _publish_args(repo: Repository, keys: Path, *extra: str) -> list[str]:
    return ["publish", str(repo.path), "--keys", str(keys), "--channel", "stable", "--version", "2.0",
            "--type", "minor", "--platform", "any", *extra]


def test_memory_budget_infinite_is_one_line(repo: Repository, keys_dir: Path, published: Path) -> None:
    before = tree_digest(repo.path)
    _refused(*_publish_args(repo, keys_dir, "--memory-budget", "inf", str(published)))
    assert tree_digest(repo.path) == before


def test_notes_not_utf8_is_one_line(repo: Repository, keys_dir: Path, published: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_bytes(b"\xff\xfe broken")
    before = tree_digest(repo.path)
    _refused(*_publish_args(repo, keys_dir, "--notes", str(notes), str(published)))
    assert tree_digest(repo.path) == before


def test_keys_json_with_a_list_is_one_line(repo: Repository, keys_dir: Path, published: Path,
                                           tmp_path: Path) -> None:
    bad = tmp_path / "badkeys"
    bad.mkdir()
    (bad / "keys.json").write_text(json.dumps({"format": 1, "keys": [], "roles": {}}))
    before = tree_digest(repo.path)
    _refused(*_publish_args(repo, bad, str(published)))
    assert tree_digest(repo.path) == before


def test_publish_into_missing_repo_creates_nothing(keys_dir: Path, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a": "x"})
    missing = Repository(tmp_path / "nosuch")
    _refused(*_publish_args(missing, keys_dir, str(src)))
    assert not missing.path.exists()


def test_malformed_snapshot_is_one_line(repo: Repository, keys_dir: Path, published: Path) -> None:
    ts = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())
    path = repo.metadata_dir / f"{ts['signed']['meta']['snapshot.json']['version']}.snapshot.json"
    doc = json.loads(path.read_bytes())
    del doc["signed"]["meta"]["stable.json"]
    path.write_text(json.dumps(doc))
    before = tree_digest(repo.path)
    _refused("refresh", str(repo.path), "--keys", str(keys_dir))
    _refused("status", str(repo.path))
    assert tree_digest(repo.path) == before


@pytest.mark.parametrize("config", [{"expiry_days": {"snapshot": 1e400}}, {"expiry_days": {"snapshot": -5}}])
def test_bad_expiry_in_config_is_refused(repo: Repository, keys_dir: Path, published: Path,
                                         config: dict[str, object]) -> None:
    (repo.path / "pinnacle-repo.json").write_text(json.dumps(config))
    before = tree_digest(repo.path)
    _refused("refresh", str(repo.path), "--keys", str(keys_dir), "--force")
    assert tree_digest(repo.path) == before


@pytest.mark.parametrize("verb", ["publish", "refresh", "yank"])
def test_keys_the_repository_does_not_trust_are_refused(repo: Repository, keys_dir: Path, published: Path,
                                                        tmp_path: Path, verb: str) -> None:
    other = tmp_path / "other-keys"
    create_keys(other, passphrase=None)
    args = {"publish": _publish_args(repo, other, str(published)),
            "refresh": ["refresh", str(repo.path), "--keys", str(other)],
            "yank": ["yank", str(repo.path), "--keys", str(other), "--channel", "stable", "--version", "1.0",
                     "--reason", "x"]}[verb]
    if verb == "yank":  # something to go back to, published with the right keys
        run_cli("pinnacle-release", *_publish_args(repo, keys_dir, str(published)))
    before = tree_digest(repo.path)
    _refused(*args)
    assert tree_digest(repo.path) == before


def test_file_errors_inside_an_operation_name_the_file_not_the_lock(repo: Repository, keys_dir: Path,
                                                                    source) -> None:  # type: ignore[no-untyped-def]
    run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "beta",
            "--version", "1.0.0", "--type", "patch", "--platform", "any", str(source("1.0.0")))
    for artifact in (repo.targets_dir / "beta").rglob("*.full.tar.zst"):
        artifact.unlink()
    proc = run_cli("pinnacle-release", "promote", str(repo.path), "--keys", str(keys_dir), "--from", "beta",
                   "--to", "stable", "--version", "1.0.0", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "cannot lock" not in line and "full.tar.zst" in line, line
