"""The agent's Starlette routes (``client.agent.app``) and its hand-written OpenAPI document
(``client.agent.openapi``) list exactly the same operations, method and path: a route added to one
side only fails here."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

pytest.importorskip("starlette")
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinnacle_updates.client.agent.app import create_app
from pinnacle_updates.client.agent.openapi import document
from pinnacle_updates.client.agent.service import AgentService

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})


def starlette_app() -> Starlette:
    """The application ``pinnacle-update serve`` runs, over a stand-in service (routes only bind its methods)."""
    service = mock.create_autospec(AgentService, instance=True)
    guarded: Any = create_app(service, token=lambda: "token", hosts=frozenset({"127.0.0.1:8004"}))
    app = guarded.app  # inside the Guard middleware
    assert isinstance(app, Starlette)
    return app


def served(app: Starlette) -> set[tuple[str, str]]:
    operations = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: only plain routes are compared here"
        for method in route.methods or ():
            if method != "HEAD":  # Starlette answers HEAD for every GET route by itself
                operations.add((method, route.path))
    return operations


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


def test_routes_and_the_openapi_document_list_the_same_operations() -> None:
    routes, spec = served(starlette_app()), documented(document())
    assert routes - spec == set(), "served but not in openapi.py"
    assert spec - routes == set(), "in openapi.py but not served"
    assert {("POST", "/api/updates/check"), ("GET", "/api/updates/status")} <= routes  # the comparison is not vacuous


def test_an_operation_on_one_side_only_is_told_apart() -> None:
    async def nothing(_: Request) -> Response:
        return Response()

    app, spec = starlette_app(), document()
    app.router.routes.append(Route("/api/updates/extra", nothing, methods=["POST"]))
    spec["paths"]["/api/updates/other"] = {"get": {"operationId": "other", "responses": {}}}
    assert served(app) - documented(spec) == {("POST", "/api/updates/extra")}
    assert documented(spec) - served(app) == {("GET", "/api/updates/other")}
