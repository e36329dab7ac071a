"""Fleet control end to end: a real repository published with the ``pinnacle-release`` CLI, a real
HTTP server process, real install directories driven by the ``pinnacle-update`` CLI (and the
continuous loop of the Python API, the unattended path)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import zstandard

from pinnacle_updates.client import AutoUpdater
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats.rollout import bucket, parse_schedule
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys
from pinnacle_updates.repo_tools.store import Repository
from tests.client.test_client_attacks import Client
from tests.conftest import result_json
from tests.helpers_client import Repo, app_files, make_repo, publish, release_cli, serve, write_tree


def _client(tmp_path: Path, name: str, url: str, repo: Repo, client_id: str) -> Client:
    client = Client(tmp_path / name)
    client("init", "--repo", url, "--root", str(repo.root_json), "--platform", "any")
    cfg = config_mod.load(client.dir)
    values = {**cfg.values, "client_id": client_id, "health_command": "test -f healthy", "health_interval": 0.0}
    config_mod.write(client.dir, config_mod.validate(values))  # a fixed id: which side of 50% it lands on
    return client


def _id_with_bucket(version: str, below: bool, channel: str = "stable") -> str:
    for i in range(10_000):
        cid = f"{i:032x}"
        if (bucket(cid, channel, version) < 50) == below:
            return cid
    raise AssertionError("no id found")


def _loop(client: Client) -> None:
    asyncio.run(AutoUpdater(client.dir).run_continuous_updates(iterations=1))


def test_half_rollout_then_yank_rolls_the_fleet_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", app_files("1.0.0"))
    with serve(repo.dir) as url:
        inside = _client(tmp_path, "inside", url, repo, _id_with_bucket("1.1.0", below=True))
        outside = _client(tmp_path, "outside", url, repo, _id_with_bucket("1.1.0", below=False))
        for c in (inside, outside):
            c("install")
            assert c.status()["version"] == "1.0.0"

        release_cli("publish", str(repo.dir), str(_src(repo, "1.1.0")), "--keys", str(repo.keys), "--channel",
                    "stable", "--version", "1.1.0", "--type", "patch", "--platform", "any", "--percent", "50")
        held = json.loads(outside("check", "--json").stdout)
        assert not held["update_available"] and "staged rollout at 50%" in held["reason"]
        assert held["fleet"]["releases"][-1]["eligible"] is False
        _loop(outside)
        _loop(inside)
        assert (inside.status()["version"], outside.status()["version"]) == ("1.1.0", "1.0.0")
        assert inside.status()["previous_version"] == "1.0.0"

        release_cli("yank", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", "1.1.0",
                    "--reason", "corrupts the cache")
        check = json.loads(inside("check", "--json").stdout)
        assert check["version"] == "1.0.0" and check["downgrade"] and check["auto"]
        assert "yanked: corrupts the cache" in check["reason"]
        _loop(inside)  # unattended: back to 1.0.0 through the other slot, nothing downloaded
        status = inside.status()
        assert (status["version"], status["slot"], status["state"]) == ("1.0.0", "a", "rolled_back")
        assert status["last_error"] == "yanked by the publisher: corrupts the cache"
        assert "yanked by the publisher: corrupts the cache" in inside("status").stdout
        history = [json.loads(line) for line in (inside.dir / "history.jsonl").read_text().splitlines()]
        yank = next(r for r in history if r["op"] == "yank")
        assert (yank["version"], yank["to_version"], yank["via"]) == ("1.1.0", "1.0.0", "rollback")
        assert history[-1]["op"] == "rollback" and "bad_version" not in history[-1]
        _loop(inside)
        assert inside.status()["version"] == "1.0.0"  # never back onto the yanked release
        _loop(outside)
        assert outside.status()["version"] == "1.0.0"
        assert "yanked: corrupts the cache" in outside("check").stdout

        # a security fix skips the ramp: everyone takes it on the first check, health-gated
        release_cli("publish", str(repo.dir), str(_src(repo, "1.1.1")), "--keys", str(repo.keys), "--channel",
                    "stable", "--version", "1.1.1", "--type", "security", "--platform", "any", "--percent", "0")
        for c in (inside, outside):
            _loop(c)
            assert c.status()["version"] == "1.1.1"


def test_yank_without_the_release_in_the_other_slot_installs_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        publish(repo, v, app_files(v))
    with serve(repo.dir) as url:
        c = _client(tmp_path, "c", url, repo, "0" * 32)
        c("install", "1.0.0")
        c("install", "1.2.0")  # other slot: 1.0.0
        release_cli("yank", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", "1.2.0",
                    "--reason", "memory leak")
        out = result_json(c("install", "--json").stdout)
        assert out["outcome"] == "committed" and out["version"] == "1.1.0" and out["path"] == "full"
        assert (c.dir / "current" / "VERSION").read_text().strip() == "1.1.0"
        history = [json.loads(line) for line in (c.dir / "history.jsonl").read_text().splitlines()]
        assert any(r["op"] == "yank" and r["via"] == "install" and "memory leak" in r["reason"] for r in history)


def test_ab_group_in_status_and_history_and_channel_switch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "0.9.0", app_files("0.9.0"), channel="beta")
    with serve(repo.dir) as url:
        test = _client(tmp_path, "t", url, repo, _id_with_bucket("1.1.0", below=True))
        control = _client(tmp_path, "c", url, repo, _id_with_bucket("1.1.0", below=False))
        release_cli("publish", str(repo.dir), str(_src(repo, "1.1.0")), "--keys", str(repo.keys), "--channel",
                    "stable", "--version", "1.1.0", "--type", "minor", "--platform", "any",
                    "--ab-test-percentage", "50")
        for c, group, version in ((test, "test", "1.1.0"), (control, "control", "1.0.0")):
            c("install")
            status = c.status()
            assert status["version"] == version and status["fleet"]["groups"] == {"1.1.0": group}
            assert f"A/B 1.1.0: {group} group" in c("status").stdout
            history = [json.loads(line) for line in (c.dir / "history.jsonl").read_text().splitlines()]
            assert any(r["op"] == "fleet" and r["groups"] == {"1.1.0": group} for r in history)

        # beta's newest (0.9.0) is older than the installed 1.1.0: no downgrade without the flag
        out = test("channel", "beta").stdout
        assert "staying on 1.1.0" in out and test.status()["version"] == "1.1.0"
        assert test.status()["channel"] == "beta"
        test("channel", "stable")
        down = result_json(test("channel", "beta", "--allow-downgrade", "--json").stdout)
        assert down["version"] == "0.9.0" and test.status()["channel"] == "beta"
        same = test("channel", "beta", check=False)
        assert same.returncode != 0 and "already on channel beta" in same.stderr


def test_tampered_rollout_fields_are_refused_by_tuf(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "1.1.0", app_files("1.1.0"))
    release_cli("rollout", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", "1.1.0",
                "--percent", "0")
    with serve(repo.dir) as url:
        c = _client(tmp_path, "c", url, repo, "0" * 32)
        c("install", "1.0.0")
        assert not json.loads(c("check", "--json").stdout)["update_available"]
        state = Repository(repo.dir).load()
        targets = state.channels["stable"].signed.targets
        location = Repository(repo.dir).target_location
        original = location("stable/index.json", targets["stable/index.json"].hashes["sha256"]).read_bytes()
        # the compressed index is what the client reads
        stored = location("stable/index.json.zst", targets["stable/index.json.zst"].hashes["sha256"])
        packed = stored.read_bytes()
        for old, new in ((b'"percent":0', b'"percent":100'), (b'"state":"active"', b'"state":"complete"'),
                         (b'"percent":0', b'"percent":0.0')):
            assert original.replace(old, new) != original
            stored.write_bytes(zstandard.ZstdCompressor(level=19).compress(original.replace(old, new)))
            for cached in (c.dir / "cache").glob("*index.json*"):
                cached.unlink()  # as on a client that has not fetched this index yet
            proc = c("install", check=False)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "stable/index.json" in lines[0]
            assert c.status()["version"] == "1.0.0"
        stored.write_bytes(packed)


def _src(repo: Repo, version: str) -> Path:
    src = repo.dir.parent / f"src-fleet-{version}"
    write_tree(src, app_files(version))
    return src


def test_clock_far_from_the_signed_time_is_reported_and_cannot_jump_the_ramp(tmp_path: Path) -> None:
    create_keys(tmp_path / "keys", passphrase=None)
    keys, repo = KeyStore(tmp_path / "keys"), Repository(tmp_path / "repo")
    ops.init_repository(repo, keys, {"timestamp": 10, "snapshot": 10})
    signed = ops.utcnow() - timedelta(days=3)  # the last signature is 3 days old: this clock looks 3 days ahead
    for version, extra in (("1.0.0", {}), ("1.1.0", {"rollout": parse_schedule([{"after": "2d", "percent": 100}])})):
        src = tmp_path / f"src-{version}"
        write_tree(src, app_files(version))
        ops.publish(repo, keys, ops.PublishRequest("stable", version, "patch", "any", src, deltas=0, **extra),
                    now=signed)
    d = tmp_path / "inst"
    config_mod.init(d, str(repo.path), repo.metadata_dir / "1.root.json", "stable", "any")
    ins = Installer(d)
    ins.install("1.0.0")
    found = ins.check()
    assert not found.update_available  # capped at signed + 1 day: the 2-day wave has not come
    assert "ahead of the newest signed time" in found.reason and "max_clock_skew" in found.reason
    clock = next(c for c in ins.doctor() if c.name == "clock")
    assert clock.warning and "ahead" in clock.detail
    config_mod.set_value(d, "max_clock_skew", str(4 * 86400))
    assert ins.check().version == "1.1.0"  # within the allowed skew the real clock counts

    # a clock behind the newest signed time ever seen is moved up to it (and said)
    record = json.loads((d / "fleet.json").read_text())
    record["newest_signed_time"] = (ops.utcnow() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (d / "fleet.json").write_text(json.dumps(record))
    behind = ins.check()
    assert behind.version == "1.1.0" and "behind the newest signed time" in behind.reason
    assert "behind" in ins.status()["fleet"]["clock_note"]
