"""Trust operations end to end: offline threshold root signing in separate key directories, key
rotation and compromise recovery seen by real clients, signer URIs, expiry warnings, and
publishing with only the online keys present.

Keys are split the way a real team holds them: ``ci/`` has ``keys.json`` and the online keys
(timestamp, snapshot, channels) and nothing else; each root holder and the targets holder has
one PEM file in a directory of their own. Everything runs through the ``pinnacle-release`` and
``pinnacle-update`` CLIs in child processes, against a real HTTP server.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.core import metadata as meta
from pinnacle_updates.repo_tools.errors import ExpiringSoon
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys, load_pem_signer, public_key_bytes
from pinnacle_updates.repo_tools.store import Repository
from tests.client.test_client_attacks import Client
from tests.conftest import run_cli, tree_digest

ONLINE = ("timestamp", "snapshot", "stable", "beta", "alpha")
SECRET = "tr0ub4dor&3"
ENV = {"PINNACLE_KEY_PASSPHRASE": SECRET}


def release(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli("pinnacle-release", *args, env=ENV, check=check)


def split_keys(full: Path, base: Path) -> dict[str, Path]:
    """``ci`` (keys.json + online keys) and one directory per offline key holder."""
    store = KeyStore(full)
    dirs = {"ci": base / "ci"}
    dirs["ci"].mkdir(parents=True)
    shutil.copy2(full / "keys.json", dirs["ci"] / "keys.json")
    for entry in store.keys.values():
        if entry.role in ONLINE:
            shutil.copy2(full / entry.private_file, dirs["ci"] / entry.private_file)
        else:
            holder = base / entry.name
            holder.mkdir()
            shutil.copy2(full / entry.private_file, holder / entry.private_file)
            dirs[entry.name] = holder / entry.private_file
    return dirs


@pytest.fixture
def team(tmp_path: Path, source, serve):  # type: ignore[no-untyped-def]
    """A repository initialised at a key ceremony (2-of-3 root, encrypted keys), then the keys
    split; stable 1.0.0 published from CI and installed by a client."""
    full = tmp_path / "ceremony"
    create_keys(full, SECRET, root_threshold=2, root_keys=3)
    repo = Repository(tmp_path / "repo")
    ops.init_repository(repo, KeyStore(full, passphrase=lambda role: SECRET))
    keys = split_keys(full, tmp_path / "holders")
    shutil.rmtree(full)  # the ceremony machine is wiped
    release("publish", str(repo.path), "--keys", str(keys["ci"]), "--channel", "stable", "--version", "1.0.0",
            "--type", "patch", "--platform", "any", "--entry-point", "bin/app", str(source("1.0.0")))
    served = serve(repo.path)
    client = Client(tmp_path / "install")
    client("init", "--repo", served.url, "--root", str(repo.metadata_dir / "1.root.json"))
    client("install", "1.0.0")
    return repo, keys, client, source, served.url


def _publish(repo: Repository, ci: Path, source, version: str, channel: str = "stable"):  # type: ignore[no-untyped-def]
    return release("publish", str(repo.path), "--keys", str(ci), "--channel", channel, "--version", version,
                   "--type", "patch", "--platform", "any", "--entry-point", "bin/app", str(source(version)))


def _refused(proc, *needles: str) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _assert_client_refuses(client: Client, *needles: str) -> None:
    """``install`` fails with one line naming the problem; the running 1.0.0 is untouched."""
    status = client.status()
    slot = client.dir / "slots" / status["slot"]
    before = tree_digest(slot)
    _refused(client("install", check=False), *needles)
    after = client.status()
    assert (after["version"], after["slot"]) == ("1.0.0", status["slot"])
    assert tree_digest(slot) == before and (client.dir / "current").resolve() == slot.resolve()


def _trusted_root_version(client: Client) -> int:
    return json.loads((client.dir / "tuf" / "root.json").read_bytes())["signed"]["version"]


# -- threshold root --------------------------------------------------------------------------------

def test_two_of_three_root_rotation_signed_in_separate_directories(team, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, keys, client, source, _url = team
    root_ids = KeyStore(keys["ci"]).role("root").keyids
    # A new holder creates a key on their own machine and hands over the public half.
    newcomer = tmp_path / "newcomer" / "root-new.pem"
    newcomer.parent.mkdir()
    release("keys", "generate", str(newcomer))
    # Prepare needs no private key at all: replace root-3 by the newcomer's key, keep 2-of-3.
    proposal = tmp_path / "exchange" / "2.root.json"
    proposal.parent.mkdir()
    release("root", "prepare", str(repo.path), "--add-key", str(newcomer.with_suffix(".pub.json")),
            "--remove-key", root_ids[2][:12], "-o", str(proposal))
    assert json.loads(proposal.read_bytes())["signatures"] == []
    before = tree_digest(repo.path)

    # One signature is below both thresholds: refused, repository untouched.
    release("root", "sign", str(proposal), "--key", str(keys["root-1"]))
    _refused(release("root", "publish", str(repo.path), str(proposal), check=False),
             "1 valid signature(s)", "2 required")
    # Signing twice with one key, or with a key that is no root key, is refused on the spot.
    _refused(release("root", "sign", str(proposal), "--key", str(keys["root-1"]), check=False), "already signed")
    _refused(release("root", "sign", str(proposal), "--key", str(keys["targets-1"]), check=False),
             "is not a root key")
    assert tree_digest(repo.path) == before

    # The second holder signs in another directory (copy of the file, as if mailed).
    other = tmp_path / "holder-b-inbox.json"
    shutil.copy2(proposal, other)
    release("root", "sign", str(other), "--key", str(keys["root-2"]))
    out = release("root", "publish", str(repo.path), str(other), "--keys", str(keys["ci"]), "--json")
    assert json.loads(out.stdout)["version"] == 2
    assert (repo.metadata_dir / "2.root.json").exists()
    release("verify", str(repo.path))
    # The key directory now records the newcomer as a (public-only) root key and root-3 as retired.
    rows = {r["keyid"]: r for r in json.loads(release("keys", "list", str(keys["ci"]), "--json").stdout)}
    assert rows[root_ids[2]]["state"] == "retired"
    assert [r["private"] for r in rows.values() if r["role"] == "root" and r["state"] == "active"] == ["offline"] * 3

    # A client installed before the rotation follows the root chain and updates.
    _publish(repo, keys["ci"], source, "1.1.0")
    client("install")
    assert client.status()["version"] == "1.1.0"
    assert _trusted_root_version(client) == 2


def test_root_publish_refusals_leave_the_repository_untouched(team, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, keys, _client, _source, _url = team
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path, days in ((first, "200"), (second, "201")):
        release("root", "prepare", str(repo.path), "--expires", days, "-o", str(path))
        for holder in ("root-1", "root-2"):
            release("root", "sign", str(path), "--key", str(keys[holder]))

    # Changed after signing: the signatures no longer verify.
    tampered = tmp_path / "tampered.json"
    doc = json.loads(first.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    tampered.write_text(json.dumps(doc))
    before = tree_digest(repo.path)
    _refused(release("root", "publish", str(repo.path), str(tampered), check=False), "0 valid signature(s)")

    # Signed by a key that may not sign root (an attacker's or the wrong holder's key).
    stray = tmp_path / "stray.json"
    release("root", "prepare", str(repo.path), "-o", str(stray))
    for holder in ("root-1", "root-2"):
        release("root", "sign", str(stray), "--key", str(keys[holder]))
    md = Metadata.from_bytes(stray.read_bytes())
    md.sign(load_pem_signer(keys["targets-1"], SECRET), append=True)
    stray.write_bytes(meta.to_bytes(md))
    _refused(release("root", "publish", str(repo.path), str(stray), check=False), "may not sign")
    # A wrong-format file.
    _refused(release("root", "publish", str(repo.path), str(repo.metadata_dir / "1.targets.json"), check=False),
             "not root")
    assert tree_digest(repo.path) == before

    # Publishing one version makes the other stale; publishing the same file again is a no-op.
    release("root", "publish", str(repo.path), str(first))
    after_first = tree_digest(repo.path)
    _refused(release("root", "publish", str(repo.path), str(second), check=False), "stale", "needs v3")
    assert "already published" in release("root", "publish", str(repo.path), str(first)).stdout
    assert tree_digest(repo.path) == after_first


# -- rotation and compromise recovery ---------------------------------------------------------------

def _forge_timestamp(repo: Repository, signer: Signer) -> None:
    """What an attacker holding a timestamp key does: a fresh, higher timestamp, served in place."""
    state = repo.load()
    data = (repo.metadata_dir / f"{state.snapshot.signed.version}.snapshot.json").read_bytes()
    forged = meta.timestamp_of(state.timestamp, state.snapshot.signed.version, data,
                               meta.expiry(ops.utcnow(), 7))
    forged.signed.version += 10
    repo.write_metadata("timestamp", meta.sign(forged, [signer]), versioned=False)


def test_leaked_timestamp_key_is_rotated_and_refused_afterwards(team, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, keys, client, source, _url = team
    ci_store = KeyStore(keys["ci"], passphrase=lambda role: SECRET)
    old_id = ci_store.role("timestamp").keyids[0]
    leaked = ci_store.signers("timestamp")[0]  # the attacker's copy
    # A second client that was installed before the rotation too, but only checks after the attack.
    late = Client(tmp_path / "late")
    late("init", "--repo", team[4], "--root", str(repo.metadata_dir / "1.root.json"))
    late("install", "1.0.0")

    # Before anyone notices, the attacker fast-forwards the client: a timestamp 10 versions ahead, valid
    # under root v1. Afterwards the repository serves its real timestamp again, which the client now
    # refuses as a rollback; only the rotation can bring it back.
    legit = (repo.metadata_dir / "timestamp.json").read_bytes()
    _forge_timestamp(repo, leaked)
    client("check")
    (repo.metadata_dir / "timestamp.json").write_bytes(legit)
    _assert_client_refuses(client, "older than the trusted version")

    # Root keys are offline: rotation writes the next root for the holders, who sign it, and CI publishes.
    proposal = tmp_path / "rotate-timestamp.json"
    out = release("keys", "rotate", str(repo.path), "--keys", str(keys["ci"]), "timestamp", "-o", str(proposal))
    assert "pending" in out.stdout and not (repo.metadata_dir / "2.root.json").exists()
    for holder in ("root-1", "root-2"):
        release("root", "sign", str(proposal), "--key", str(keys[holder]))
    result = json.loads(release("root", "publish", str(repo.path), str(proposal), "--keys", str(keys["ci"]),
                                "--json").stdout)
    assert result["resigned"] == ["timestamp"] and result["retired_keyids"] == [old_id]
    release("verify", str(repo.path))
    _publish(repo, keys["ci"], source, "1.1.0")
    assert json.loads(client("check", "--json").stdout)["version"] == "1.1.0"  # followed the rotation
    assert _trusted_root_version(client) == 2

    _forge_timestamp(repo, leaked)
    _assert_client_refuses(client, "timestamp", "not signed by the trusted keys")
    _assert_client_refuses(late, "timestamp", "not signed by the trusted keys")


def test_timestamp_rotation_is_direct_when_root_keys_are_present(repo: Repository, keys_dir: Path,
                                                                 tmp_path: Path) -> None:
    own = tmp_path / "keys"
    shutil.copytree(keys_dir, own)
    old = KeyStore(own).signers("timestamp")[0]
    out = json.loads(release("keys", "rotate", str(repo.path), "--keys", str(own), "timestamp", "--json").stdout)
    assert out["published"] and out["version"] == {"root": 2}
    state = repo.load()
    assert old.public_key.keyid not in state.root.signed.roles["timestamp"].keyids
    assert set(state.timestamp.signatures) >= set(state.root.signed.roles["timestamp"].keyids)
    release("verify", str(repo.path))
    # Later timestamps are signed by the new key alone.
    release("refresh", str(repo.path), "--keys", str(own))
    assert set(repo.load().timestamp.signatures) == {out["new_keyid"]}


def test_channel_key_rotation_needs_no_root(team, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, keys, client, source, _url = team
    old_stable = KeyStore(keys["ci"], passphrase=lambda role: SECRET).signers("stable")[0]
    proposal = tmp_path / "next-targets.json"
    release("keys", "rotate", str(repo.path), "--keys", str(keys["ci"]), "stable", "-o", str(proposal))
    before = tree_digest(repo.path)
    _refused(release("targets", "publish", str(repo.path), str(proposal), "--keys", str(keys["ci"]), check=False),
             "0 valid signature(s)", "1 required")
    assert tree_digest(repo.path) == before
    # The targets holder signs (checked against the current root); a root key may not sign targets.
    release("targets", "sign", str(proposal), "--key", str(keys["targets-1"]),
            "--root", str(repo.metadata_dir / "1.root.json"))
    _refused(release("targets", "sign", str(proposal), "--key", str(keys["root-1"]),
                     "--root", str(repo.metadata_dir / "1.root.json"), check=False), "is not a targets key")
    release("targets", "publish", str(repo.path), str(proposal), "--keys", str(keys["ci"]))
    assert repo.root_versions() == [1]  # root untouched
    release("verify", str(repo.path))
    _publish(repo, keys["ci"], source, "1.1.0")
    client("install")
    assert client.status()["version"] == "1.1.0"

    # The old channel key can no longer sign the channel.
    state = repo.load()
    stable = state.channels["stable"]
    meta.sign(stable, [old_stable])
    data = repo.write_metadata("stable", stable)
    snapshot = meta.snapshot_of(state.snapshot, {"stable": (stable.signed.version, data)},
                                meta.expiry(ops.utcnow(), 7))
    ci = KeyStore(keys["ci"], passphrase=lambda role: SECRET)
    snapshot_bytes = repo.write_metadata("snapshot", meta.sign(snapshot, ci.signers("snapshot")))
    timestamp = meta.timestamp_of(state.timestamp, snapshot.signed.version, snapshot_bytes,
                                  meta.expiry(ops.utcnow(), 1))
    repo.write_metadata("timestamp", meta.sign(timestamp, ci.signers("timestamp")), versioned=False)
    proc = client("install", check=False)
    _refused(proc, "stable")


def test_signer_uri_key_replaces_a_pem_key(repo: Repository, keys_dir: Path, tmp_path: Path) -> None:
    """A key entry that is a securesystemslib URI (``file2:`` here; KMS/HSM alike) signs timestamp."""
    own = tmp_path / "keys"
    shutil.copytree(keys_dir, own)
    pem = tmp_path / "kms" / "ts.pem"
    pem.parent.mkdir()
    release("keys", "generate", str(pem), "--insecure-plaintext")
    public = pem.with_suffix(".pub.json")
    release("keys", "import", str(own), "--role", "timestamp", "--public", str(public), "--uri", f"file2:{pem}")
    old = KeyStore(own).role("timestamp").keyids[0]
    proposal = tmp_path / "2.root.json"
    release("root", "prepare", str(repo.path), "--add-key", f"timestamp={public}", "--remove-key", old,
            "-o", str(proposal))
    release("root", "sign", str(proposal), "--key-uri", f"file2:{own / 'root-1.pem'}",
            "--public-key", str(_public_file(own, "root", tmp_path)))
    release("root", "publish", str(repo.path), str(proposal), "--keys", str(own))
    release("refresh", str(repo.path), "--keys", str(own))
    new_id = json.loads(public.read_bytes())["keyid"]
    assert set(repo.load().timestamp.signatures) == {new_id}
    rows = json.loads(release("keys", "list", str(own), "--json").stdout)
    assert {(r["role"], r["state"], r["private"]) for r in rows if r["keyid"] == new_id} == {
        ("timestamp", "active", "file2:")}
    release("verify", str(repo.path))


def _public_file(keys_dir: Path, role: str, where: Path) -> Path:
    path = where / f"{role}.pub.json"
    path.write_bytes(public_key_bytes(KeyStore(keys_dir).public_keys(role)[0]))
    return path


# -- expiry ----------------------------------------------------------------------------------------

def test_status_warn_days_exit_codes(repo: Repository, keystore: KeyStore) -> None:
    assert release("status", str(repo.path), "--warn-days", "0").returncode == 0
    line = _refused(release("status", str(repo.path), "--warn-days", "2", check=False), "timestamp")
    assert "snapshot" not in line
    proc = release("status", str(repo.path), "--warn-days", "8", check=False)
    assert proc.returncode == ExpiringSoon.exit_code and "timestamp" in proc.stderr and "snapshot" in proc.stderr
    assert "stable" not in proc.stderr
    # Already expired counts at any window, and says so.
    state = repo.load()
    ts = meta.timestamp_of(state.timestamp, state.snapshot.signed.version,
                           (repo.metadata_dir / f"{state.snapshot.signed.version}.snapshot.json").read_bytes(),
                           meta.expiry(ops.utcnow(), -1))
    repo.write_metadata("timestamp", meta.sign(ts, keystore.signers("timestamp")), versioned=False)
    proc = release("status", str(repo.path), "--warn-days", "0", check=False)
    assert proc.returncode == ExpiringSoon.exit_code and "timestamp EXPIRED" in proc.stderr


def test_expired_metadata_refuses_updates_and_keeps_the_app_running(team) -> None:  # type: ignore[no-untyped-def]
    repo, keys, client, source, _url = team
    _publish(repo, keys["ci"], source, "1.1.0")
    state = repo.load()  # the publisher stopped refreshing: the timestamp runs out
    ts = meta.timestamp_of(state.timestamp, state.snapshot.signed.version,
                           (repo.metadata_dir / f"{state.snapshot.signed.version}.snapshot.json").read_bytes(),
                           meta.expiry(ops.utcnow(), -1))
    ci = KeyStore(keys["ci"], passphrase=lambda role: SECRET)
    repo.write_metadata("timestamp", meta.sign(ts, ci.signers("timestamp")), versioned=False)
    _assert_client_refuses(client, "timestamp metadata has expired")
    assert client("run").stdout.strip() == "app 1.0.0"
    release("refresh", str(repo.path), "--keys", str(keys["ci"]))  # the cron job comes back
    client("install")
    assert client("run").stdout.strip() == "app 1.1.0"


# -- online keys only ------------------------------------------------------------------------------

def test_root_and_targets_keys_are_never_needed_online(team, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, keys, client, source, _url = team
    ci = keys["ci"]
    assert sorted(p.name for p in ci.iterdir()) == sorted(
        ["keys.json", *(f"{r}-1.pem" for r in ONLINE)])
    _publish(repo, ci, source, "1.1.0b1", channel="beta")
    release("promote", str(repo.path), "--keys", str(ci), "--from", "beta", "--to", "stable",
            "--version", "1.1.0b1")
    release("rollout", str(repo.path), "--keys", str(ci), "--channel", "stable", "--version", "1.1.0b1",
            "--percent", "50")
    release("rollout", str(repo.path), "--keys", str(ci), "--channel", "stable", "--version", "1.1.0b1",
            "--complete")
    release("refresh", str(repo.path), "--keys", str(ci), "--force")
    # refresh renews near-expiry channel roles and snapshot with online keys only (50 days on).
    later = ops.refresh(repo, KeyStore(ci, passphrase=lambda role: SECRET), now=ops.utcnow() + timedelta(days=50))
    assert set(later["renewed"]) == {"alpha", "beta", "stable", "snapshot", "timestamp"}
    release("verify", str(repo.path))
    assert (repo.root_versions(), repo.load().targets.signed.version) == ([1], 1)
    client("install")
    assert client.status()["version"] == "1.1.0b1"


def test_channel_rotation_is_direct_when_the_targets_key_is_present(repo: Repository, keys_dir: Path, source,
                                                                    tmp_path: Path) -> None:
    own = tmp_path / "keys"
    shutil.copytree(keys_dir, own)
    old = KeyStore(own).role("beta").keyids[0]
    out = json.loads(release("keys", "rotate", str(repo.path), "--keys", str(own), "beta", "--json").stdout)
    assert out["published"] and out["version"] == {"targets": 2} and out["retired_keyids"] == [old]
    assert repo.load().channels["beta"].signatures.keys() == {out["new_keyid"]}
    _publish(repo, own, source, "2.0.0b1", channel="beta")
    release("verify", str(repo.path))
    _refused(release("keys", "rotate", str(repo.path), "--keys", str(own), "gamma", check=False), "unknown role")
