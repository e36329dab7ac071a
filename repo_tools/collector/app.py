"""The collector's HTTP service (Starlette + uvicorn, the agent's stack): ingest reports, answer queries.

Routes (document: ``openapi.document``, served at ``/openapi.json``):

* ``POST /v1/reports``: a batch (``formats.report``). Checked in this order, each refusal one line in
  ``{"error": "..."}`` and nothing stored: the ingest key when one is set (401; constant-time
  compare), the client address's request rate (429 + ``Retry-After``), ``Content-Type:
  application/json`` (415), the body size while it streams (413; a declared Content-Length over the
  limit before reading), the body's arrival time (408), the batch itself (400), the install ids'
  report rates (429 + ``Retry-After``); then the batch is stored in one transaction and only then
  answered 200 ``{"accepted": N, "duplicates": M}``; a database failure is 503 (send again: a report
  stored before the failure comes back as a duplicate).
* ``GET /v1/health``: 200 when the database answers, 503 otherwise.
* ``GET /v1/fleet/report?channel=&version=&since=``: the fleet report (``summary``), behind the read
  token (``Authorization: Bearer``; 401). Read-only.
* ``GET /v1/fleet/activity?channel=&version=&since=``: install outcomes per release and hour and the
  latest rollbacks and failures (``page.activity``), behind the read token.
* ``GET /v1/fleet/decisions?channel=&version=&since=``: the rollout timeline, behind the read token:
  ``{"repository": bool, "decisions": [...]}``, the decisions ``watch`` logged in the repository
  given to ``collector serve --repo`` (``watch.decisions`` with holds: read-only, the log stays the
  one source; the collector never writes or signs anything), oldest first; without ``--repo``
  ``repository`` is false and the list empty. An unreadable log is 503.
* ``GET /fleet`` and ``/fleet/...``: the fleet page (``page``), behind the read token or its cookie.
* ``GET /openapi.json``.

Rate limits (``ratelimit``): per client address, requests per second (a reverse proxy in front makes
every client one address: raise or turn off this limit there, and limit at the proxy); per install id,
reports per hour with a burst of two full batches, so a client back from a long time offline can flush
its spool while a flood from one install id is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pinnacle_updates.formats import report as wire
from pinnacle_updates.formats.boundedjson import FormatError
from pinnacle_updates.formats.rollout import format_time

from ..errors import ReleaseError, RepositoryStateError
from . import page
from .credentials import bearer_matches
from .openapi import document
from .ratelimit import Buckets, Rate
from .storage import Storage, StorageError
from .summary import Filters

log = logging.getLogger("pinnacle.collector")

_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_QUERY_PARAMS = frozenset({"channel", "version", "since"})


@dataclass(frozen=True)
class Settings:
    """How the service admits requests (``collector serve``'s options)."""

    read_token: str
    ingest_key: str | None = None
    per_address: Rate = field(default_factory=lambda: Rate(rate=50.0, burst=100.0))
    """Requests per second from one client address."""
    per_install: Rate = field(default_factory=lambda: Rate(rate=1000 / 3600, burst=2.0 * wire.MAX_BATCH))
    """Reports per second from one install id (default 1,000 an hour, two full batches at once)."""
    body_timeout: float = 10.0
    repo_dir: Path | None = None
    """The repository whose decision log the timeline shows (``--repo``; read only)."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Refusal(Exception):
    """An answer other than 200: status, one line, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def answer(status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status, headers={**_HEADERS, **(headers or {})})


TIMELINE_MAX = 500
"""Decisions the timeline answers with at most (the newest)."""
DRAIN_MAX = 64 << 10
"""Bytes beyond a body limit that are still read (and dropped) before the 413 is sent."""


async def _read_limited(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) once it passes ``limit`` bytes while streaming, or (408) when it takes
    longer than ``timeout``; a Content-Length over the limit is refused before reading."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        refusal = Refusal(413, f"the body is {int(length)} bytes, more than the {limit}-byte limit")
        if int(length) <= limit + DRAIN_MAX:
            # a body a little over the limit is read and dropped first: closing the connection with
            # it unread makes the kernel send a reset, and the client would never see the 413
            with contextlib.suppress(TimeoutError, ClientDisconnect):
                async with asyncio.timeout(timeout):
                    async for _piece in request.stream():
                        pass
        raise refusal
    received = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for piece in request.stream():
                received += piece
                if len(received) > limit:
                    raise Refusal(413, f"the body is more than the {limit}-byte limit")
    except TimeoutError:
        raise Refusal(408, f"the body did not arrive within {timeout:g} s") from None
    return bytes(received)


def create_app(storage: Storage, settings: Settings) -> Starlette:
    """The ASGI application over ``storage``."""
    spec = document()
    addresses = Buckets(settings.per_address)
    installs = Buckets(settings.per_install)

    def route(fn: Callable[[Request], Awaitable[dict[str, Any]]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return answer(200, await fn(request))
            except Refusal as exc:
                closing = {"Connection": "close"} if exc.status in (408, 413) else {}
                return answer(exc.status, {"error": exc.message}, {**exc.headers, **closing})
            except StorageError as exc:
                log.warning("database unavailable: %s", exc)
                return answer(503, {"error": f"the reports database is unavailable ({exc})"})

        return endpoint

    async def ingest(request: Request) -> dict[str, Any]:
        if settings.ingest_key is not None and not bearer_matches(settings.ingest_key,
                                                                   request.headers.get("authorization")):
            raise Refusal(401, "an ingest key is required: Authorization: Bearer <key>",
                          {"WWW-Authenticate": 'Bearer realm="pinnacle-collector"'})
        address = request.client.host if request.client else "unknown"
        wait = addresses.take({address: 1}, time.monotonic())
        if wait is not None:
            raise Refusal(429, f"too many requests from {address}: retry in {wait:g} s",
                          {"Retry-After": f"{wait:g}"})
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise Refusal(415, f"the body must be application/json, not {media[:60] or 'untyped'!r}")
        body = await _read_limited(request, wire.MAX_BATCH_BYTES, settings.body_timeout)
        try:
            reports = wire.parse_batch(body, settings.clock())
        except FormatError as exc:
            raise Refusal(400, str(exc)) from None
        per_install = Counter(r.install_id for r in reports)
        wait = installs.take(per_install, time.monotonic())
        if wait is not None:
            raise Refusal(429, f"too many reports from one install id: retry in {wait:g} s",
                          {"Retry-After": f"{wait:g}"})
        accepted, duplicates = await run_in_threadpool(storage.ingest, reports)
        return {"accepted": accepted, "duplicates": duplicates}

    async def health(_: Request) -> dict[str, Any]:
        await run_in_threadpool(storage.ping)
        return {"status": "ok", "schema": wire.REPORT_SCHEMA}

    def reader_filters(request: Request) -> tuple[Filters, datetime]:
        """The query's filters for a reader (bearer read token or the fleet page's cookie)."""
        if not page.is_reader(request, settings.read_token):
            raise Refusal(401, "the read token is required: Authorization: Bearer <token>",
                          {"WWW-Authenticate": 'Bearer realm="pinnacle-collector"'})
        params = request.query_params
        unknown = sorted(set(params) - _QUERY_PARAMS)
        if unknown:
            raise Refusal(400, f"unknown query parameter {unknown[0][:40]!r} (known: channel, version, since)")
        now = settings.clock()
        try:
            filters = Filters.parse(params.get("channel"), params.get("version"), params.get("since"), now)
        except FormatError as exc:
            raise Refusal(400, str(exc)) from None
        return filters, now

    async def fleet_report(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(storage.fleet_report, *reader_filters(request))

    async def fleet_activity(request: Request) -> dict[str, Any]:
        filters, _ = reader_filters(request)
        return page.activity(await run_in_threadpool(storage.activity, filters))

    async def fleet_decisions(request: Request) -> dict[str, Any]:
        filters, _ = reader_filters(request)
        if settings.repo_dir is None:
            return {"repository": False, "decisions": []}
        from ..watch import decisions  # only here: the rest of the collector never loads the publisher

        try:
            found = await run_in_threadpool(decisions, settings.repo_dir, channel=filters.channel,
                                            version=filters.version, limit=TIMELINE_MAX, holds=True)
        except RepositoryStateError as exc:
            raise Refusal(503, str(exc)) from None
        since = format_time(filters.since) if filters.since else ""
        return {"repository": True, "decisions": [d for d in found if str(d.get("at", "")) >= since]}

    async def read_form(request: Request, limit: int) -> bytes | Response:
        try:
            return await _read_limited(request, limit, settings.body_timeout)
        except Refusal as exc:
            return answer(exc.status, {"error": exc.message}, {**exc.headers, "Connection": "close"})

    async def openapi(_: Request) -> dict[str, Any]:
        return spec

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return answer(exc.status_code, {"error": str(exc.detail)}, dict(exc.headers or {}))

    async def crash(request: Request, exc: Exception) -> Response:
        log.error("internal error in %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=exc)
        return answer(500, {"error": f"internal error: {type(exc).__name__}"})

    return Starlette(
        routes=[
            Route("/v1/reports", route(ingest), methods=["POST"]),
            Route("/v1/health", route(health), methods=["GET"]),
            Route("/v1/fleet/report", route(fleet_report), methods=["GET"]),
            Route("/v1/fleet/activity", route(fleet_activity), methods=["GET"]),
            Route("/v1/fleet/decisions", route(fleet_decisions), methods=["GET"]),
            Route("/openapi.json", route(openapi), methods=["GET"]),
            *page.routes(settings.read_token, read_form),
        ],
        exception_handlers={HTTPException: http_error, Exception: crash},
    )


# ----- the process -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8005
    certfile: str | None = None
    keyfile: str | None = None
    max_connections: int = 256
    keep_alive: int = 5


def serve(storage: Storage, settings: Settings, listen: Listen) -> None:
    """``collector serve``: the HTTP service over ``storage`` until SIGINT/SIGTERM (``storage`` is closed
    afterwards). Prints ``serving http(s)://HOST:PORT/`` once listening (port 0 picks a free one)."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise ReleaseError(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror or exc}") from None
    sock.listen(512)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(storage, settings), log_config=None, access_log=False, lifespan="off", server_header=False,
        timeout_keep_alive=listen.keep_alive, limit_concurrency=listen.max_connections,
        h11_max_incomplete_event_size=16 * 1024, ssl_certfile=listen.certfile, ssl_keyfile=listen.keyfile,
    )  # fmt: skip
    try:
        config.load()  # TLS files are read here: a bad one is one error, not a traceback from the server
    except (OSError, ValueError) as exc:
        sock.close()
        raise ReleaseError(f"cannot use the TLS certificate or key: {getattr(exc, 'strerror', None) or exc}") \
            from None
    scheme = "https" if listen.certfile else "http"
    shown = f"[{listen.host}]" if ":" in listen.host else listen.host
    if listen.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s, not only on this machine's loopback", listen.host)
    print(f"serving {scheme}://{shown}:{port}/ (reports database {storage.url})", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        storage.close()
