"""Static hosting: nginx with the configuration ``pinnacle-release nginx-config`` prints, and the
Python server, answer the same, and a client works the same against both.

The rest of the suite is served by nginx by default (``tests/conftest.py``); this module runs
the same smoke test against both servers, compares their headers, and proves with nginx's access
log that a download killed half way resumes with one range request for the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinnacle_updates.client.installer import Installer
from pinnacle_updates.client.transport import HttpxFetcher
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats.index import TargetRef
from pinnacle_updates.repo_tools.errors import ReleaseError
from pinnacle_updates.repo_tools.hosting import IMMUTABLE, NO_STORE, nginx_site
from pinnacle_updates.repo_tools.store import Repository
from tests import helpers_client as hc
from tests.conftest import SERVER_ENV, ServedRepo, run_cli, server_kind, start_server
from tests.nginx_server import NginxServer, find_nginx

VERSIONS = ("1.0.0", "1.1.0")


def app(version: str, i: int) -> dict[str, str | bytes]:
    """A few hundred KB that barely change between versions: the update is a small delta."""
    big = bytearray(hc._pseudo_random("big", 600_000))
    big[20_000 * (i + 1) : 20_000 * (i + 1) + 16] = hashlib.md5(version.encode()).digest()
    return {"bin/app": f"#!/bin/sh\necho app {version}\n", "VERSION": f"{version}\n", "healthy": "ok\n",
            "lib/big.bin": bytes(big)}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> hc.Repo:
    repo = hc.make_repo(tmp_path_factory.mktemp("hosting"))
    for i, version in enumerate(VERSIONS):
        hc.publish(repo, version, app(version, i))
    (repo.dir / ".pinnacle.lock").touch()  # the publisher's lock file: never served
    return repo


def start(kind: str, directory: Path) -> ServedRepo:
    if kind == "nginx" and find_nginx() is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("nginx is not installed (apt-get install nginx-light); CI fails here instead")
    return start_server(directory, kind)


@pytest.fixture(params=["nginx", "python"])
def server(request: pytest.FixtureRequest, published: hc.Repo) -> Iterator[ServedRepo]:
    served = start(request.param, published.dir)
    yield served
    served.stop()


def full_artifact(repo: hc.Repo, version: str) -> tuple[TargetRef, bytes]:
    """The signed reference of a release's full artifact, and its bytes as stored."""
    store = Repository(repo.dir)
    found = store.channel_index(store.load(), "stable").find(version, "any")
    assert found is not None
    return found.full, store.target_location(found.full.path, found.full.sha256).read_bytes()


def target_url(base: str, path: str, sha256: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{base}targets/{directory}/{sha256}.{name}"


def update(d: Path, *args: str) -> str:
    return run_cli("pinnacle-update", "--install-dir", str(d), *args).stdout


# -- the same client flow against both servers --------------------------------------------------


def test_init_install_delta_update_and_a_resumed_download(server: ServedRepo, published: hc.Repo,
                                                          tmp_path: Path) -> None:
    d = tmp_path / "inst"
    update(d, "init", "--repo", server.url, "--root", str(published.root_json), "--channel", "stable",
           "--platform", "any")  # fmt: skip
    update(d, "install", "1.0.0")
    assert json.loads(update(d, "check", "--json"))["path"] == "delta:1.0.0->1.1.0"
    update(d, "install")
    records = [r for r in json.loads(update(d, "history", "--json")) if r["op"] == "install"]
    assert [(r["version"], r["outcome"], r["path"]) for r in records] == [
        ("1.0.0", "committed", "full"), ("1.1.0", "committed", "delta")
    ]
    assert (d / "current" / "VERSION").read_text() == "1.1.0\n"

    # A download that an earlier run left half done continues with a range request.
    full, stored = full_artifact(published, "1.1.0")
    url = target_url(server.url, full.path, full.sha256)
    half = full.length // 2
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / hashlib.sha256(url.encode()).hexdigest()).write_bytes(stored[:half])
    fetcher = HttpxFetcher(partial_dir=partial)
    with RepositoryClient(server.url, tmp_path / "tuf", tmp_path / "cache", published.root_json.read_bytes(),
                          fetcher=fetcher) as client:  # fmt: skip
        client.refresh()
        newest = client.channel_index("stable").latest("any")
        assert newest is not None and newest.version == "1.1.0"
        before = fetcher.stats.bytes
        assert client.fetch_target(newest.full).read_bytes() == stored
        assert (fetcher.stats.resumed, fetcher.stats.resumed_bytes) == (1, half)
        assert fetcher.stats.bytes - before == full.length - half
    if isinstance(server, NginxServer):  # and the server agrees: one 206 with the rest
        path = url.removeprefix(server.url.rstrip("/"))
        logged = server.wait_for(lambda rs: any(r.path == path for r in rs))
        assert [(r.status, r.range, r.body_bytes) for r in logged if r.path == path] == [
            (206, f"bytes={half}-", full.length - half)
        ]


def test_both_servers_send_the_same_status_headers_and_bytes(published: hc.Repo) -> None:
    full, body = full_artifact(published, "1.0.0")
    target = target_url("/", full.path, full.sha256)
    probes: dict[str, tuple[str, str, dict[str, str]]] = {
        "timestamp": ("GET", "/metadata/timestamp.json", {}),
        "timestamp HEAD": ("HEAD", "/metadata/timestamp.json", {}),
        "timestamp plain": ("GET", "/metadata/timestamp.json", {"Accept-Encoding": "identity"}),
        "timestamp gzip refused": ("GET", "/metadata/timestamp.json", {"Accept-Encoding": "gzip;q=0, zstd"}),
        "root": ("GET", "/metadata/1.root.json", {}),
        "next root": ("GET", "/metadata/2.root.json", {}),  # every refresh probes for a new root
        "target": ("GET", target, {}),
        "target HEAD": ("HEAD", target, {}),
        "rest": ("GET", target, {"Range": "bytes=1000-"}),
        "middle": ("GET", target, {"Range": "bytes=10-19"}),
        "suffix": ("GET", target, {"Range": "bytes=-5"}),
        "two ranges": ("GET", target, {"Range": "bytes=0-1,5-6"}),  # answered with the whole file
        "trailing slash": ("GET", target + "/", {}),
        "top": ("GET", "/", {}),
        "directory": ("GET", "/metadata/", {}),
        "lock file": ("GET", "/.pinnacle.lock", {}),
    }
    answers: dict[str, dict[str, tuple[object, ...]]] = {}
    for kind in ("nginx", "python"):
        served = start(kind, published.dir)
        try:
            with httpx.Client(base_url=served.url.rstrip("/")) as http:
                answers[kind] = {}
                for name, (method, path, headers) in probes.items():
                    r = http.request(method, path, headers=headers)
                    ok = r.status_code < 400
                    coded = r.headers.get("Content-Encoding")
                    # nginx sends a gzipped answer chunked (no length); the Python server gives its length.
                    answers[kind][name] = (r.status_code, r.headers.get("Cache-Control"),
                                           r.headers.get("Content-Range"), r.content if ok else b"",
                                           r.headers.get("Content-Length") if ok and not coded else None,
                                           coded, r.headers.get("Vary") if ok else None)
        finally:
            served.stop()
    assert answers["nginx"] == answers["python"]
    got = answers["nginx"]
    # JSON goes gzipped to a client that accepts it (httpx does), plain to one that does not; never a target
    assert got["timestamp"][5:] == got["root"][5:] == ("gzip", "Accept-Encoding")
    assert got["timestamp plain"][5:] == (None, "Accept-Encoding")
    assert got["timestamp plain"][3] == got["timestamp"][3]
    assert got["target"][5] is None
    assert got["timestamp"][:3] == got["timestamp HEAD"][:3] == (200, NO_STORE, None)
    assert got["root"][:2] == (200, IMMUTABLE) and got["next root"][:2] == (404, NO_STORE)
    assert got["target"][:5] == got["two ranges"][:5] == (200, IMMUTABLE, None, body, str(len(body)))
    assert got["rest"][:5] == (206, IMMUTABLE, f"bytes 1000-{len(body) - 1}/{len(body)}", body[1000:],
                           str(len(body) - 1000))
    assert got["suffix"][2:4] == (f"bytes {len(body) - 5}-{len(body) - 1}/{len(body)}", body[-5:])
    assert got["target HEAD"][:5] == (200, IMMUTABLE, None, b"", str(len(body)))
    assert got["timestamp gzip refused"][5] is None
    assert {got[k][:2] for k in ("trailing slash", "top", "directory", "lock file")} == {(404, NO_STORE)}


# -- nginx: the access log proves what went over the wire ----------------------------------------

KILLED_INSTALL = """
import sys
from pathlib import Path
from pinnacle_updates.formats.index import TargetRef
from pinnacle_updates.client.installer import Installer
Installer(Path(sys.argv[1])).install(sys.argv[2])
"""


def _partial_bytes(partial_dir: Path) -> int:
    """Bytes in the client's partial downloads now; a file may finish (and go) between the listing and its
    stat (a small target downloaded before the artifact)."""
    total = 0
    for p in partial_dir.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def test_a_download_killed_half_way_resumes_with_one_range_request_for_the_rest(published: hc.Repo,
                                                                                tmp_path: Path) -> None:
    if find_nginx() is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("nginx is not installed")
    size = full_artifact(published, "1.0.0")[0].length
    with NginxServer(published.dir, limit_rate="256k") as srv:  # about 2.5 s for the artifact
        d = tmp_path / "inst"
        hc.init_client(d, srv.url, published)
        proc = subprocess.Popen([sys.executable, "-c", KILLED_INSTALL, str(d), "1.0.0"], env=hc.env(), cwd=hc.ROOT)
        partial_dir = d / "cache" / "partial"
        deadline = time.monotonic() + 60
        while _partial_bytes(partial_dir) < size // 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the download did not get half way"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [partial] = partial_dir.iterdir()
        kept = partial.stat().st_size
        assert size // 2 <= kept < size

        def full_requests(logged: list) -> list:
            return [r for r in logged if r.path.endswith(".full.tar.zst")]

        [first] = full_requests(srv.wait_for(lambda rs: len(full_requests(rs)) == 1))
        assert (first.status, first.range) == (200, None)
        assert kept <= first.body_bytes < size  # nginx sent at least what the client kept, not all of it

        result = Installer(d).install("1.0.0")
        assert result.outcome == "committed"
        logged = srv.wait_for(lambda rs: len(full_requests(rs)) == 2)
    second = full_requests(logged)[1]
    assert (second.status, second.range, second.body_bytes) == (206, f"bytes={kept}-", size - kept)
    assert list(partial_dir.iterdir()) == []


# -- the configuration itself --------------------------------------------------------------------


def test_the_printed_configuration_is_what_nginx_runs(published: hc.Repo, tmp_path: Path) -> None:
    site = run_cli("pinnacle-release", "nginx-config", str(published.dir), "--port", "8080").stdout
    assert site == nginx_site(published.dir, listen="8080")
    assert f'root "{published.dir}";' in site and "listen 8080;" in site
    nginx = find_nginx()
    if nginx is None:
        return
    prefix = tmp_path / "prefix"
    conf = run_cli("pinnacle-release", "nginx-config", str(published.dir), "--standalone", str(prefix)).stdout
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(conf)
    check = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("args", [
    ["/srv/re$po"], ["/srv/repo", "--listen", "80; include /etc/passwd"], ["/srv/repo", "--server-name", "a{b"],
])  # fmt: skip
def test_values_nginx_would_read_as_syntax_are_refused_in_one_line(args: list[str]) -> None:
    proc = run_cli("pinnacle-release", "nginx-config", *args, check=False)
    assert proc.returncode == ReleaseError.exit_code and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "cannot go into an nginx configuration" in proc.stderr


def test_the_suite_uses_nginx_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setattr(conftest, "find_nginx", lambda: "/usr/sbin/nginx")
    assert server_kind() == "nginx"
    monkeypatch.setenv(SERVER_ENV, "python")
    assert server_kind() == "python"
    monkeypatch.delenv(SERVER_ENV)
    monkeypatch.setattr(conftest, "find_nginx", lambda: None)
    monkeypatch.setenv("CI", "false")
    assert server_kind() == "python"  # a developer machine without nginx
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="nginx is not installed"):
        server_kind()  # CI never quietly falls back
