"""Targets signed with hash algorithms other than sha256 (issue 17, class 10).

python-tuf verifies whatever hashes targets metadata lists and names each stored file by the first
(``<hash>.<name>``). A repository whose channel role lists only sha512 (or blake2b-256, or sha384
ahead of sha256) is built here with the real publisher, then edited as another TUF tool would have
written it: every target re-hashed, stored under its new content address (the sha256 file removed),
the channel role, snapshot and timestamp re-signed with the repository's real keys. nginx serves it;
the real client installs from it (full artifact, then a delta). The channel index keeps pinnacle's
own sha256 references, which the client checks on the verified downloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from tuf.api.metadata import TargetFile

from pinnacle_updates.client.errors import TrustError, UpdateError
from pinnacle_updates.client.transport import HttpxFetcher
from pinnacle_updates.client.trust import BROKEN_HASHES, RepositoryClient
from pinnacle_updates.formats.index import ChannelIndex, compressed_index_path, index_path
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.client.repo_edits import CHANNEL, publish_versions, resign, stored
from tests.conftest import ServedRepo, run_cli, tree_digest
from tests.fixtures_repo import FixtureRepo
from tests.helpers_client import Repo, init_client


def _rehash(repository: Repository, keystore: KeyStore, algorithms: list[str]) -> None:
    """Every target of the channel re-hashed with ``algorithms`` only and stored under its new name."""

    def edit(targets: dict[str, TargetFile]) -> None:
        for path, old in list(targets.items()):
            source = stored(repository, old)
            data = source.read_bytes()
            new = TargetFile.from_data(path, data, algorithms)
            stored(repository, new).write_bytes(data)
            if stored(repository, new) != source:
                source.unlink()  # served only under the new content address, as the other tool wrote it
            targets[path] = new

    resign(repository, keystore, edit)


def _edit_index(repository: Repository, keystore: KeyStore, change: Callable[[dict[str, object]], None]) -> None:
    """Rewrite the channel index (pinnacle's own signed target, JSON and compressed) and sign its new hashes."""
    path = index_path(CHANNEL)

    def edit(targets: dict[str, TargetFile]) -> None:
        old = targets[path]
        doc = json.loads(stored(repository, old).read_bytes())
        change(doc)
        data = ChannelIndex.from_bytes(json.dumps(doc).encode()).to_bytes()
        for target, content in ((path, data), (compressed_index_path(CHANNEL), zstandard.compress(data))):
            new = TargetFile.from_data(target, content, list(old.hashes))
            stored(repository, new).write_bytes(content)
            targets[target] = new

    resign(repository, keystore, edit)


def _cli(install_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pinnacle-update", "--install-dir", str(install_dir), *args, check=False)


# In the order canonical JSON writes them (sorted): python-tuf names the file by the first one it reads.
@pytest.mark.parametrize("algorithms", [["sha512"], ["blake2b-256", "sha256"], ["sha384", "sha512"]])
def test_a_target_signed_without_a_leading_sha256_installs_and_updates_by_delta(
    tmp_path: Path, repo: Repository, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo],
    algorithms: list[str],
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0", "1.1.0")
    _rehash(repo, keystore, algorithms)
    targets = repo.load().channels[CHANNEL].signed.targets
    assert {tuple(info.hashes) for info in targets.values()} == {tuple(algorithms)}
    for info in targets.values():  # each served only under its first hash, as python-tuf will ask for it
        data = stored(repo, info).read_bytes()
        assert not repo.target_location(info.path, hashlib.sha256(data).hexdigest()).exists()

    installer = init_client(tmp_path / "client", serve(repo.path).url, Repo(repo.path, keys_dir))
    full = installer.install("1.0.0", force=True)
    assert (full.outcome, full.version, full.route.get("path")) == ("committed", "1.0.0", "full")
    update = installer.install()
    assert (update.outcome, update.version, update.route.get("path")) == ("committed", "1.1.0", "delta"), update.route
    assert (tmp_path / "client" / "current" / "VERSION").read_text() == "1.1.0\n"
    assert installer.verify().ok


def test_a_download_of_a_target_named_by_its_sha512_resumes(
    tmp_path: Path, repo: Repository, keystore: KeyStore, serve: Callable[[Path], ServedRepo],
) -> None:
    """Content-addressed names are whatever digest comes first: an interrupted download of
    ``<sha512>.full.tar.zst`` continues with a range request like a sha256-named one."""
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    _rehash(repo, keystore, ["sha512"])
    served = serve(repo.path)
    fetcher = HttpxFetcher(partial_dir=tmp_path / "partial")
    with RepositoryClient(served.url, tmp_path / "tuf", tmp_path / "cache",
                          (repo.metadata_dir / "1.root.json").read_bytes(), fetcher=fetcher) as client:
        release = client.channel_index(CHANNEL).latest("any")
        assert release is not None
        info = repo.load().channels[CHANNEL].signed.targets[release.full.path]
        data = stored(repo, info).read_bytes()
        directory, _, name = info.path.rpartition("/")
        url = f"{served.url}targets/{directory}/{info.hashes['sha512']}.{name}"
        (tmp_path / "partial").mkdir(exist_ok=True)  # the channel index download made it
        (tmp_path / "partial" / hashlib.sha256(url.encode()).hexdigest()).write_bytes(data[: len(data) // 2])
        before = fetcher.stats.bytes
        assert client.fetch_target(release.full).read_bytes() == data
    assert fetcher.stats.resumed == 1
    assert fetcher.stats.bytes - before == len(data) - len(data) // 2


def test_a_reference_that_disagrees_with_the_signed_bytes_is_refused_in_one_line(
    tmp_path: Path, repo: Repository, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo],
) -> None:
    """Signed sha512 only: the index's sha256 is what binds the file to the release; a wrong one is refused
    after the verified download, and the running slot stays as it was."""
    publish_versions(repo, keystore, tmp_path, "1.0.0", "1.1.0")
    _rehash(repo, keystore, ["sha512"])
    installer = init_client(tmp_path / "client", serve(repo.path).url, Repo(repo.path, keys_dir))
    installer.install("1.0.0", force=True)
    running = tree_digest(tmp_path / "client" / "current")
    wrong = "0" * 64

    def change(doc: dict[str, object]) -> None:
        for release in doc["releases"]:  # type: ignore[attr-defined]
            if release["version"] == "1.1.0":
                release["manifest"]["sha256"] = wrong

    _edit_index(repo, keystore, change)
    proc = _cli(tmp_path / "client", "install")
    assert proc.returncode == TrustError.exit_code, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "manifest.json.zst matches its signed hashes but its sha256 is " in line
    assert f"not the referenced {wrong[:16]}...: refused (the index and the signed targets disagree)" in line
    assert tree_digest(tmp_path / "client" / "current") == running
    assert _cli(tmp_path / "client", "status").returncode == 0


def test_a_tampered_sha512_target_names_the_algorithm(
    tmp_path: Path, repo: Repository, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo],
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    _rehash(repo, keystore, ["sha512"])
    info = next(i for p, i in repo.load().channels[CHANNEL].signed.targets.items() if p.endswith("/full.tar.zst"))
    served = stored(repo, info)
    data = bytearray(served.read_bytes())
    data[100] ^= 0xFF
    served.write_bytes(bytes(data))
    installer = init_client(tmp_path / "client", serve(repo.path).url, Repo(repo.path, keys_dir))
    with pytest.raises(TrustError) as caught:
        installer.install("1.0.0", force=True)
    signed = info.hashes["sha512"]
    assert str(caught.value) == (
        f"target {info.path} failed verification: sha512 hash {hashlib.sha512(data).hexdigest()[:16]}... "
        f"instead of the signed {signed[:16]}... (tampered or corrupted)"
    )


@pytest.mark.parametrize(
    ("hashes", "message"),
    [
        (lambda data: {"md5": hashlib.md5(data).hexdigest()},
         "is signed only with md5, hash algorithms with practical collisions: refused"),
        (lambda data: {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()},
         "is signed only with md5, sha1, hash algorithms with practical collisions: refused"),
        (lambda data: {"sha999": "ab" * 32, "sha512": hashlib.sha512(data).hexdigest()},
         "is signed with hash algorithm sha999, which python-tuf cannot compute: refused"),
        (lambda data: {"sha256\n\x1b[2J": "ab" * 32},
         r"is signed with hash algorithm 'sha256\n\x1b[2J', which python-tuf cannot compute: refused"),
        (lambda data: {"sha512": "../../x"},
         "is signed with a sha512 value that is not a hex digest ('../../x'): refused"),
    ],
    ids=["md5", "sha1+md5", "unknown", "control-characters", "path-as-digest"],
)
def test_hashes_the_client_cannot_rely_on_are_refused_before_any_download(
    tmp_path: Path, repo: Repository, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo],
    hashes: Callable[[bytes], dict[str, str]], message: str,
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    path = index_path(CHANNEL)

    def edit(targets: dict[str, TargetFile]) -> None:
        old = targets[path]
        data = stored(repo, old).read_bytes()
        targets[path] = TargetFile(old.length, hashes(data), path)
        if re.fullmatch(r"[0-9a-f]+", next(iter(targets[path].hashes.values()))):
            stored(repo, targets[path]).write_bytes(data)  # served where python-tuf would look

    resign(repo, keystore, edit)
    server = serve(repo.path)
    install_dir = tmp_path / "client"
    init_client(install_dir, server.url, Repo(repo.path, keys_dir))
    proc = _cli(install_dir, "check")
    assert proc.returncode == TrustError.exit_code, proc.stderr
    assert proc.stderr.strip() == f"pinnacle-update: error: {path} {message}"
    assert _cli(install_dir, "status").returncode == 0
    with pytest.raises(UpdateError):  # the same through the Python API
        init_client(tmp_path / "again", server.url, Repo(repo.path, keys_dir)).check()


# -- property: whatever hashes signed metadata lists, the client answers in one line ----------------------

_ALGORITHMS = ["sha256", "sha512", "sha384", "blake2b-256", "blake2b", "SHA-256", "sha3_256", "md5", "sha1",
               "md5-sha1", "shake_128", "bogus", "", "sha256\n"]


def _digest(algo: str, data: bytes) -> str | None:
    try:
        return TargetFile.from_data("x", data, [algo]).hashes[algo]
    except ValueError:
        return None


def _strong(algo: str) -> bool:
    """Computable (checked before) and free of practical collisions."""
    return algo == "blake2b-256" or hashlib.new(algo).name not in BROKEN_HASHES


@st.composite
def _signed_hashes(draw: st.DrawFn, data: bytes) -> dict[str, str]:
    algorithms = draw(st.lists(st.sampled_from(_ALGORITHMS) | st.text(max_size=12), min_size=1, max_size=4,
                               unique=True))
    hashes = {}
    for algo in algorithms:
        right = _digest(algo, data)
        wrong = draw(st.text(max_size=130) | st.sampled_from(["0" * 64, "f" * 128]))
        hashes[algo] = right if right is not None and draw(st.booleans()) else wrong
    return hashes


def test_any_signed_hashes_give_the_index_or_one_line(tmp_path: Path) -> None:
    """Arbitrary algorithm names and values in the signed entry of the channel index (re-signed each
    time): the index is read only when every hash is right, computable and one is not broken; any
    other case is one printable line of the client's own errors."""
    fixture = FixtureRepo(tmp_path / "repo")
    fixture.publish(CHANNEL, "1.0.0")
    path = index_path(CHANNEL)
    data = fixture.target_file(path).read_bytes()
    strong_seen = refused_seen = 0

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(_signed_hashes(data))
    def check(hashes: dict[str, str]) -> None:
        nonlocal strong_seen, refused_seen
        fixture.roles[CHANNEL].signed.targets[path] = TargetFile(len(data), hashes, path)
        first = next(iter(hashes.values()))
        if re.fullmatch(r"[0-9a-f]{1,128}", first):  # served under its first hash, as python-tuf asks
            (fixture.targets_dir / CHANNEL / f"{first}.index.json").write_bytes(data)
        fixture.commit(CHANNEL)
        usable = all(_digest(a, data) == v for a, v in hashes.items()) and any(map(_strong, hashes))
        with RepositoryClient(str(fixture.path), tmp_path / "client" / "metadata", tmp_path / "client" / "cache",
                              fixture.root_bytes) as client:
            try:
                index = client.channel_index(CHANNEL)
            except UpdateError as exc:
                message = str(exc)
                assert not usable, (hashes, message)
                assert message and all(ch.isprintable() for ch in message), message
                refused_seen += 1
            else:
                assert usable, hashes
                assert index.latest("linux-x86_64") is not None
                strong_seen += 1

    check()
    assert strong_seen and refused_seen  # both outcomes were exercised
