"""The agent's HTTP side: the REST API, the dashboard and the OpenAPI document (Starlette + uvicorn).

Why Starlette and uvicorn, and why an optional extra: see ``client.agent``. Routes are thin:
each parses its input, calls one ``AgentService`` method and returns JSON; errors have one shape,
``{"error": {"code": "...", "message": "..."}}``, with the status codes listed in ``openapi``.

Security, in the order ``Guard`` applies it to every request:

1. **Host** must be ``127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT`` (or the address
   given with ``--host``): a DNS-rebinding page that points its own name at 127.0.0.1 sends its
   own name as Host and is refused (403 ``forbidden_host``).
2. **Origin**, when a browser sends one, must be this agent's own origin; a foreign or ``null``
   origin, or ``Sec-Fetch-Site: cross-site``, is refused (403 ``forbidden_origin``). No CORS
   headers are ever sent, so browsers also refuse to let other pages read any answer.
3. **Bearer token** (``DIR/agent.token``, see ``client.agent.token``) on every request that is not
   a GET/HEAD: 401 ``unauthorized`` without it. The dashboard does not embed the token: whoever
   opens it pastes the token once (``pinnacle-update token`` prints it) and the page keeps it in
   ``sessionStorage`` for that tab. Serving it inside the page would hand it to every local user
   and process that can reach 127.0.0.1, which the token exists to tell apart. Read-only GETs
   (status, history, analytics, health) need no token so monitoring can scrape them.

Pages cannot be framed (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``), which keeps
a foreign page from tricking a click on the install button.

Limits (``Limits``), so that slow or greedy local clients cannot hold the agent: a request line and
headers must arrive within ``header_timeout`` of the connection opening or of the previous response
(uvicorn itself only times out a connection idle *between* requests: a client trickling a header
byte at a time, or a body nobody reads after an early answer, was held forever), at most
``max_header_bytes`` of them; a body must arrive within ``body_timeout`` and is counted while it
streams, refused with 413 as soon as it passes ``MAX_BODY`` (a Content-Length over it at once); at
most ``max_connections`` connections are open: one more evicts the connection that has waited
longest for its request head, or is refused with 503 when every connection is serving a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pinnacle_updates.client.agent import token as token_mod
from pinnacle_updates.client.agent.openapi import BACKUP_ID, document
from pinnacle_updates.client.agent.service import AgentError, AgentService, configure_logging
from pinnacle_updates.client.errors import UpdateError
from pinnacle_updates.formats import boundedjson

log = logging.getLogger("pinnacle.agent.http")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_BODY = 64 * 1024
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class Limits:
    """What one client may take of the agent's HTTP server (see the module doc)."""

    header_timeout: float = 10.0  # seconds for a request head, from connect or the previous response
    body_timeout: float = 10.0  # seconds for a whole request body (at most MAX_BODY bytes)
    keep_alive: int = 5  # seconds an idle connection stays open between requests
    max_connections: int = 64
    max_header_bytes: int = 16 * 1024


LIMITS = Limits()
# Answers after which the request's unread rest must not be read: the connection closes.
_CLOSING = {408, 413}


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
          field: str | None = None) -> JSONResponse:
    """The one error shape of the API (``field``: the request field a refusal is about, when known)."""
    body = {"code": code, "message": message, **({"field": field} if field else {})}
    return JSONResponse({"error": body}, status, headers={**_COMMON_HEADERS, **(headers or {})})


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status, headers=_COMMON_HEADERS)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """``Host`` header values this agent answers to."""
    names = set(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return frozenset(f"{n}:{port}".lower() for n in names)


class Guard:
    """ASGI middleware: Host, Origin and token checks (see the module doc) before any route."""

    def __init__(self, app: ASGIApp, *, token: Callable[[], str], hosts: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts
        self.origins = frozenset(f"http://{h}" for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            return error(403, "forbidden_host", "requests must address this agent as 127.0.0.1 or localhost")
        origin = headers.get("origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            return error(403, "forbidden_origin", "cross-origin requests are refused")
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return error(403, "forbidden_origin", "cross-site requests are refused")
        if scope["method"] not in _SAFE_METHODS and not token_mod.matches(self.token(), headers.get("authorization")):
            return error(
                401,
                "unauthorized",
                "a bearer token is required (print it with `pinnacle-update token`)",
                {"WWW-Authenticate": 'Bearer realm="pinnacle-update"'},
            )
        return None


# ----- request parsing ----------------------------------------------------------------------------
async def read_body(request: Request, limit: int = MAX_BODY, timeout: float = LIMITS.body_timeout) -> bytes:
    """The request body, counted while it arrives: 413 as soon as it passes ``limit`` bytes (a declared
    Content-Length over it before reading any), 408 when it takes longer than ``timeout``."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise AgentError(413, "too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise AgentError(413, "too_large", f"request body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise AgentError(408, "timeout", f"the request body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object in the request body; an empty body is ``{}``."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:  # bounded: a body nested 30,000 deep must be a 422, not a RecursionError's 500
        data = boundedjson.loads(raw, "the body")
    except boundedjson.FormatError as exc:
        raise AgentError(422, "invalid_request", f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AgentError(422, "invalid_request", "the body must be a JSON object")
    return data


def _fields(body: dict[str, Any], spec: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(spec))
    if unknown:
        known = f"known: {', '.join(spec)}" if spec else "this call takes none"
        raise AgentError(422, "invalid_request", f"unknown field {unknown[0]!r} ({known})")
    for name, kinds in spec.items():
        if name in body and not isinstance(body[name], kinds):
            raise AgentError(422, "invalid_request", f"field {name!r} has the wrong type")
    return body


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise AgentError(422, "invalid_request", f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise AgentError(422, "invalid_request", f"query parameter {name!r} must be in {low}..{high}")
    return value


def _text_param(request: Request, name: str, limit: int = 200) -> str | None:
    """An optional short text query parameter (empty: not given)."""
    text = request.query_params.get(name) or None
    if text is not None and len(text) > limit:
        raise AgentError(422, "invalid_request", f"query parameter {name!r} is longer than {limit} characters")
    return text


def _backup_id(request: Request) -> str:
    """The ``{id}`` path parameter, checked against the documented pattern: 422 for anything that is
    not a backup id (a traversal, an empty or overlong name) before it reaches the service."""
    text: str = request.path_params["id"]
    if not BACKUP_ID.fullmatch(text):
        raise AgentError(422, "invalid_request", f"{text[:80]!r} is not a backup id (e.g. 20261204T130501123Z-1a2b)")
    return text


# ----- the application ----------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]


def create_app(service: AgentService, *, token: Callable[[], str], hosts: frozenset[str]) -> ASGIApp:
    """The ASGI application: routes wrapped in ``Guard``; ``token`` returns the current token."""
    openapi = document()

    def route(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except AgentError as exc:
                return error(exc.status, exc.code, exc.message,
                             {"Connection": "close"} if exc.status in _CLOSING else None, exc.field)
            return result if isinstance(result, Response) else ok(result)

        return endpoint

    async def dashboard(_: Request) -> Response:
        return Response(_asset("dashboard.html"), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise AgentError(404, "not_found", f"no such file: {name}")
        return Response(_asset(name), media_type=_STATIC[name], headers=_PAGE_HEADERS)

    async def openapi_json(_: Request) -> Any:
        return openapi

    def view(read: Callable[[], Any]) -> Callable[[Request], Awaitable[Any]]:
        """A GET handler for a read-only service method (run off the event loop: it reads files)."""

        async def handler(_: Request) -> Any:
            return await run_in_threadpool(read)

        return handler

    async def check(request: Request) -> Any:
        body = _fields(await _body(request), {"current_version": (str, type(None))})
        return await run_in_threadpool(service.check, body.get("current_version"))

    async def install(request: Request) -> Any:
        body = _fields(await _body(request), {"confirm_major": bool, "force": bool})
        job = await run_in_threadpool(
            lambda: service.start_install(
                request.path_params["version"],
                confirm_major=body.get("confirm_major", False),
                force=body.get("force", False),
            )
        )
        return ok({"job": job}, 202)

    async def rollback(request: Request) -> Any:
        body = _fields(await _body(request), {"force": bool, "keep_data": bool, "mark_bad": bool})
        return await run_in_threadpool(
            lambda: service.rollback(force=body.get("force", False), keep_data=body.get("keep_data", False),
                                     mark_bad=body.get("mark_bad", False))
        )

    async def backup(request: Request) -> Any:
        return await run_in_threadpool(service.data_backup, _backup_id(request))

    def backup_action(action: Callable[[str], Any]) -> Callable[[Request], Awaitable[Any]]:
        """A POST on one backup: no body fields (an empty object or none)."""

        async def handler(request: Request) -> Any:
            backup_id = _backup_id(request)
            _fields(await _body(request), {})
            return await run_in_threadpool(action, backup_id)

        return handler

    async def prune(request: Request) -> Any:
        _fields(await _body(request), {})
        return await run_in_threadpool(service.prune_data_backups)

    async def history(request: Request) -> Any:
        limit = _int_param(request, "limit", 100, 1, 10_000)
        op, outcome, version = (_text_param(request, name) for name in ("op", "outcome", "version"))
        return await run_in_threadpool(service.history, limit, op, outcome, version)

    async def switch_channel(request: Request) -> Any:
        body = _fields(await _body(request), {"channel": str, "allow_downgrade": bool})
        if "channel" not in body:
            raise AgentError(422, "invalid_request", "field 'channel' is required", "channel")
        return await run_in_threadpool(
            lambda: service.switch_channel(body["channel"], allow_downgrade=body.get("allow_downgrade", False))
        )

    async def config(request: Request) -> Any:
        return await run_in_threadpool(service.update_config, await _body(request))

    routes = [
        Route("/", route(dashboard), methods=["GET"]),
        Route("/static/{name}", route(static), methods=["GET"]),
        Route("/openapi.json", route(openapi_json), methods=["GET"]),
        Route("/api/updates/status", route(view(service.status)), methods=["GET"]),
        Route("/api/updates/check", route(check), methods=["POST"]),
        Route("/api/updates/install/{version}", route(install), methods=["POST"]),
        Route("/api/updates/rollback", route(rollback), methods=["POST"]),
        Route("/api/updates/history", route(history), methods=["GET"]),
        Route("/api/updates/backups", route(view(service.backups)), methods=["GET"]),
        Route("/api/updates/config", route(config), methods=["POST"]),
        Route("/api/updates/config", route(view(service.settings_form)), methods=["GET"]),
        Route("/api/updates/channel", route(switch_channel), methods=["POST"]),
        Route("/api/backups", route(view(service.data_backups)), methods=["GET"]),
        Route("/api/backups/prune", route(prune), methods=["POST"]),
        Route("/api/backups/{id}", route(backup), methods=["GET"]),
        Route("/api/backups/{id}/verify", route(backup_action(service.verify_data_backup)), methods=["POST"]),
        Route("/api/backups/{id}/restore", route(backup_action(service.restore_data_backup)), methods=["POST"]),
        Route("/api/updates/channels", route(view(service.channels)), methods=["GET"]),
        Route("/api/updates/analytics", route(view(service.analytics)), methods=["GET"]),
        Route("/api/health", route(view(service.health)), methods=["GET"]),
    ]

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("internal error in %s %s", request.method, request.url.path)
        return error(500, "internal", f"internal error: {type(exc).__name__}")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
    return Guard(app, token=token, hosts=hosts)


def _asset(name: str) -> bytes:
    return resources.files("pinnacle_updates.client.agent").joinpath("static", name).read_bytes()


# ----- the process -----------------------------------------------------------------------------------
def serve(install_dir: Path, host: str = "127.0.0.1", port: int = 8004, *, debug: bool = False) -> None:
    """``pinnacle-update serve``: token, logging, the update loop and the HTTP server, until SIGINT/SIGTERM."""
    import uvicorn

    install_dir = Path(install_dir).absolute()
    secret = token_mod.TokenFile(install_dir)
    log_path = configure_logging(install_dir, debug=debug, secret=secret.current)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    service = AgentService(install_dir)
    app = create_app(service, token=secret.current, hosts=allowed_hosts(host, port))
    shown = f"[{host}]" if ":" in host else host
    log.info("agent starting on http://%s:%d/ (log %s)", shown, port, log_path)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}, not only on this machine's loopback", file=sys.stderr, flush=True)
    service.start()
    config = uvicorn.Config(
        app, log_config=None, access_log=debug, lifespan="off", server_header=False, http=guarded_protocol(LIMITS),
        timeout_keep_alive=LIMITS.keep_alive, h11_max_incomplete_event_size=LIMITS.max_header_bytes,
    )  # fmt: skip
    server = uvicorn.Server(config)
    print(f"serving http://{shown}:{port}/", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        service.stop()
        log.info("agent stopped")


def guarded_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a request-head deadline and a connection limit (see the module
    doc); imported here, where uvicorn is needed anyway, so the routes import without it."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_since = 0.0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm_head_timer()
            # Connections already dropped stay in the set until their close completes: not counted.
            open_ = [c for c in self.connections if not c.transport.is_closing()]
            if len(open_) > limits.max_connections:
                waiting = [c for c in open_
                           if isinstance(c, GuardedH11Protocol) and c is not self and c._waiting_for_head()]
                if waiting:
                    min(waiting, key=lambda c: c._waiting_since)._drop(408, "Request Timeout")
                else:
                    self._drop(503, "Service Unavailable")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting_for_head():
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            """No request is being served: the connection is idle, or sending a head (or the unread
            rest of a body after an early answer), which must end within the deadline."""
            return self.cycle is None or self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._waiting_since = self.loop.time()
            self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting_for_head():
                self._drop(408, "Request Timeout")

        def _drop(self, status: int, reason: str) -> None:
            """Answer ``status`` outside h11's state machine (no request may have been read) and close."""
            self._cancel_head_timer()
            if self.transport.is_closing():
                return
            body = json.dumps({"error": {"code": "timeout" if status == 408 else "busy", "message": reason}})
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}".encode()
            )
            self.transport.close()

    return GuardedH11Protocol


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UpdateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
