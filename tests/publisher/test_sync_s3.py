"""``pinnacle-release sync REPO s3://BUCKET/PREFIX`` against a real S3 server (SeaweedFS, tests/s3_server.py).

Clients read the bucket anonymously over plain HTTP, exactly as from a public bucket or a CDN:
install, update by delta and roll back; stock ngclient and ``verify`` after syncs killed anywhere;
the headers of every kind of object; an incremental sync that sends only the new release; resumed
multipart uploads; ``--prune`` with the retention rule of ``prune``; one-line failures.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools import rotate
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.errors import ObjectStoreError
from pinnacle_updates.repo_tools.hosting import IMMUTABLE, NO_STORE, cache_control_for, content_type_for
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.objectstore import Location, sync_s3
from pinnacle_updates.repo_tools.prune import plan as prune_plan
from pinnacle_updates.repo_tools.store import Repository
from pinnacle_updates.repo_tools.sync import ROOTS, TIMESTAMP, stages, upload_order
from tests import helpers_client as hc
from tests.conftest import ROOT, run_cli
from tests.kill_loop import kill_after_lines, ngclient_accepts
from tests.s3_server import SeaweedS3

PREFIX = "updates/prod"


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    server = SeaweedS3()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: SeaweedS3, request: pytest.FixtureRequest) -> str:
    name = f"t{os.getpid()}-{request.node.name[:30].lower().replace('_', '-')}-{os.urandom(3).hex()}"
    return s3.create_bucket(name.strip("-"))


@pytest.fixture
def aws_env(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The publisher's credentials in the standard environment, as CI would set them."""
    env = {**s3.env(), "AWS_ENDPOINT_URL": s3.endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def keystore(keys_dir: Path, tmp_path: Path) -> KeyStore:
    """A private copy of the session keys: the kill loop rotates keys."""
    import shutil

    own = tmp_path / "own-keys"
    shutil.copytree(keys_dir, own)
    return KeyStore(own)


def _publish(repo: Repository, keystore: KeyStore, source: Callable[..., Path], version: str,
             size: int = 0) -> None:
    files = {"lib/blob.bin": os.urandom(size)} if size else None
    ops.publish(repo, keystore, ops.PublishRequest("stable", version, "patch", "any", source(version, files)))


def _objects(s3: SeaweedS3, bucket: str, prefix: str = PREFIX) -> dict[str, int]:
    """Every object under the prefix (relative key -> size), listed with the publisher's identity."""
    out: dict[str, int] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out.update({o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", [])})
    return out


def _servable(repo_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(repo_dir)): p.stat().st_size for p in repo_dir.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(repo_dir).parts)}


def _download(s3: SeaweedS3, bucket: str, dest: Path, prefix: str = PREFIX) -> Path:
    """A copy of the bucket as a directory (for ``verify``), fetched anonymously over HTTP."""
    for relative in _objects(s3, bucket, prefix):
        status, _, body = s3.get(s3.url(bucket, prefix) + relative)
        assert status == 200, relative
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        (dest / relative).write_bytes(body)
    return dest


def _sync_cli(repo_dir: Path, bucket: str, *args: str, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("pinnacle-release", "sync", str(repo_dir), f"s3://{bucket}/{PREFIX}", *args, env=env, check=check)


# -- the order --------------------------------------------------------------------------------------

def test_stages_follow_the_directory_order_with_roots_and_timestamp_alone(
        repo: Repository, keystore: KeyStore, source: Callable[..., Path]) -> None:
    _publish(repo, keystore, source, "1.0.0")
    rotate.rotate_key(repo, keystore, "root")  # a second root version, same online keys
    ts = (repo.metadata_dir / "timestamp.json").read_bytes()
    items = upload_order(repo.path, ts, lambda r: False, lambda r: b"")
    steps = stages(items)
    assert [i for step in steps for i in step] == items  # the same order, only cut into steps
    assert steps[-1] == [items[-1]] and items[-1].rank == TIMESTAMP
    roots = [step for step in steps if step[0].rank == ROOTS]
    assert [[i.relative for i in step] for step in roots] == [["metadata/1.root.json"], ["metadata/2.root.json"]]
    assert all(len({i.rank for i in step}) == 1 for step in steps)
    assert len(steps[0]) > 3  # the targets go up together


# -- end to end with the real client -----------------------------------------------------------------

def _app(version: str, common: bytes) -> dict[str, str | bytes]:
    return {**hc.app_files(version, n_files=2), "lib/common.bin": common}


def test_publish_sync_install_update_by_delta_and_roll_back_over_http(
        s3: SeaweedS3, bucket: str, tmp_path: Path) -> None:
    env = {**s3.env(), "AWS_ENDPOINT_URL": s3.endpoint}
    repo = hc.make_repo(tmp_path / "pub")
    common = os.urandom(256 << 10)  # unchanged between releases: the delta is small
    hc.publish(repo, "1.0.0", _app("1.0.0", common))
    first = _sync_cli(repo.dir, bucket, "--json", env=env)
    assert '"copied"' in first.stdout and first.stderr == ""
    url = s3.url(bucket, PREFIX)

    d = tmp_path / "inst"
    ins = hc.init_client(d, url, repo)
    assert ins.install().to_dict()["path"] == "full"
    assert (d / "current" / "VERSION").read_text() == "1.0.0\n"

    hc.publish(repo, "1.1.0", _app("1.1.0", common))
    assert ins.check().update_available is False  # not synced yet: the bucket still serves 1.0.0
    _sync_cli(repo.dir, bucket, env=env)
    found = ins.check()
    assert found.update_available and found.version == "1.1.0" and found.path == "delta:1.0.0->1.1.0"
    result = ins.install()
    assert result.to_dict()["path"] == "delta" and result.bytes_downloaded < len(common) // 2
    assert (d / "current" / "VERSION").read_text() == "1.1.0\n" and ins.verify().ok

    # publish --sync-to: one command publishes and uploads (credentials from the environment).
    src = tmp_path / "src-1.2.0"
    hc.write_tree(src, _app("1.2.0", common))
    out = run_cli("pinnacle-release", "publish", str(repo.dir), str(src), "--keys", str(repo.keys),
                  "--channel", "stable", "--version", "1.2.0", "--type", "patch", "--platform", "any",
                  "--sync-to", f"s3://{bucket}/{PREFIX}", "--endpoint-url", s3.endpoint, env=s3.env()).stdout
    assert f"synced {repo.dir} -> s3://{bucket}/{PREFIX}: " in out
    found = ins.check()
    assert found.update_available and found.version == "1.2.0" and found.path == "delta:1.1.0->1.2.0"
    # The CLI client this time, over the same plain HTTP.
    run_cli("pinnacle-update", "--install-dir", str(d), "install")
    assert (d / "current" / "VERSION").read_text() == "1.2.0\n"
    assert ins.history()[-1]["path"] == "delta"

    back = ins.rollback()
    assert (back.version, back.from_version) == ("1.1.0", "1.2.0")
    assert (d / "current" / "VERSION").read_text() == "1.1.0\n" and ins.verify().ok


def test_headers_on_every_object_kind(s3: SeaweedS3, bucket: str, aws_env: dict[str, str], repo: Repository,
                                      keystore: KeyStore, source: Callable[..., Path]) -> None:
    _publish(repo, keystore, source, "1.0.0")
    _publish(repo, keystore, source, "1.1.0")  # with a delta from 1.0.0
    rotate.rotate_key(repo, keystore, "root")  # two root versions
    sync_s3(repo.path, f"s3://{bucket}/{PREFIX}")
    url = s3.url(bucket, PREFIX)
    objects = _objects(s3, bucket)
    assert objects == _servable(repo.path)

    def kind(relative: str) -> str:
        name = relative.rsplit("/", 1)[-1]
        if relative.startswith("metadata/"):
            return "timestamp" if name == "timestamp.json" else name.split(".", 1)[1].removesuffix(".json")
        return name.rsplit(".", 1)[-1] if "." in name else "other"

    seen: dict[str, int] = {}
    for relative in objects:
        status, headers, body = s3.get(url + relative)
        assert status == 200
        assert headers["Cache-Control"] == cache_control_for(relative), relative
        wanted = content_type_for(relative)
        # SeaweedFS keeps application/octet-stream as "unspecified" and answers with its guess from
        # the extension (.zst: application/zstd); S3 returns what was stored.
        assert headers["Content-Type"] == wanted or (wanted, relative.rsplit(".", 1)[-1], headers["Content-Type"]) \
            == ("application/octet-stream", "zst", "application/zstd"), relative
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256((repo.path / relative).read_bytes()).hexdigest()
        seen[kind(relative)] = seen.get(kind(relative), 0) + 1
    # Every kind there is: timestamp, root versions, snapshots, targets and channel roles; artifacts,
    # deltas, manifests and the channel index (content-addressed targets).
    assert {"timestamp", "root", "snapshot", "targets", "stable", "zst", "json"} <= set(seen), seen
    assert any(".delta" in r or "delta" in r for r in objects if r.startswith("targets/")), sorted(objects)
    status, headers, _ = s3.get(url + "metadata/timestamp.json")
    assert headers["Cache-Control"] == NO_STORE and headers["Content-Type"] == "application/json"
    status, headers, _ = s3.get(url + "metadata/1.root.json")
    assert headers["Cache-Control"] == IMMUTABLE
    # The root probe of every refresh: a 404, and nothing for a cache to keep.
    status, headers, _ = s3.get(url + "metadata/3.root.json")
    assert status == 404 and "immutable" not in headers.get("Cache-Control", "")
    # Resumed downloads: a Range request on a target is answered with the missing bytes.
    target = next(r for r in objects if r.startswith("targets/") and r.endswith(".zst"))
    status, headers, body = s3.get(url + target, {"Range": "bytes=10-"})
    assert status == 206 and body == (repo.path / target).read_bytes()[10:]
    # Anonymous readers can read and nothing else.
    import urllib.request
    put = urllib.request.Request(url + "metadata/timestamp.json", data=b"{}", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(put, timeout=10)
    assert refused.value.code == 403


def test_incremental_sync_sends_only_the_new_release_and_changed_metadata(
        s3: SeaweedS3, bucket: str, aws_env: dict[str, str], repo: Repository, keystore: KeyStore,
        source: Callable[..., Path]) -> None:
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _publish(repo, keystore, source, version)
    dest = f"s3://{bucket}/{PREFIX}"
    first = sync_s3(repo.path, dest)
    assert first["skipped"] == 0 and first["copied"] == len(_servable(repo.path))
    again = sync_s3(repo.path, dest)
    assert (again["copied"], again["requests"], again["skipped"]) == (0, 0, first["copied"])

    before = {r: hashlib.sha256((repo.path / r).read_bytes()).hexdigest() for r in _servable(repo.path)}
    _publish(repo, keystore, source, "1.3.0")
    after = _servable(repo.path)
    new_files = set(after) - set(before)
    changed = {r for r in before if hashlib.sha256((repo.path / r).read_bytes()).hexdigest() != before[r]}
    assert changed == {"metadata/timestamp.json"}  # every other file keeps its (versioned) name and bytes
    expected = new_files | changed
    copied: list[str] = []
    third = sync_s3(repo.path, dest, progress=lambda action, r: copied.append(r) if action == "copied" else None)
    assert set(copied) == expected and len(copied) == third["copied"] == len(expected)
    assert third["requests"] == len(expected) and third["copied_bytes"] == sum(after[r] for r in expected)
    assert copied[-1] == "metadata/timestamp.json"
    # What was sent: the release's targets (artifact, manifest, deltas, the new channel index) and
    # the new versions of the roles it changed (channel role, snapshot), the timestamp last.
    new_targets = {r for r in new_files if r.startswith("targets/")}
    new_metadata = {r for r in new_files if r.startswith("metadata/")}
    assert new_targets and all(r.split("/")[-1][:64].isalnum() for r in new_targets)
    assert {r.split("/", 1)[1].split(".", 1)[1] for r in new_metadata} <= {"stable.json", "snapshot.json",
                                                                           "targets.json"}
    assert _objects(s3, bucket) == after

    # Metadata is compared by hash: an object with the right size and other bytes is replaced.
    victim = sorted(r for r in new_metadata if ".stable." in r)[0]
    data = (repo.path / victim).read_bytes()
    s3.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{victim}", Body=data[:-1] + b" ")
    fourth = sync_s3(repo.path, dest, progress=lambda a, r: copied.append(f"{a} {r}"))
    assert fourth["copied"] == 1 and f"copied {victim}" in copied


def test_multipart_upload_resumes_after_an_interruption(
        s3: SeaweedS3, bucket: str, aws_env: dict[str, str], repo: Repository, keystore: KeyStore,
        source: Callable[..., Path]) -> None:
    dest = f"s3://{bucket}/{PREFIX}"
    sync_s3(repo.path, dest)
    served = s3.get(s3.url(bucket, PREFIX) + "metadata/timestamp.json")[2]
    _publish(repo, keystore, source, "1.0.0", size=13 << 20)  # random: the artifact stays ~13 MiB
    artifact = max(_servable(repo.path).items(), key=lambda kv: kv[1])[0]
    size = (repo.path / artifact).stat().st_size
    assert size > 10 << 20
    options: dict[str, Any] = {"multipart_threshold": 5 << 20, "part_size": 5 << 20, "jobs": 2}

    class Interrupted(Exception):
        pass

    def stop_after_a_part(action: str, text: str) -> None:
        if action == "part":
            raise Interrupted(text)

    with pytest.raises(ObjectStoreError, match="still serves its previous state"):
        sync_s3(repo.path, dest, progress=stop_after_a_part, **options)
    # Nothing visible changed: the artifact is not there, the timestamp is the old one.
    assert artifact not in _objects(s3, bucket)
    assert s3.get(s3.url(bucket, PREFIX) + "metadata/timestamp.json")[2] == served
    pending = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in pending] == [f"{PREFIX}/{artifact}"]

    parts: list[str] = []
    result = sync_s3(repo.path, dest, progress=lambda a, t: parts.append(t) if a == "part" else None, **options)
    total = -(-size // (5 << 20))
    assert result["parts_resumed"] >= 1 and result["parts"] + result["parts_resumed"] == total == 3
    assert len(parts) == result["parts"] < total
    status, headers, body = s3.get(s3.url(bucket, PREFIX) + artifact)
    assert status == 200 and hashlib.sha256(body).hexdigest() == artifact.rsplit("/", 1)[1][:64]
    assert headers["Cache-Control"] == IMMUTABLE
    assert not s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert '"channel":"stable"' in ngclient_accepts(s3.url(bucket, PREFIX),
                                                     (repo.metadata_dir / "1.root.json").read_bytes(),
                                                     _fresh_dir(repo.path.parent / "client"))


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_prune_deletes_only_what_the_prune_rule_gives_up(
        s3: SeaweedS3, bucket: str, aws_env: dict[str, str], repo: Repository, keystore: KeyStore,
        source: Callable[..., Path]) -> None:
    dest = f"s3://{bucket}/{PREFIX}"
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        _publish(repo, keystore, source, version)
        sync_s3(repo.path, dest)
    everything = _objects(s3, bucket)
    later = ops.utcnow() + timedelta(days=8)  # every snapshot but the current one has expired by then
    assert sync_s3(repo.path, dest, now=later)["copied"] == 0 and _objects(s3, bucket) == everything  # no --prune
    expected = {str(p.relative_to(repo.path)) for p in prune_plan(repo, later).delete}
    assert expected and all(".root." not in r for r in expected)
    dry = sync_s3(repo.path, dest, prune=True, dry_run=True, now=later)
    assert set(dry["would_delete"]) == expected and _objects(s3, bucket) == everything
    done = sync_s3(repo.path, dest, prune=True, now=later)
    assert set(done["deleted"]) == expected
    assert set(_objects(s3, bucket)) == set(everything) - expected
    assert all(r in _objects(s3, bucket) for r in everything if r.startswith("targets/") or ".root." in r)
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    assert '"version":"1.3.0"' in ngclient_accepts(s3.url(bucket, PREFIX), root, _fresh_dir(repo.path.parent / "c"))


# -- failures: one line, a documented exit code, no credentials --------------------------------------

def test_failures_are_one_line_with_exit_code_8_and_never_show_credentials(
        s3: SeaweedS3, bucket: str, repo: Repository) -> None:
    base = {**s3.env(), "AWS_ENDPOINT_URL": s3.endpoint}
    closed = f"http://127.0.0.1:{_closed_port()}"
    cases = {
        "cannot reach the object store": ({**base, "AWS_ENDPOINT_URL": closed}, bucket),
        "refused the credentials": ({**base, "AWS_SECRET_ACCESS_KEY": "wrong" + s3.secret_key[5:]}, bucket),
        "does not exist": (base, "no-such-bucket-here"),
        "no S3 credentials": ({k: v for k, v in base.items() if not k.startswith("AWS_ACCESS")
                               and k != "AWS_SECRET_ACCESS_KEY"}, bucket),
    }
    for expected, (env, name) in cases.items():
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        proc = subprocess.run([sys.executable, "-m", "pinnacle_updates.repo_tools", "sync", str(repo.path),
                               f"s3://{name}/{PREFIX}"], capture_output=True, text=True, cwd=ROOT,
                              env={**clean, **env}, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == ObjectStoreError.exit_code, proc.stderr
        assert len(lines) == 1 and expected in lines[0], (expected, proc.stderr)
        assert "Traceback" not in proc.stderr and s3.secret_key[5:] not in proc.stderr + proc.stdout
        assert s3.access_key not in proc.stderr + proc.stdout
    bad = _sync_cli(repo.path, "x", env=base, check=False)  # "s3://x/...": not a bucket name
    assert bad.returncode == ObjectStoreError.exit_code and "not an s3://BUCKET[/PREFIX] URL" in bad.stderr
    with pytest.raises(ObjectStoreError, match="not an s3://"):
        Location.parse("s3://bucket/../x")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the kill loop -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sync_killed_at_random_points_never_serves_an_inconsistent_repository(
        s3: SeaweedS3, bucket: str, aws_env: dict[str, str], repo: Repository, keystore: KeyStore,
        source: Callable[..., Path], tmp_path: Path) -> None:
    rng = random.Random(11)
    dest = f"s3://{bucket}/{PREFIX}"
    url = s3.url(bucket, PREFIX)
    _publish(repo, keystore, source, "1.0.0", size=32 << 10)
    sync_s3(repo.path, dest)
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    long_lived = _fresh_dir(tmp_path / "client-metadata")  # one client keeps its trusted metadata
    ngclient_accepts(url, root, long_lived)
    env = {**os.environ, **aws_env}

    kills = behind = verified = 0
    runs = 30
    for n in range(runs):
        _publish(repo, keystore, source, f"1.0.{n + 1}", size=32 << 10)
        rotated = n % 8 == 7
        if rotated:
            rotate.rotate_key(repo, keystore, "timestamp")  # new root versions (and the exception) in the mix
            keystore = KeyStore(keystore.directory)
        pending = sync_s3(repo.path, dest, dry_run=True)["copied"]
        proc = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "sync", str(repo.path), dest,
                                 "--verbose", "--jobs", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        wanted = rng.randrange(pending)  # kill after this many confirmed uploads, up to the last one
        kills += kill_after_lines(proc, "copied ", wanted, rng, jitter=0.01)
        served = s3.get(url + "metadata/timestamp.json")[2]
        behind += served != (repo.metadata_dir / "timestamp.json").read_bytes()
        # Whatever the kill left, a fresh ngclient and the long-lived one accept the bucket ...
        for metadata_dir in (_fresh_dir(tmp_path / f"fresh-{n}"), long_lived):
            assert '"channel":"stable"' in ngclient_accepts(url, root, metadata_dir)
        # ... and so does verify (what `pinnacle-release verify` runs), on a copy of what the bucket serves.
        report = verify_repository(_download(s3, bucket, tmp_path / f"copy-{n}"), ops.utcnow())
        assert not report.problems, report.problems
        verified += 1
        # Half the time the operator reruns the sync to the end; always after a key rotation
        # (docs/OPERATIONS.md: a sync interrupted then must finish before the next publish).
        if rotated or rng.random() < 0.5:
            sync_s3(repo.path, dest)
            assert '"channel":"stable"' in ngclient_accepts(url, root, long_lived)
    assert kills >= 20, kills
    assert behind >= 10, "the kills never landed before the commit point: the test would prove nothing"
    sync_s3(repo.path, dest)
    assert _objects(s3, bucket) == _servable(repo.path)
    assert f'"version":"1.0.{runs}"' in ngclient_accepts(url, root, long_lived)
    run_cli("pinnacle-release", "verify", str(_download(s3, bucket, tmp_path / "final")))  # the command itself
    print(f"kill loop: {runs} runs, {kills} SIGKILLs, {behind} before the commit point, {verified} verify copies")
