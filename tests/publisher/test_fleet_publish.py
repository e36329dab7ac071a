"""Publisher fleet verbs: ``rollout`` and ``yank`` and the publish/promote fleet options, through
the real ``pinnacle-release`` CLI: the signed index fields they write, online keys only, and
refusals that are one line with the repository unchanged (tree digest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pinnacle_updates.formats.index import ChannelIndex
from pinnacle_updates.formats.rollout import Schedule
from pinnacle_updates.repo_tools import fleet
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import result_json, run_cli, tree_digest


def _publish(repo: Repository, keystore: KeyStore, source: Callable[..., Path], version: str, *,
             kind: str = "patch", channel: str = "stable", **extra: object) -> None:
    ops.publish(repo, keystore, ops.PublishRequest(channel, version, kind, "any", source(version), deltas=0,
                                                   **extra))  # type: ignore[arg-type]


def _index(repo: Repository, channel: str = "stable") -> ChannelIndex:
    return repo.channel_index(repo.load(), channel)


def _release(repo: Repository, version: str, channel: str = "stable"):  # type: ignore[no-untyped-def]
    found = _index(repo, channel).find(version, "any")
    assert found is not None
    return found


def _online_keys(keys_dir: Path, tmp_path: Path) -> Path:
    """A copy of the key directory without root and targets keys (what CI holds)."""
    online = tmp_path / "online-keys"
    online.mkdir()
    for f in keys_dir.iterdir():
        if not f.name.startswith(("root-", "targets-")):
            (online / f.name).write_bytes(f.read_bytes())
    return online


def _release_cli(repo: Repository, keys: Path, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli("pinnacle-release", args[0], str(repo.path), "--keys", str(keys), *args[1:], check=check)


def test_rollout_lifecycle_with_online_keys_only(repo: Repository, keystore: KeyStore, keys_dir: Path,
                                                 source, tmp_path: Path) -> None:
    online = _online_keys(keys_dir, tmp_path)
    _publish(repo, keystore, source, "1.0.0")
    src = source("1.1.0")
    schedule = tmp_path / "waves.json"
    schedule.write_text(json.dumps([{"after": "1h", "percent": 1}, {"after": "1d", "percent": 15}]))
    out = run_cli("pinnacle-release", "publish", str(repo.path), str(src), "--keys", str(online), "--channel",
                  "stable", "--version", "1.1.0", "--type", "minor", "--platform", "any", "--rollout", str(schedule),
                  "--min-version", "1.0.0", "--no-ramp", "--json")
    release = result_json(out.stdout)["release"]
    assert release["rollout"]["schedule"]["waves"][0] == {"after": 3600, "percent": 1}
    assert release["rollout"]["start"] == release["published"] and release["rollout"]["state"] == "active"
    assert (release["min_version"], release["ramp"]) == ("1.0.0", False)

    def rollout(*args: str) -> dict:
        proc = _release_cli(repo, online, "rollout", "--channel", "stable", "--version", "1.1.0", *args, "--json")
        return json.loads(proc.stdout)["releases"][0]

    assert rollout("--percent", "50")["rollout"]["schedule"] == {"type": "fixed", "percent": 50}
    paused = rollout("--pause")["rollout"]
    assert paused["state"] == "paused" and paused["paused_percent"] == 50 and paused["paused_at"]
    assert rollout("--resume")["rollout"]["state"] == "active"
    assert rollout("--complete")["rollout"]["percent_now"] == 100
    assert _release(repo, "1.1.0").rollout.state.value == "complete"
    status = run_cli("pinnacle-release", "status", str(repo.path)).stdout
    assert "rollout complete 100%" in status and "min_version 1.0.0" in status

    yanked = _release_cli(repo, online, "yank", "--channel", "stable", "--version", "1.1.0", "--reason",
                          "crashes on start").stdout
    assert "YANKED (crashes on start)" in yanked
    assert _release(repo, "1.1.0").yanked.reason == "crashes on start"
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_ab_test_at_publish_and_its_end(repo: Repository, keystore: KeyStore, source) -> None:
    _publish(repo, keystore, source, "1.0.0")
    _publish(repo, keystore, source, "1.1.0", ab_test_percentage=20.0, rollout=None)
    assert _release(repo, "1.1.0").ab_testing.test_group_percentage == 20  # type: ignore[union-attr]
    with pytest.raises(PublishRefused, match="no rollout: it is already complete"):
        fleet.rollout(repo, keystore, "stable", "1.1.0", complete=True)
    fleet.rollout(repo, keystore, "stable", "1.1.0", schedule=fleet.schedule_option(None, 100))
    fleet.rollout(repo, keystore, "stable", "1.1.0", complete=True)
    assert _release(repo, "1.1.0").ab_testing is None  # complete ends the A/B test


def test_promote_starts_a_fresh_rollout_and_refuses_yanked(repo: Repository, keystore: KeyStore, source,
                                                           tmp_path: Path) -> None:
    _publish(repo, keystore, source, "1.0.0", channel="beta", rollout=Schedule.fixed(5))
    _publish(repo, keystore, source, "1.1.0", channel="beta")
    ops.promote(repo, keystore, "beta", "stable", "1.0.0")
    assert _release(repo, "1.0.0").rollout is None
    ops.promote(repo, keystore, "beta", "stable", "1.1.0", rollout=Schedule.fixed(10))
    assert _release(repo, "1.1.0").rollout.schedule.percent == 10  # type: ignore[union-attr]
    fleet.yank(repo, keystore, "beta", "1.1.0", "bad")
    ops.publish(repo, keystore, ops.PublishRequest("alpha", "0.1.0", "patch", "any", source("0.1.0"), deltas=0))
    before = tree_digest(repo.path)
    with pytest.raises(PublishRefused, match="yanked"):
        ops.promote(repo, keystore, "beta", "alpha", "1.1.0")
    assert tree_digest(repo.path) == before


@pytest.mark.parametrize(("args", "needle"), [
    (("rollout", "--version", "1.1.0", "--schedule", "{decreasing}"), "percentages must not decrease"),
    (("rollout", "--version", "1.1.0", "--percent", "150"), "--percent: 150 is outside 0-100"),
    (("rollout", "--version", "1.1.0", "--percent", "-1"), "outside 0-100"),
    (("rollout", "--version", "9.9.9", "--percent", "5"), "stable has no release 9.9.9"),
    (("rollout", "--version", "1.1.0", "--resume"), "not paused"),
    (("rollout", "--version", "1.1.0", "--pause", "--complete"), "exactly one of"),
    (("rollout", "--version", "1.0.0", "--pause"), "has no rollout to pause"),
    (("rollout", "--version", "not a version", "--pause"), "not a PEP 440 version"),
    (("yank", "--version", "9.9.9", "--reason", "x"), "stable has no release 9.9.9"),
    (("yank", "--version", "1.1.0", "--reason", " "), "--reason must say why"),
    (("publish", "--version", "1.2.0", "--type", "patch", "--platform", "any", "--percent", "101", "{src}"),
     "outside 0-100"),
    (("publish", "--version", "1.2.0", "--type", "patch", "--platform", "any", "--min-version", "2.0", "{src}"),
     "--min-version 2.0 is newer than the release 1.2.0"),
    (("publish", "--version", "1.2.0", "--type", "patch", "--platform", "any", "--ab-test-percentage", "0", "{src}"),
     "must be between 0 and 100"),
])
def test_bad_input_is_one_line_and_changes_nothing(repo: Repository, keystore: KeyStore, keys_dir: Path, source,
                                                   tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    _publish(repo, keystore, source, "1.0.0")
    _publish(repo, keystore, source, "1.1.0", rollout=Schedule.fixed(10))
    decreasing = tmp_path / "decreasing.json"
    decreasing.write_text(json.dumps({"type": "waves", "waves": [{"after": "1h", "percent": 20},
                                                                 {"after": "2h", "percent": 5}]}))
    src = source("1.2.0")
    argv = [a.replace("{decreasing}", str(decreasing)).replace("{src}", str(src)) for a in args]
    before = tree_digest(repo.path)
    proc = _release_cli(repo, keys_dir, argv[0], "--channel", "stable", *argv[1:], check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert tree_digest(repo.path) == before


def test_yanking_the_only_release_is_refused(repo: Repository, keystore: KeyStore, keys_dir: Path, source) -> None:
    _publish(repo, keystore, source, "1.0.0")
    before = tree_digest(repo.path)
    proc = _release_cli(repo, keys_dir, "yank", "--channel", "stable", "--version", "1.0.0", "--reason", "bad",
                        check=False)
    assert proc.returncode != 0 and "only release for any left" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_digest(repo.path) == before
    # with a second release the first can go; then the second is the last one standing
    _publish(repo, keystore, source, "1.1.0")
    _release_cli(repo, keys_dir, "yank", "--channel", "stable", "--version", "1.0.0", "--reason", "bad")
    before = tree_digest(repo.path)
    again = _release_cli(repo, keys_dir, "yank", "--channel", "stable", "--version", "1.1.0", "--reason", "x",
                         check=False)
    assert again.returncode != 0 and "only release" in again.stderr and tree_digest(repo.path) == before
    twice = _release_cli(repo, keys_dir, "yank", "--channel", "stable", "--version", "1.0.0", "--reason", "x",
                         check=False)
    assert twice.returncode != 0 and "already yanked" in twice.stderr and tree_digest(repo.path) == before


def test_every_commit_signs_the_time_clients_use_as_clock_floor(repo: Repository, keystore: KeyStore,
                                                                source) -> None:
    _publish(repo, keystore, source, "1.0.0")
    ops.refresh(repo, keystore)
    signed = json.loads((repo.path / "metadata" / "timestamp.json").read_bytes())["signed"]
    assert signed["pinnacle_signed_at"] == ops.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ") or (
        signed["pinnacle_signed_at"] < ops.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert signed["pinnacle_signed_at"] < signed["expires"]
