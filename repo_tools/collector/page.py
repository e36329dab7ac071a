"""The fleet page: a read-only view of the fleet report for people, served by the collector.

Routes (``routes``; the JSON it reads is ``GET /v1/fleet/report`` and ``GET /v1/fleet/activity``):

* ``GET /fleet``: the page (``static/fleet.html``) for a reader; otherwise a 401 page with a token
  form. ``GET /fleet?token=T`` exchanges a right token for the session cookie and redirects to
  ``/fleet`` at once (303), so the token leaves the address bar and the history; a wrong one is 401.
* ``POST /fleet/login`` (form field ``token``): the same exchange without the token in a URL.
* ``POST /fleet/logout``: the cookie removed.
* ``GET /fleet/static/{fleet.js,fleet.css}``: the page's code (no data: no token needed).

A reader is a request with the read token as ``Authorization: Bearer`` (CLI, CI) or with the session
cookie: ``HttpOnly`` (scripts never see it), ``SameSite=Strict`` (no other site's page sends it), ``Secure``
over https, ``Path=/``, for the browser session. Its value is an HMAC of the read token, not the
token: a copied cookie opens the page but is no bearer token, and a new read token ends every
session. The token is never logged (uvicorn's access log is off; the redirect drops the query).

Every value on the page comes from reports that clients wrote (cause texts, A/B group names), so the
page's script puts them in the document as text only (``textContent``, SVG ``<title>``), and the
Content-Security-Policy allows scripts from this origin's files only: no inline script, no
``eval``, nothing from another host.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pinnacle_updates.formats.rollout import format_time

from .credentials import bearer_matches
from .summary import Rows

COOKIE = "pinnacle_fleet"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}
_ASSETS = {"fleet.js": "text/javascript; charset=utf-8", "fleet.css": "text/css; charset=utf-8"}
MAX_FORM = 4096


def session_value(token: str) -> str:
    """The cookie's value for the read token ``token``."""
    return hmac.new(token.encode(), b"pinnacle fleet page session", hashlib.sha256).hexdigest()


def is_reader(request: Request, token: str) -> bool:
    """The request carries the read token (bearer) or the page's session cookie."""
    if bearer_matches(token, request.headers.get("authorization")):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def activity(rows: Rows) -> dict[str, Any]:
    """``GET /v1/fleet/activity``'s document from ``Storage.activity`` rows: install outcomes per
    release and hour (``hours``, oldest first) and the latest rollbacks and failures (``problems``,
    newest first, at most 50), each with its cause text as the client sent it."""
    hours: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for channel, platform, version, hour, outcome, count in rows["hours"]:
        entry = hours.setdefault((channel, platform, version, int(hour)), {
            "hour": format_time(datetime.fromtimestamp(int(hour), UTC)), "channel": channel, "platform": platform,
            "version": version, "attempted": 0, "succeeded": 0, "rolled_back": 0, "failed": 0})  # fmt: skip
        entry["attempted"] += int(count)
        key = {"committed": "succeeded", "rolled_back": "rolled_back", "failed": "failed"}.get(outcome)
        if key:
            entry[key] += int(count)
    problems = [{"at": format_time(datetime.fromtimestamp(int(at), UTC)), "channel": channel, "platform": platform,
                 "version": version, "kind": kind, "outcome": outcome, "cause": cause, "cause_text": text}
                for at, channel, platform, version, kind, outcome, cause, text in rows["problems"]]
    return {"hours": [hours[k] for k in sorted(hours, key=lambda k: (k[3], k[:3]))], "problems": problems}


def _asset(name: str) -> bytes:
    return resources.files("pinnacle_updates.repo_tools.collector").joinpath("static", name).read_bytes()


def _login_page(status: int, message: str) -> Response:
    body = _asset("login.html").replace(b"{message}", html.escape(message).encode())
    return Response(body, status, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def _enter(request: Request, token: str, offered: str) -> Response:
    """The answer to a token offered by the form or the query: the cookie and /fleet, or 401."""
    if not hmac.compare_digest(offered.strip().encode(), token.encode()):
        return _login_page(401, "That is not the collector's read token.")
    answer = RedirectResponse("/fleet", 303, headers=PAGE_HEADERS)
    answer.set_cookie(COOKIE, session_value(token), path="/", httponly=True, samesite="strict",
                      secure=request.url.scheme == "https")
    return answer


def routes(token: str, read_body: Callable[[Request, int], Awaitable[bytes | Response]]) -> list[Route]:
    """The page's routes for the read token ``token``; ``read_body(request, limit)`` reads a body
    within the service's size and time limits, or gives the service's refusal to answer with."""

    async def page(request: Request) -> Response:
        if "token" in request.query_params:
            return _enter(request, token, request.query_params["token"])
        if not is_reader(request, token):
            return _login_page(401, "Enter the collector's read token to see the fleet.")
        return Response(_asset("fleet.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def login(request: Request) -> Response:
        body = await read_body(request, MAX_FORM)
        if isinstance(body, Response):
            return body
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:  # more fields than a login form has
            return _login_page(400, "The form holds more than the token.")
        return _enter(request, token, (form.get("token") or [""])[0])

    async def logout(_: Request) -> Response:
        answer = RedirectResponse("/fleet", 303, headers=PAGE_HEADERS)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return Response(b"not found\n", 404, media_type="text/plain", headers=PAGE_HEADERS)
        return Response(_asset(name), media_type=_ASSETS[name], headers=PAGE_HEADERS)

    return [
        Route("/fleet", page, methods=["GET"]),
        Route("/fleet/login", login, methods=["POST"]),
        Route("/fleet/logout", logout, methods=["POST"]),
        Route("/fleet/static/{name}", asset, methods=["GET"]),
    ]
