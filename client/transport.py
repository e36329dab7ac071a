"""The client's one network seam: a python-tuf fetcher over httpx that also reads local repositories.

python-tuf's ``Updater`` asks its fetcher for URLs (metadata and targets) and verifies whatever
comes back; the fetcher only moves bytes. This one adds what a fleet of clients needs from that
seam and nothing else:

* bounded retries with exponential backoff and jitter on connection errors, timeouts and the
  answers that mean "try again" (5xx, 429); never on 4xx, which will not change by retrying;
* connect and read timeouts; a stalled body raises ``SlowRetrievalError`` as ngclient expects;
* the same interface for ``file://`` URLs and plain paths, so a repository can be a directory
  (a USB stick, an air-gapped mirror, tests); a missing file behaves like an HTTP 404;
* request and byte counters for ``check`` and an ``on_bytes`` hook for progress;
* a private repository's credentials (:class:`RepoAccess`: headers such as a bearer token or basic
  auth, sent only to the repository's own origins; a client certificate and a CA bundle), on every
  request this seam makes, metadata and targets alike;
* resumable target downloads: with a ``partial_dir``, the body of a content-addressed target
  (``<hex digest>.<name>``, what consistent snapshots serve) is kept on disk as it arrives; a transfer
  that breaks off (here, or in a process that was killed) continues with ``Range: bytes=N-``.
  The kept bytes are yielded first, so ngclient hashes the whole file before anything uses it.
  Metadata is never resumed (its names are not content addresses).
* compressed answers, bounded: requests say ``Accept-Encoding: gzip`` (a server may then send the
  JSON metadata and channel index gzipped: about 40% fewer bytes per update; TUF checks the decoded
  bytes as ever) and this seam decodes gzip itself, never more than ``chunk_size`` bytes of output
  per step, so ngclient's length limit stops a decompression bomb after one chunk. Any other
  ``Content-Encoding`` is refused: httpx would decode zstd or deflate whatever was asked, in one
  unbounded step.

Errors leave this module only as ``tuf.api.exceptions.DownloadError`` subclasses (the contract
of ``FetcherInterface``); ``client.trust`` turns them into the client's own errors.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import importlib.metadata
import os
import random
import re
import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from urllib.request import getproxies, url2pathname

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
from tuf.ngclient.fetcher import FetcherInterface


def _client_version() -> str:
    try:
        return importlib.metadata.version("pinnacle-updates")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


USER_AGENT = f"pinnacle-updates/{_client_version()}"

# HTTP answers worth another attempt: the server (or a proxy/CDN in front of it) is overloaded
# or briefly broken. Everything else >= 400 is final.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

ACCEPT_ENCODING = "gzip"
"""The only content coding asked for and accepted (:class:`_BoundedDecoder`); httpx would otherwise
announce and decode zstd and deflate too, each without a bound on one step's output."""


class _BoundedDecoder:
    """Decodes a response body by its ``Content-Encoding`` (none/identity, or gzip) into pieces of at
    most ``limit`` bytes: one compressed network read can never expand into more than that at once."""

    def __init__(self, url: str, encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip().lower() not in ("", "identity")]
        if codings not in ([], ["gzip"], ["x-gzip"]):
            raise DownloadError(f"{url}: the server sent Content-Encoding {encoding!r}; only gzip is accepted")
        self._url = url
        self._limit = max(1, limit)
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if codings else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._inflate is None:
            yield data
            return
        try:
            while data:
                out = self._inflate.decompress(data, self._limit)
                data = self._inflate.unconsumed_tail
                if out:
                    yield out
                if self._inflate.eof:
                    break
        except zlib.error as exc:
            raise DownloadError(f"{self._url}: the gzip body is corrupt: {exc}") from exc

    def finish(self) -> None:
        if self._inflate is not None and not self._inflate.eof:
            raise DownloadError(f"{self._url}: the gzip body ended early")

PARTIAL_MAX_AGE = 7 * 86400
"""Seconds after which an abandoned partial download is deleted (when another one starts)."""

_CONTENT_ADDRESSED = re.compile(r"^[0-9a-f]{32,128}\.[^/]+$")
"""A target name under consistent snapshots: ``<hex digest>.<name>``, the digest of whichever hash
algorithm the targets metadata lists first (sha256's 64 digits, sha512's 128, ...). Metadata names
start with a decimal version, which no real version makes 32 digits long."""
_CONTENT_RANGE = re.compile(r"^bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+|\*)$")


@dataclass(frozen=True)
class TransportSettings:
    """How the client talks to the repository. Defaults suit a CDN over a slow link.

    ``retries`` counts attempts *after* the first. The delay before retry ``n`` (0-based) is
    ``min(backoff_max, backoff_initial * 2**n)`` scaled by a random factor in [0.5, 1]
    ("equal jitter"), so a fleet that lost its server does not come back in lock step.
    A ``Retry-After`` header (429/503) is honoured up to ``backoff_max``.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    chunk_size: int = 64 * 1024
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.retries < 0 or self.backoff_initial < 0 or self.backoff_max < 0:
            raise ValueError("retries and backoff must not be negative")
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling: float = min(self.backoff_max, self.backoff_initial * 2.0**attempt)
        return ceiling * (0.5 + rng.random() / 2)


@dataclass
class TransportStats:
    """What the client moved: ``requests`` counts every attempt (retries and local reads
    included), ``bytes`` every body byte received, ``retries`` the attempts that were repeats,
    ``resumed`` the transfers continued with a range request and ``resumed_bytes`` the bytes
    that did not have to be transferred again because of that."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    resumed: int = 0
    resumed_bytes: int = 0


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying TLS context (system or certifi CAs, ``SSL_CERT_FILE``/``_DIR``),
    built once per process and only when a request needs TLS: loading the CA bundle costs about
    15 ms, and a command opens several fetchers."""
    if not _TLS:
        try:
            _TLS.append(httpx.create_ssl_context())
        except OSError as exc:  # a bad SSL_CERT_FILE/_DIR (ssl.SSLError is an OSError too)
            raise DownloadError(f"cannot load the TLS certificates: {exc}") from exc
    return _TLS[0]


def verify_context(url: str) -> ssl.SSLContext:
    """The TLS context for a client that talks to ``url`` only (no redirect, no proxy): for plain
    ``http`` one that trusts no CA, never used but cheap (building the verifying one loads the CA
    bundle), and that would fail closed if it ever were; else :func:`_tls_context`."""
    return _no_ca_context() if urlsplit(url.strip()).scheme.lower() == "http" else _tls_context()


def _no_ca_context() -> ssl.SSLContext:
    """For connections that carry no TLS: trusts no CA (fails closed), costs nothing to build."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _LazyTLSTransport(httpx.BaseTransport):
    """httpx's default transport, made per scheme on first use, so that plain ``http`` never loads
    the CA bundle. Every ``https`` request (an https repository, or an http URL redirected to
    https) goes through a transport with the verifying :func:`_tls_context`; the ``http`` one gets a
    context that verifies against no CA at all (fails closed), which it never uses: it carries no
    TLS and, without proxies (see :func:`_connection_options`), tunnels none."""

    def __init__(self, tls: Callable[[], ssl.SSLContext] = _tls_context) -> None:
        self._plain: httpx.HTTPTransport | None = None
        self._tls: httpx.HTTPTransport | None = None
        self._make_tls = tls

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            if self._tls is None:
                self._tls = httpx.HTTPTransport(verify=self._make_tls())
            return self._tls.handle_request(request)
        if self._plain is None:
            self._plain = httpx.HTTPTransport(verify=_no_ca_context())
        return self._plain.handle_request(request)

    def close(self) -> None:
        for transport in (self._plain, self._tls):
            if transport is not None:
                transport.close()


def _connection_options(tls: Callable[[], ssl.SSLContext] = _tls_context) -> dict[str, Any]:
    """How an ``httpx.Client`` connects: with a proxy in the environment, httpx's own set-up (its proxy
    rules and ``NO_PROXY``; every transport verifies TLS with ``tls()``, by default
    :func:`_tls_context`), else the lazy transport (httpx then reads no proxies either, and there are
    none to read)."""
    proxies = getproxies()
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return {"verify": tls()}
    return {"transport": _LazyTLSTransport(tls)}


def _origin(url: httpx.URL | str) -> str:
    """``scheme://host:port`` with the scheme's default port written out: what credentials are bound to."""
    url = httpx.URL(url)
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{url.scheme}://{url.host.lower()}:{port}"


@dataclass(frozen=True, repr=False)
class RepoAccess:
    """What a private repository asks of its clients: extra headers (``Authorization: Bearer ...``,
    basic auth, any other), a client certificate and key for mutual TLS, a CA bundle of its own.

    The headers are sent only to ``origins`` (the repository's metadata and targets locations), on
    every request and every redirect within them; a redirect elsewhere (a CDN) gets none of them,
    whatever httpx keeps across redirects. The certificate is presented to any https server of this
    fetcher that asks for one (TLS offers it per connection, not per URL). ``repr`` shows no value:
    the object may end up in a log or a traceback."""

    origins: frozenset[str]
    headers: tuple[tuple[str, str], ...] = ()
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_bundle: Path | None = None

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.headers)
        return (f"RepoAccess(origins={sorted(self.origins)}, headers=[{names}], "
                f"client_cert={self.client_cert}, ca_bundle={self.ca_bundle})")

    @classmethod
    def for_urls(cls, urls: Iterable[str], **fields: Any) -> RepoAccess:
        """Bound to the origins of the http(s) URLs among ``urls`` (local paths need no credentials)."""
        return cls(frozenset(_origin(u) for u in urls if _scheme(u) in ("http", "https")), **fields)

    @property
    def has_tls(self) -> bool:
        return self.client_cert is not None or self.ca_bundle is not None

    def tls_context(self) -> ssl.SSLContext:
        """A verifying context with this access's CA bundle (else the system's) and client certificate:
        built for this fetcher alone, never the process-wide one (a client certificate must not reach
        the hooks' health probes)."""
        try:
            if self.ca_bundle is not None:
                context = ssl.create_default_context(cafile=str(self.ca_bundle))
            else:
                context = httpx.create_ssl_context()
            if self.client_cert is not None:
                key = str(self.client_key) if self.client_key is not None else None
                context.load_cert_chain(str(self.client_cert), key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise DownloadError(f"cannot load the repository's TLS files: {_tls_reason(exc)}") from exc
        return context

    def authorize(self, request: httpx.Request) -> None:
        """Set the headers on a request to one of ``origins``, remove them from any other (httpx
        calls this for every request, redirects included)."""
        ours = _origin(request.url) in self.origins
        for name, value in self.headers:
            if ours:
                request.headers[name] = value
            elif name in request.headers:
                del request.headers[name]


def _tls_reason(exc: BaseException) -> str:
    """An ``ssl``/``OSError`` reason without the file's content (there is none in it, but one line)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(reason).split())


def _scheme(url: str) -> str:
    """The lowercase URL scheme of ``url`` ('' for a plain path)."""
    return urlsplit(url.strip()).scheme.lower()


class HttpxFetcher(FetcherInterface):
    """``FetcherInterface`` for http(s), ``file://`` and plain local paths.

    ``on_bytes`` (if set) is called with the size of every chunk as it arrives (resumed bytes
    included); ``client.trust`` sets it around a target download to report progress. ``sleep`` and
    ``rng`` are injectable so that tests need not wait. ``partial_dir`` enables resumable target
    downloads (see the module docstring). Call ``close()`` (or use ``with``) to release the
    connection pool.
    """

    def __init__(
        self,
        settings: TransportSettings | None = None,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        partial_dir: Path | None = None,
        access: RepoAccess | None = None,
    ) -> None:
        self.settings = settings or TransportSettings()
        self.partial_dir = partial_dir
        self.access = access
        self.stats = TransportStats()
        self.on_bytes: Callable[[int], None] | None = None
        self.last_url: str | None = None
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = client

    def _http(self) -> httpx.Client:
        """The connection pool, made on the first HTTP request (a local repository, or a command
        that downloads nothing, never needs one)."""
        if self._client is None:
            s = self.settings
            access = self.access
            self._client = httpx.Client(
                timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout),
                headers={"User-Agent": s.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
                follow_redirects=True,
                event_hooks={"request": [access.authorize]} if access is not None and access.headers else None,
                **_connection_options(access.tls_context if access is not None and access.has_tls else _tls_context),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> HttpxFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- FetcherInterface -------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Open ``url`` (retrying as configured) and return an iterator over its body.

        Without a partial directory, or for metadata, retries happen only until the body starts:
        a stream broken half way raises (a partial body can never pass the signed length and hash
        anyway). A content-addressed target with a partial directory resumes instead (see
        :meth:`_resuming`).
        """
        self.last_url = url
        path = local_path(url)
        if path is not None:
            return self._read_file(url, path)
        part = self._partial_path(url)
        if part is not None:
            return self._resuming(url, part)
        return self._chunks(url, self._open(url))

    # -- local files ------------------------------------------------------------------------

    def _read_file(self, url: str, path: Path) -> Iterator[bytes]:
        self.stats.requests += 1
        try:
            f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise DownloadHTTPError(f"{url}: no such file", 404) from exc
        except PermissionError as exc:
            raise DownloadHTTPError(f"{url}: permission denied", 403) from exc
        except OSError as exc:
            raise DownloadError(f"{url}: cannot read: {exc.strerror or exc}") from exc
        if not path.is_file():  # a directory opens fine on some systems; it is not a file
            f.close()
            raise DownloadHTTPError(f"{url}: not a file", 404)
        return self._file_chunks(url, f)

    def _file_chunks(self, url: str, f: BinaryIO) -> Iterator[bytes]:
        with f:
            while True:
                try:
                    chunk = f.read(self.settings.chunk_size)
                except OSError as exc:
                    raise DownloadError(f"{url}: read failed: {exc.strerror or exc}") from exc
                if not chunk:
                    return
                self._count(chunk)
                yield chunk

    # -- HTTP -------------------------------------------------------------------------------

    def _open(self, url: str, offset: int = 0) -> httpx.Response:
        """Send the request until a final answer arrives; return the streaming response.

        ``offset > 0`` asks for ``bytes=offset-``; the answer may then also be a 416 (returned,
        not raised: the caller drops its partial file) or a 200 (the server ignored the range).
        """
        attempts = self.settings.retries + 1
        headers = {"Range": f"bytes={offset}-"} if offset else None
        for attempt in range(attempts):
            last = attempt == attempts - 1
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            try:
                http = self._http()
                response = http.send(http.build_request("GET", url, headers=headers), stream=True)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
                if not last:
                    self._sleep(self.settings.backoff(attempt, self._rng))
                    continue
                tries = f"after {attempts} attempt(s)"
                if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):  # the server accepted but did not answer
                    raise SlowRetrievalError(f"{url}: timed out ({_kind(exc)}) {tries}") from exc
                if isinstance(exc, httpx.TimeoutException):  # connect/pool: unreachable rather than slow
                    raise DownloadError(f"{url}: {_kind(exc)} timed out {tries}") from exc
                raise DownloadError(f"{url}: {_reason(exc)} {tries}") from exc
            except httpx.HTTPError as exc:  # bad URL, unsupported scheme, ...: retrying cannot help
                raise DownloadError(f"{url}: {_reason(exc)}") from exc

            if response.status_code < 400 or (offset and response.status_code == 416):
                return response
            status = response.status_code
            response.close()
            if status not in RETRY_STATUSES or last:
                tries = f" after {attempts} attempt(s)" if status in RETRY_STATUSES else ""
                raise DownloadHTTPError(f"{url}: HTTP {status} {response.reason_phrase}{tries}", status)
            delay = self.settings.backoff(attempt, self._rng)
            hinted = _retry_after(response.headers.get("Retry-After"))
            if hinted is not None:
                delay = max(delay, min(hinted, self.settings.backoff_max))
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _chunks(self, url: str, response: httpx.Response, *, as_received: bool = False) -> Iterator[bytes]:
        """The body in ``chunk_size`` pieces, or (``as_received``) in the pieces the network
        delivers, so that nothing received is held back in a buffer when the transfer breaks."""
        try:
            decoder = _BoundedDecoder(url, response.headers.get("Content-Encoding", ""), self.settings.chunk_size)
            for raw in response.iter_raw(None if as_received else self.settings.chunk_size):
                for chunk in decoder.feed(raw):
                    self._count(chunk)
                    yield chunk
            decoder.finish()
        except httpx.TimeoutException as exc:
            raise SlowRetrievalError(f"{url}: the body stalled ({_kind(exc)})") from exc
        except httpx.HTTPError as exc:
            raise DownloadError(f"{url}: transfer broke off: {_reason(exc)}") from exc
        finally:
            response.close()

    # -- resumable targets ------------------------------------------------------------------

    def _partial_path(self, url: str) -> Path | None:
        """Where the partial body of ``url`` is kept, or None when ``url`` is not resumable:
        only content-addressed target names (``<hex digest>.<name>``) are, and only with a
        ``partial_dir``. The file name is a hash of the URL (a new repository URL starts over)."""
        if self.partial_dir is None:
            return None
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        if not _CONTENT_ADDRESSED.match(name):
            return None
        return self.partial_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def _resuming(self, url: str, part: Path) -> Iterator[bytes]:
        """The body of ``url``, appended to ``part`` as it arrives and continued from there.

        The consumer receives every byte of the file exactly once, in order: first what ``part``
        already holds (only after the server agreed to send the rest: a 206 whose
        ``Content-Range`` starts where ``part`` ends), then the remainder. A server that ignores
        the range (200) or rejects it (416) makes the download start from zero. A body that
        breaks off is continued with another range request, up to ``settings.retries`` times.
        When the whole body was received ``part`` is deleted (ngclient then checks length and
        hash; a bad file is never resumed); when the consumer stops early (a file longer than the
        signed length) it is deleted too; after a network failure or a kill it stays.
        """
        try:
            self._prepare_partials()
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DownloadError(f"{url}: cannot keep a partial download in {self.partial_dir}: {exc.strerror}") from exc
        keep = True
        try:
            yield from self._resume_into(url, fd)
            keep = False
        except GeneratorExit:
            keep = False  # the consumer refused the body (longer than signed): never resume it
            raise
        except DownloadHTTPError as exc:
            keep = exc.status_code not in (404, 410)  # gone from the repository
            raise
        finally:
            os.close(fd)
            if not keep:
                with contextlib.suppress(OSError):
                    os.unlink(part)

    def _resume_into(self, url: str, fd: int) -> Iterator[bytes]:
        """The body loop of :meth:`_resuming` over the open partial file ``fd``."""
        given = 0  # bytes of the file the consumer has received
        breaks = 0
        keeping = True  # False once the partial file could not be written (disk full): stream only
        while True:
            have = os.fstat(fd).st_size
            response = self._open(url, have)
            try:
                start = self._range_answer(response, have)
                if start < 0:  # 416, or not the range we asked for: start over
                    if have == 0:
                        raise DownloadError(f"{url}: HTTP {response.status_code} to a request without a range")
                    os.ftruncate(fd, 0)
                    continue
                if start == 0 and have:
                    os.ftruncate(fd, 0)  # 200: the server ignored the range; its body replaces ours
                    have = 0
                else:
                    if have:
                        self.stats.resumed += 1
                        self.stats.resumed_bytes += have
                    yield from self._replay(fd, given, have)
                    given = have
                try:
                    for chunk in self._chunks(url, response, as_received=True):
                        keeping = keeping and self._keep(fd, chunk)
                        have += len(chunk)
                        if have > given:  # after a 200 mid-transfer, skip what was already given
                            yield chunk[len(chunk) - (have - given) :]
                            given = have
                    return
                except DownloadError:
                    if breaks >= self.settings.retries:
                        raise
                    self._sleep(self.settings.backoff(breaks, self._rng))
                    breaks += 1
                    self.stats.retries += 1
            finally:
                response.close()

    @staticmethod
    def _keep(fd: int, chunk: bytes) -> bool:
        """Append ``chunk`` to the partial file; on a write error (a full disk) empty the file and
        return False: the download goes on without a partial, taking no space from the install."""
        try:
            os.write(fd, chunk)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            return False

    def _range_answer(self, response: httpx.Response, have: int) -> int:
        """How to read ``response`` to a request from ``have``: the offset its body starts at (a
        206 starting exactly at ``have``; 0 for a 200), or -1 to discard the partial and retry."""
        if response.status_code == 416:
            return -1
        if response.status_code != 206:
            return 0
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        return have if m is not None and int(m["start"]) == have and have > 0 else -1

    def _replay(self, fd: int, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` of the partial file, in chunks (counted for progress, not stats)."""
        offset = start
        while offset < end:
            chunk = os.pread(fd, min(self.settings.chunk_size, end - offset), offset)
            if not chunk:
                raise DownloadError(f"partial download shrank while being read ({offset} of {end} bytes)")
            offset += len(chunk)
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
            yield chunk

    def _prepare_partials(self) -> None:
        """Create the partial directory and drop partial files nobody resumed for a week."""
        assert self.partial_dir is not None
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - PARTIAL_MAX_AGE
        for entry in os.scandir(self.partial_dir):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)

    def _count(self, chunk: bytes) -> None:
        self.stats.bytes += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))


def local_path(url: str) -> Path | None:
    """The local file ``url`` names (``file://`` URL or plain path), or None for http(s).

    A one-letter "scheme" is a Windows drive (``C:\\repo``), not a URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"{url}: remote file URLs are not supported")
        return Path(url2pathname(parts.path))
    if scheme == "" or len(scheme) == 1:
        return Path(url)
    raise DownloadError(f"{url}: unsupported URL scheme {parts.scheme!r} (use http, https, file or a path)")


def _kind(exc: httpx.TimeoutException) -> str:
    return {
        httpx.ConnectTimeout: "connect",
        httpx.ReadTimeout: "read",
        httpx.WriteTimeout: "write",
        httpx.PoolTimeout: "pool",
    }.get(type(exc), "timeout")


def _reason(exc: httpx.HTTPError) -> str:
    """A short reason, digging out the OS message (``Connection refused``) when there is one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text or 'connection failed'})"
    return text or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), if parseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None
