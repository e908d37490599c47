"""One declaration per route: ``Route`` holds everything the keyserver knows about a route, and
each route module lists its routes in one table, ``ROUTES``.

From those tables, and from nothing else, come the router (``add_routes``), admission control's
criticality of each route (``criticalities``), the rate limit each handler counts against
(``keyserver.ratelimit``), what each route answers with the state store down
(``degraded``), and the OpenAPI document (``keyserver.openapi.document``). A route cannot be
declared without a criticality or a degraded behaviour (both are required), nor a write
without a rate limit or the reason it has none; and a route added to the router by hand, past
its table, stops start-up (keyserver.admission, keyserver.ratelimit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from keyserver.admission import Criticality
from keyserver.bodies import Body
from keyserver.degraded import Behaviour
from keyserver.errors import KeyserverError
from keyserver.http import Handler
from keyserver.ratelimit import WRITE_METHODS, RateLimit

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_OPERATION_ID = re.compile(r"[a-z][A-Za-z0-9]{1,63}")  # camelCase
Security = Sequence[Mapping[str, Sequence[str]]]


class RouteDeclarationError(KeyserverError, ValueError):
    """A route table that cannot be served as declared: found at import or start-up."""


@dataclass(frozen=True, slots=True)
class Route:
    """One route: how it is served, admitted, limited, degraded and documented.

    ``rate_limit`` is the route's limit, or for a write without one the reason why (a string,
    shown in the document); a read needs neither. ``body`` is the request body's model, parsed
    by the handler where it reads the body; ``responses`` are OpenAPI response objects by
    status, to which the document adds what the declaration implies (degraded answers, 429s).
    """

    method: str
    path: str
    handler: Handler
    operation_id: str
    tag: str
    summary: str
    criticality: Criticality
    degraded: Behaviour
    responses: Mapping[str, Mapping[str, Any]]
    rate_limit: RateLimit | str | None = None
    body: type[Body] | None = None
    body_required: bool = True
    security: Security = ()
    parameters: Sequence[Mapping[str, Any]] = ()
    description: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.method} {self.path}"
        if self.method not in METHODS:
            raise RouteDeclarationError(f"{where}: not an HTTP method we serve")
        if not isinstance(self.criticality, Criticality):
            raise RouteDeclarationError(f"{where}: no criticality")
        if not isinstance(self.degraded, Behaviour):
            raise RouteDeclarationError(f"{where}: no degraded behaviour")
        if self.method in WRITE_METHODS and self.rate_limit is None:
            raise RouteDeclarationError(f"{where}: a write needs a rate limit or why it has none")
        if not _OPERATION_ID.fullmatch(self.operation_id):
            raise RouteDeclarationError(f"{where}: operationId {self.operation_id!r} not camelCase")
        if not self.tag or not self.summary or not self.responses:
            raise RouteDeclarationError(f"{where}: a tag, a summary and responses are needed")

    @property
    def key(self) -> tuple[str, str]:
        """(method, path template): how admission and the tests name a route."""
        return self.method, self.path


def checked(routes: Iterable[Route]) -> tuple[Route, ...]:
    """The routes, once each: no (method, path) and no operationId declared twice."""
    table = tuple(routes)
    for what, names in (
        ("route", [f"{r.method} {r.path}" for r in table]),
        ("operationId", [r.operation_id for r in table]),
    ):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise RouteDeclarationError(f"{what} declared twice: {', '.join(twice)}")
    return table


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Serve the routes, in their order (a GET answers HEAD too)."""
    for route in checked(routes):
        if route.method == "GET":
            app.router.add_get(route.path, route.handler, name=route.operation_id)
        else:
            app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)


def criticalities(routes: Iterable[Route]) -> dict[tuple[str, str], Criticality]:
    """Admission control's table: each route's criticality."""
    return {route.key: route.criticality for route in routes}


def rate_limits(routes: Iterable[Route]) -> dict[Handler, RateLimit | str]:
    """Each handler's declared limit, or the reason it has none."""
    return {r.handler: r.rate_limit for r in routes if r.rate_limit is not None}


def degraded(routes: Iterable[Route]) -> dict[tuple[str, str], Behaviour]:
    """What each route answers while the state store is down."""
    return {route.key: route.degraded for route in routes}
