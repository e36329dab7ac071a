"""Publishing: keys, init, publish, promote, refresh, status, verify, through the library and the CLI."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import click
import pytest
from tuf.ngclient import Updater

from pinnacle_updates.formats.index import ChannelIndex, UpdateType
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.cli import cli
from pinnacle_updates.repo_tools.errors import KeyStoreError, PublishRefused, RepositoryStateError
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import result_json, run_cli, tree_digest


def _publish(repo: Repository, keystore: KeyStore, src: Path, version: str, channel: str = "stable",
             platform: str = "linux-x86_64", rtype: str = "patch") -> dict:
    return ops.publish(repo, keystore, ops.PublishRequest(channel, version, rtype, platform, src))


def test_keys_are_private_encrypted_and_never_printed(tmp_path: Path) -> None:
    secret = "correct horse battery staple"
    proc = run_cli("pinnacle-release", "keys", "init", str(tmp_path / "k"), "--root-threshold", "2",
                   "--root-keys", "3", env={"PINNACLE_KEY_PASSPHRASE": secret})
    assert secret not in proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "k" / "keys.json").read_text())
    assert doc["roles"]["root"]["threshold"] == 2 and len(doc["roles"]["root"]["keyids"]) == 3
    assert set(doc["roles"]) == {"root", "targets", "snapshot", "timestamp", "stable", "beta", "alpha"}
    pems = list((tmp_path / "k").glob("*.pem"))
    assert len(pems) == 9
    for pem in pems:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in pem.read_bytes()
    assert secret not in "".join(p.read_text() for p in pems)

    # Loading needs the passphrase; a wrong one is one clear line, not a traceback.
    wrong = KeyStore(tmp_path / "k", passphrase=lambda role: "nope")
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        wrong.signers("timestamp")
    assert KeyStore(tmp_path / "k", passphrase=lambda role: secret).signers("root")


def test_keys_init_refuses_without_passphrase_or_flag(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACLE_KEY_PASSPHRASE")}
    proc = run_cli("pinnacle-release", "keys", "init", str(tmp_path / "k"), check=False, env=env)
    assert proc.returncode != 0
    assert "PINNACLE_KEY_PASSPHRASE" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "k" / "keys.json").exists()


def test_init_layout_and_status(repo: Repository) -> None:
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == ["1.alpha.json", "1.beta.json", "1.root.json", "1.snapshot.json", "1.stable.json",
                     "1.targets.json", "timestamp.json"]
    root = json.loads((repo.metadata_dir / "1.root.json").read_text())
    assert root["signed"]["consistent_snapshot"] is True
    status = ops.status(repo)
    assert set(status["channels"]) == {"stable", "beta", "alpha"}
    assert status["roles"]["timestamp"]["expired"] is False
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_init_refuses_existing_repository(repo: Repository, keystore: KeyStore) -> None:
    before = tree_digest(repo.path)
    with pytest.raises(RepositoryStateError, match="already holds a repository"):
        ops.init_repository(repo, keystore)
    assert tree_digest(repo.path) == before


def test_publish_all_channels_and_fetch_with_stock_ngclient(repo: Repository, keystore: KeyStore, source,
                                                            serve, tmp_path: Path) -> None:
    for channel, version in (("stable", "1.0.0"), ("beta", "1.1.0b1"), ("alpha", "1.2.0a1")):
        _publish(repo, keystore, source(version), version, channel=channel)
    assert verify_repository(repo.path, ops.utcnow(), deep=True).problems == []
    served = serve(repo.path)
    root_bytes = (repo.metadata_dir / "1.root.json").read_bytes()
    for channel, version in (("stable", "1.0.0"), ("beta", "1.1.0b1"), ("alpha", "1.2.0a1")):
        meta_dir = tmp_path / f"client-{channel}"
        meta_dir.mkdir()
        updater = Updater(str(meta_dir), served.url + "metadata/", str(tmp_path / f"dl-{channel}"),
                          served.url + "targets/", bootstrap=root_bytes)
        updater.refresh()
        info = updater.get_targetinfo(f"{channel}/index.json")
        assert info is not None
        (tmp_path / f"dl-{channel}").mkdir()
        index = ChannelIndex.from_bytes(Path(updater.download_target(info)).read_bytes())
        release = index.latest("linux-x86_64")
        assert release is not None and release.version == version
        full = updater.get_targetinfo(release.full.path)
        assert full is not None and full.hashes["sha256"] == release.full.sha256
        downloaded = Path(updater.download_target(full, str(tmp_path / f"{channel}.tar.zst")))
        assert downloaded.stat().st_size == release.full.length


def test_reproducible_artifacts_across_fresh_repositories(tmp_path: Path, source) -> None:
    src = source("2.0.0")
    digests = []
    for n in range(2):
        keys = tmp_path / f"keys{n}"
        create_keys(keys, passphrase=None)
        repo = Repository(tmp_path / f"repo{n}")
        store = KeyStore(keys)
        ops.init_repository(repo, store)
        rel = _publish(repo, store, src, "2.0.0")["release"]
        digests.append((rel["full"]["sha256"], rel["manifest"]["sha256"], rel["content"]["sha256"]))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("version,error", [("1.0.0", "already published"), ("0.9", "older than"),
                                           ("1.0", "already published")])
def test_versions_are_immutable_and_increasing(repo: Repository, keystore: KeyStore, source, version: str,
                                               error: str) -> None:
    _publish(repo, keystore, source("1.0.0"), "1.0.0")
    before = tree_digest(repo.path)
    with pytest.raises(PublishRefused, match=error):
        _publish(repo, keystore, source(version), version)
    assert tree_digest(repo.path) == before


def test_other_platform_has_its_own_sequence(repo: Repository, keystore: KeyStore, source) -> None:
    _publish(repo, keystore, source("2.0.0"), "2.0.0")
    _publish(repo, keystore, source("1.0.0"), "1.0.0", platform="macos-arm64")
    index = Repository(repo.path).channel_index(repo.load(), "stable")
    assert [r.platform for r in index.releases] == ["linux-x86_64", "macos-arm64"]


def _unsafe_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {}

    def tree(name: str) -> Path:
        root = tmp_path / name
        (root / "bin").mkdir(parents=True)
        (root / "bin" / "app").write_text("x")
        return root

    t = tree("abs-link")
    os.symlink("/etc/passwd", t / "bin" / "passwd")
    cases["absolute symlink"] = (t, "bin/passwd")
    t = tree("escape-link")
    os.symlink("../../outside", t / "bin" / "out")
    cases["escaping symlink"] = (t, "bin/out")
    t = tree("setuid")
    (t / "bin" / "app").chmod(0o4755)
    cases["setuid"] = (t, "bin/app")
    t = tree("fifo")
    os.mkfifo(t / "bin" / "pipe")
    cases["fifo"] = (t, "bin/pipe")
    t = tree("sticky")
    (t / "bin").chmod(0o1777)
    cases["sticky dir"] = (t, "bin")
    t = tree("device")
    try:
        os.mknod(t / "bin" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        cases["device"] = (t, "bin/null")
    except PermissionError:
        pass  # needs root; the other cases still run
    return cases


@pytest.mark.parametrize("case", ["absolute symlink", "escaping symlink", "setuid", "fifo", "sticky dir", "device"])
def test_unsafe_source_is_refused_and_repository_unchanged(repo: Repository, keys_dir: Path, tmp_path: Path,
                                                            case: str) -> None:
    cases = _unsafe_cases(tmp_path)
    if case not in cases:
        pytest.skip("creating a device file needs root")
    src, offending = cases[case]
    before = tree_digest(repo.path)
    proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir),
                   "--channel", "stable", "--version", "1.0.0", "--type", "patch", "--platform", "any", str(src),
                   check=False)
    assert proc.returncode != 0
    assert offending in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_digest(repo.path) == before


@pytest.mark.parametrize("args,error", [
    (["--channel", "nightly"], "unknown channel 'nightly'"),
    (["--version", "banana"], "not a PEP 440 version"),
    (["--platform", "Linux x86"], "bad platform tag"),
    (["--entry-point", "bin/missing"], "entry point 'bin/missing'"),
])
def test_bad_publish_requests_are_refused(repo: Repository, keys_dir: Path, source, args: list[str],
                                          error: str) -> None:
    base = {"--channel": "stable", "--version": "1.0.0", "--platform": "any"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    before = tree_digest(repo.path)
    proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--type", "patch",
                   *flat, *(args if "--entry-point" in args else []), str(source("1.0.0")), check=False)
    assert proc.returncode != 0, proc.stdout
    assert error in proc.stderr and "Traceback" not in proc.stderr
    assert tree_digest(repo.path) == before


def test_publish_type_choices_are_the_update_type_enum() -> None:
    publish = cli.commands["publish"]
    update_type = next(p for p in publish.params if p.name == "update_type")
    assert isinstance(update_type.type, click.Choice)
    assert list(update_type.type.choices) == [t.value for t in UpdateType]
    ramp = next(p for p in publish.params if p.name == "ramp")
    assert isinstance(ramp, click.Option) and ramp.help is not None
    assert ramp.help.endswith("default by type: security/hotfix skip.")


def test_missing_online_key_is_refused_before_writing(repo: Repository, keys_dir: Path, tmp_path: Path,
                                                      source) -> None:
    partial = tmp_path / "ci-keys"
    partial.mkdir()
    for f in keys_dir.iterdir():
        if f.name != "stable-1.pem":
            (partial / f.name).write_bytes(f.read_bytes())
    before = tree_digest(repo.path)
    with pytest.raises(KeyStoreError, match="role 'stable' needs 1 key"):
        _publish(repo, KeyStore(partial), source("1.0.0"), "1.0.0")
    assert tree_digest(repo.path) == before


def test_offline_root_keys_are_not_needed_to_publish(repo: Repository, keys_dir: Path, tmp_path: Path,
                                                     source) -> None:
    online = tmp_path / "online"
    online.mkdir()
    for f in keys_dir.iterdir():
        if not f.name.startswith(("root-", "targets-")):
            (online / f.name).write_bytes(f.read_bytes())
    _publish(repo, KeyStore(online), source("1.0.0"), "1.0.0")
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_promote_is_byte_identical(repo: Repository, keystore: KeyStore, source) -> None:
    beta = _publish(repo, keystore, source("3.0.0"), "3.0.0", channel="beta")["release"]
    result = ops.promote(repo, keystore, "beta", "stable", "3.0.0")
    promoted = result["releases"][0]
    assert promoted["full"]["sha256"] == beta["full"]["sha256"]
    assert promoted["content"] == beta["content"]
    assert promoted["full"]["path"].startswith("stable/") and promoted["promoted_from"] == "beta"
    assert verify_repository(repo.path, ops.utcnow(), deep=True).problems == []
    with pytest.raises(PublishRefused, match="already published"):
        ops.promote(repo, keystore, "beta", "stable", "3.0.0")
    with pytest.raises(PublishRefused, match=r"no release 9\.9"):
        ops.promote(repo, keystore, "beta", "stable", "9.9")


def test_refresh_and_expiry_reported_by_verify(repo: Repository, keystore: KeyStore) -> None:
    later = ops.utcnow() + timedelta(days=3)
    problems = verify_repository(repo.path, later).problems
    assert any("timestamp.json: expired" in p for p in problems)
    result = ops.refresh(repo, keystore, now=later - timedelta(hours=1))
    assert "timestamp" in result["renewed"]
    assert verify_repository(repo.path, later).problems == []
    assert ops.status(repo)["roles"]["timestamp"]["version"] == 2


def test_cli_json_outputs_and_verify(repo: Repository, keys_dir: Path, source) -> None:
    proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "beta",
                   "--version", "0.1", "--type", "minor", "--platform", "any", str(source("0.1")), "--json")
    doc = result_json(proc.stdout)
    assert doc["release"]["version"] == "0.1" and doc["metadata_versions"]["beta"] == 2
    status = json.loads(run_cli("pinnacle-release", "status", str(repo.path), "--json").stdout)
    assert status["channels"]["beta"][0]["version"] == "0.1"
    report = json.loads(run_cli("pinnacle-release", "verify", str(repo.path), "--json").stdout)
    assert report["ok"] is True and report["releases"] == 1
