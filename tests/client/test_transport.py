"""client.transport: the fetcher python-tuf calls, against real sockets and real files."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError

from pinnacle_updates.client.transport import USER_AGENT, HttpxFetcher, TransportSettings, local_path
from pinnacle_updates.repo_tools.serve import RangeNotSatisfiable, parse_range
from tests.fixtures_repo import Script, ScriptedServer, free_port
from tests.range_server import RangeServer

DATA = bytes(range(256)) * 1000  # 256 000 bytes: several chunks


def fetcher(**overrides: float) -> tuple[HttpxFetcher, list[float]]:
    """A fetcher whose sleeps are recorded instead of slept."""
    slept: list[float] = []
    settings = TransportSettings(
        **{"retries": 3, "backoff_initial": 0.5, "backoff_max": 4.0, "chunk_size": 10_000, **overrides}  # type: ignore[arg-type]
    )
    return HttpxFetcher(settings, sleep=slept.append, rng=random.Random(7)), slept


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site" / "dir").mkdir(parents=True)
    (tmp_path / "site" / "blob.bin").write_bytes(DATA)
    return tmp_path / "site"


# -- local files -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True])
def test_local_file_in_chunks(site: Path, as_url: bool) -> None:
    f, _ = fetcher()
    seen: list[int] = []
    f.on_bytes = seen.append
    target = site / "blob.bin"
    chunks = list(f.fetch(target.as_uri() if as_url else str(target)))
    assert b"".join(chunks) == DATA and len(chunks) == 26
    assert sum(seen) == len(DATA) == f.stats.bytes and f.stats.requests == 1


@pytest.mark.parametrize("name", ["missing.json", "dir", "blob.bin/below"])
def test_missing_local_file_is_404(site: Path, name: str) -> None:
    f, _ = fetcher()
    with pytest.raises(DownloadHTTPError) as err:
        list(f.fetch(str(site / name)))
    assert err.value.status_code == 404


def test_download_bytes_enforces_max_length(site: Path) -> None:
    f, _ = fetcher()
    assert f.download_bytes(str(site / "blob.bin"), len(DATA)) == DATA
    with pytest.raises(DownloadError, match="exceeding"):
        f.download_bytes(str(site / "blob.bin"), 100)


def test_local_path_parsing(tmp_path: Path) -> None:
    assert local_path("https://example.com/repo/") is None
    assert local_path("HTTP://example.com/") is None
    assert local_path("/srv/repo/metadata/1.root.json") == Path("/srv/repo/metadata/1.root.json")
    assert local_path("file:///srv/my%20repo/x.json") == Path("/srv/my repo/x.json")
    assert local_path("file://localhost/srv/x") == Path("/srv/x")
    assert local_path("relative/dir") == Path("relative/dir")
    assert local_path(r"C:\repo\x.json") == Path(r"C:\repo\x.json")  # a drive letter is not a scheme
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        local_path("ftp://example.com/repo")
    with pytest.raises(DownloadError, match="remote file URLs"):
        local_path("file://otherhost/x")


# -- HTTP --------------------------------------------------------------------------------------


def test_http_body_user_agent_and_stats(site: Path) -> None:
    with ScriptedServer(site) as srv:
        f, slept = fetcher()
        seen: list[int] = []
        f.on_bytes = seen.append
        assert b"".join(f.fetch(f"{srv.url}blob.bin")) == DATA
        assert srv.user_agents == [USER_AGENT] and USER_AGENT.startswith("pinnacle-updates/")
        assert f.stats.requests == 1 and f.stats.bytes == len(DATA) == sum(seen) and f.stats.retries == 0
        assert slept == []


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_retryable_statuses_then_success(site: Path, status: int) -> None:
    with ScriptedServer(site, Script(failures=2, status=status)) as srv:
        f, slept = fetcher()
        assert b"".join(f.fetch(f"{srv.url}blob.bin")) == DATA
        assert srv.hits["/blob.bin"] == 3
        assert f.stats.requests == 3 and f.stats.retries == 2 and len(slept) == 2


def test_backoff_grows_and_is_capped(site: Path) -> None:
    with ScriptedServer(site, Script(failures=100, status=500)) as srv:
        f, slept = fetcher(retries=5, backoff_initial=1.0, backoff_max=4.0)
        with pytest.raises(DownloadHTTPError) as err:
            list(f.fetch(f"{srv.url}blob.bin"))
        assert err.value.status_code == 500 and "after 6 attempt(s)" in str(err.value)
        assert srv.hits["/blob.bin"] == 6
        ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
        assert len(slept) == 5
        assert all(c / 2 <= s <= c for s, c in zip(slept, ceilings, strict=True))


def test_retry_after_is_honoured_up_to_the_cap(site: Path) -> None:
    with ScriptedServer(site, Script(failures=2, status=503, headers={"Retry-After": "3"})) as srv:
        f, slept = fetcher(backoff_initial=0.01, backoff_max=2.0)
        assert b"".join(f.fetch(f"{srv.url}blob.bin")) == DATA
        assert slept == [2.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_errors_are_final(site: Path, status: int) -> None:
    with ScriptedServer(site, Script(failures=100, status=status)) as srv:
        f, slept = fetcher()
        with pytest.raises(DownloadHTTPError) as err:
            list(f.fetch(f"{srv.url}blob.bin"))
        assert err.value.status_code == status and "attempt" not in str(err.value)
        assert srv.hits["/blob.bin"] == 1 and slept == []


def test_real_404(site: Path) -> None:
    with ScriptedServer(site) as srv:
        f, _ = fetcher()
        with pytest.raises(DownloadHTTPError, match=r"nothing.json: HTTP 404 Not Found$"):
            list(f.fetch(f"{srv.url}nothing.json"))


def test_connection_refused_is_retried() -> None:
    f, slept = fetcher(retries=2)
    with pytest.raises(DownloadError) as err:
        list(f.fetch(f"http://127.0.0.1:{free_port()}/x"))
    assert not isinstance(err.value, DownloadHTTPError)
    assert "connection refused after 3 attempt(s)" in str(err.value).lower()
    assert f.stats.requests == 3 and len(slept) == 2


def test_stalled_body_raises_slow_retrieval(site: Path) -> None:
    with ScriptedServer(site, Script(stall=3)) as srv:
        f, _ = fetcher(read_timeout=0.2)
        with pytest.raises(SlowRetrievalError, match="stalled"):
            list(f.fetch(f"{srv.url}blob.bin"))


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        TransportSettings(read_timeout=0)
    with pytest.raises(ValueError):
        TransportSettings(retries=-1)


def test_backoff_jitter_stays_in_range() -> None:
    s = TransportSettings(backoff_initial=0.5, backoff_max=8.0)
    rng = random.Random(1)
    for attempt in range(8):
        ceiling = min(8.0, 0.5 * 2**attempt)
        for _ in range(50):
            assert ceiling / 2 <= s.backoff(attempt, rng) <= ceiling


# -- resumable target downloads ------------------------------------------------------------------

TARGET = f"{'ab' * 32}.full.tar.zst"  # a content-addressed name, as consistent snapshots serve targets


@pytest.fixture
def ranged(site: Path) -> Iterator[RangeServer]:
    (site / TARGET).write_bytes(DATA)
    (site / "2.snapshot.json").write_bytes(DATA)
    with RangeServer(site) as srv:
        yield srv


def resumable(partial: Path, **overrides: float) -> HttpxFetcher:
    settings = TransportSettings(**{"retries": 2, "chunk_size": 10_000, **overrides})  # type: ignore[arg-type]
    return HttpxFetcher(settings, sleep=lambda s: None, rng=random.Random(7), partial_dir=partial)


def test_a_broken_body_continues_with_a_range_request(ranged: RangeServer, tmp_path: Path) -> None:
    ranged.drop_after = len(DATA) // 2
    f = resumable(tmp_path / "partial")
    seen: list[int] = []
    f.on_bytes = seen.append
    assert b"".join(f.fetch(f"{ranged.url}{TARGET}")) == DATA
    assert ranged.bytes_for(TARGET) == len(DATA)  # nothing was sent twice
    assert [r for _, r in ranged.ranges] == [None, f"bytes={len(DATA) // 2}-"]
    assert f.stats.resumed == 1 and f.stats.resumed_bytes == len(DATA) // 2 and f.stats.bytes == len(DATA)
    assert sum(seen) == len(DATA)
    assert list((tmp_path / "partial").iterdir()) == []  # complete: nothing kept


def test_an_interrupted_download_resumes_in_the_next_attempt(ranged: RangeServer, tmp_path: Path) -> None:
    ranged.drop_after = 100_000
    first = resumable(tmp_path / "partial", retries=0)
    with pytest.raises(DownloadError, match="transfer broke off"):
        list(first.fetch(f"{ranged.url}{TARGET}"))
    [kept] = (tmp_path / "partial").iterdir()
    assert kept.read_bytes() == DATA[:100_000]
    second = resumable(tmp_path / "partial")
    assert second.download_bytes(f"{ranged.url}{TARGET}", len(DATA)) == DATA  # as ngclient reads it
    assert ranged.bytes_for(TARGET) == len(DATA)
    assert second.stats.bytes == len(DATA) - 100_000 and second.stats.resumed_bytes == 100_000
    assert not kept.exists()


def test_a_server_ignoring_ranges_restarts_from_zero(ranged: RangeServer, tmp_path: Path) -> None:
    ranged.drop_after = 100_000
    ranged.ignore_range = True
    f = resumable(tmp_path / "partial")
    assert b"".join(f.fetch(f"{ranged.url}{TARGET}")) == DATA  # the repeated prefix is skipped, not doubled
    assert ranged.bytes_for(TARGET) == len(DATA) + 100_000 and f.stats.resumed == 0


def test_a_partial_longer_than_the_file_gets_416_and_starts_over(ranged: RangeServer, tmp_path: Path) -> None:
    f = resumable(tmp_path / "partial")
    url = f"{ranged.url}{TARGET}"
    part = f._partial_path(url)
    assert part is not None
    part.parent.mkdir()
    part.write_bytes(DATA + b"junk")
    assert b"".join(f.fetch(url)) == DATA
    assert [r for _, r in ranged.ranges] == [f"bytes={len(DATA) + 4}-", None]


def test_a_body_longer_than_signed_is_not_kept(ranged: RangeServer, tmp_path: Path) -> None:
    ranged.drop_after = 100_000
    f = resumable(tmp_path / "partial", retries=0)
    with pytest.raises(DownloadError):
        list(f.fetch(f"{ranged.url}{TARGET}"))
    with pytest.raises(DownloadError, match="exceeding"):
        f.download_bytes(f"{ranged.url}{TARGET}", 50_000)  # the consumer stops: the partial is dropped
    assert list((tmp_path / "partial").iterdir()) == []


def test_metadata_is_never_resumed(ranged: RangeServer, tmp_path: Path) -> None:
    ranged.drop_after = 1_000  # of the gzipped body: JSON goes gzipped
    f = resumable(tmp_path / "partial")
    with pytest.raises(DownloadError, match="transfer broke off"):
        list(f.fetch(f"{ranged.url}2.snapshot.json"))
    assert [r for _, r in ranged.ranges] == [None]
    assert not (tmp_path / "partial").exists()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-", (0, 99)),
        ("bytes=10-19", (10, 19)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=20-10", None),
        ("bytes=0-1,5-6", None),
        ("items=0-", None),
        ("bytes=-", None),
    ],
)
def test_serve_parses_single_byte_ranges(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=-0"])
def test_serve_refuses_ranges_past_the_end(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_serve_answers_206_and_416(ranged: RangeServer) -> None:
    import httpx

    with httpx.Client() as c:
        part = c.get(f"{ranged.url}{TARGET}", headers={"Range": "bytes=1000-1009"})
        assert part.status_code == 206 and part.content == DATA[1000:1010]
        assert part.headers["Content-Range"] == f"bytes 1000-1009/{len(DATA)}"
        past = c.get(f"{ranged.url}{TARGET}", headers={"Range": f"bytes={len(DATA)}-"})
        assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(DATA)}"
        whole = c.get(f"{ranged.url}{TARGET}")
        assert whole.status_code == 200 and whole.content == DATA
        assert whole.headers["Cache-Control"].endswith("immutable")
