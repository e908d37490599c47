"""Admission control (Google SRE "Handling Overload"): each route's criticality, the request's
deadline, and load shedding by the number of requests in flight — sheddable work goes first.

Each route declares its criticality (``keyserver.routing.Route.criticality``; HEAD follows GET);
``setup`` gets them from the route tables, and a served route without one stops start-up:

    CRITICAL_PLUS  never let anything else crowd these out: the probes (a refused probe pulls
                   the instance and moves its load onto the others), the car's channel
                   (revocations and commands), and every revocation or suspension (G4)
    CRITICAL       a person or a car is waiting on it to get in: token refresh (G1's offline
                   days), remote commands and following them, what phones carry to cars
                   (revocation lists, the trust update), logging in, keys handed over now,
                   someone at the car pairing or transferring it; and /metrics (we need to see
                   an overload to handle it)
    SHEDDABLE      can wait a few seconds: everything else — listings (keys, devices), account
                   and vehicle views, registration, enrolment, invitations, logout, provisioning,
                   the OpenAPI document; and requests that match no route (404/405)

Limits, on requests inside handlers now (a WebSocket stops counting once upgraded): SHEDDABLE is
refused from ``shed_sheddable_at``, CRITICAL from ``max_in_flight``, CRITICAL_PLUS from
``max_in_flight`` plus an eighth of it. A refusal is immediate — nothing waits in a queue — and is a
429 ``overloaded`` with a jittered ``Retry-After`` of a few seconds.

Every request runs under a deadline: ``PK-Deadline-Ms`` (the caller's remaining time, strictly
parsed, at most ``request_deadline_s``) or else ``request_deadline_s``. It is in
``current_deadline`` for the layers below; when it passes the handler is cancelled and the answer
is 429 ``deadline_exceeded`` — never a 5xx. For a write (not GET/HEAD) that answer means "may have
acted", as a 504 would: the phone client does not fall back to Bluetooth on it (G3).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from keycore.channel import RECONNECT_PACED
from keyserver.config import Config
from keyserver.errors import KeyserverError
from keyserver.http import ApiError, Handler, error_response
from keyserver.pacing import PACED_MESSAGE, PACING, Decision, paced_headers
from resilience.overload import DEADLINE_HEADER, Deadline

#: The deadline of the request being served; None outside a request and on an open WebSocket.
current_deadline: ContextVar[Deadline | None] = ContextVar("current_deadline", default=None)
CHANNEL_PATH = "/v1/vehicles/{vin}/channel"  # over its limit, paced rather than "overloaded"
RETRY_AFTER_SPREAD_S = 3  # Retry-After is 1…this, at random, so refused clients come back apart
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Criticality(IntEnum):
    SHEDDABLE = 0
    CRITICAL = 1
    CRITICAL_PLUS = 2


Criticalities = Mapping[tuple[str, str], Criticality]  # (method, path template) -> criticality


class UnclassifiedRoute(KeyserverError, ValueError):
    """The app serves a route that has no criticality: a start-up error, by design."""


def criticality_of(table: Criticalities, method: str, route: str) -> Criticality | None:
    return table.get(("GET" if method == "HEAD" else method, route))


def check_routes(routes: Iterable[web.AbstractRoute], table: Criticalities) -> None:
    """Raise UnclassifiedRoute naming every served route that ``table`` does not list."""
    missing = sorted(
        f"{route.method} {route.resource.canonical}"
        for route in routes
        if route.resource is not None
        and criticality_of(table, route.method, route.resource.canonical) is None
    )
    if missing:
        raise UnclassifiedRoute(f"routes without a criticality: {', '.join(missing)}")


def classify(request: web.Request, table: Criticalities) -> Criticality:
    resource = request.match_info.route.resource
    if resource is None:  # 404/405: cheap, but nobody waits for them
        return Criticality.SHEDDABLE
    # a route added after start-up (tests do) is treated as the least critical
    return criticality_of(table, request.method, resource.canonical) or Criticality.SHEDDABLE


@dataclass(frozen=True)
class AdmissionMetrics:
    admitted: Counter
    refused: Counter
    in_flight: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AdmissionMetrics:
        return cls(
            admitted=Counter(
                "keyserver_admitted_requests",
                "Requests let into a handler, by criticality",
                ["criticality"],
                registry=registry,
            ),
            refused=Counter(
                "keyserver_refused_requests",
                "Requests answered 429 by admission control, by criticality and reason",
                ["criticality", "reason"],
                registry=registry,
            ),
            in_flight=Gauge(
                "keyserver_in_flight_requests",
                "Requests inside handlers now (open WebSockets not counted)",
                registry=registry,
            ),
        )


class _Ticket:
    """One admitted request's slot and deadline timer."""

    def __init__(self, control: AdmissionControl) -> None:
        self.control = control
        self.timeout: asyncio.Timeout | None = None
        self.started = False  # the handler began its own response (a WebSocket upgrade)
        self.holding = True

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.control.in_flight -= 1
            self.control.metrics.in_flight.dec()


_ticket: ContextVar[_Ticket | None] = ContextVar("admission_ticket", default=None)


class AdmissionControl:
    """The in-flight count and the limits of one app; ``middleware`` does the admitting."""

    def __init__(
        self,
        config: Config,
        metrics: AdmissionMetrics,
        criticalities: Criticalities,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.criticalities = criticalities
        self.limits = {
            Criticality.SHEDDABLE: config.shed_sheddable_at,
            Criticality.CRITICAL: config.max_in_flight,
            Criticality.CRITICAL_PLUS: config.max_in_flight + max(1, config.max_in_flight // 8),
        }
        self.default_deadline_s = config.request_deadline_s
        self.metrics = metrics
        self.in_flight = 0
        self._rng = rng

    def retry_after(self) -> str:
        return str(1 + int(self._rng() * RETRY_AFTER_SPREAD_S))

    def deadline(self, request: web.Request) -> Deadline:
        values = request.headers.getall(DEADLINE_HEADER, [])
        cap_ms = int(self.default_deadline_s * 1000)
        if not values:
            return Deadline.after(self.default_deadline_s)
        try:
            if len(values) > 1:
                raise ValueError(f"one {DEADLINE_HEADER} header at most")
            return Deadline.from_header(values[0], time.monotonic(), max_ms=cap_ms)
        except ValueError as error:
            raise ApiError(400, "invalid_deadline", str(error)) from None

    def pace(self, criticality: Criticality, decision: Decision) -> web.Response:
        """A channel upgrade over the limit: ``reconnect_paced`` with its place on the pacer's
        overflow tail, which the car honours as a slot (keyserver.pacing)."""
        self.metrics.refused.labels(criticality.name.lower(), RECONNECT_PACED).inc()
        headers = paced_headers(decision.retry_after_s or 1)
        return error_response(429, RECONNECT_PACED, PACED_MESSAGE, headers)

    def refuse(self, criticality: Criticality, reason: str, message: str) -> web.Response:
        self.metrics.refused.labels(criticality.name.lower(), reason).inc()
        return error_response(429, reason, message, {"Retry-After": self.retry_after()})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        criticality = classify(request, self.criticalities)
        deadline = self.deadline(request)  # a bad header is a 400 before anything else
        if deadline.expired():
            return self.refuse(criticality, "deadline_exceeded", "the request's deadline passed")
        if self.in_flight >= self.limits[criticality]:
            pacing = request.app.get(PACING)
            if pacing is not None and _is_channel(request):  # a reconnect storm: spread it
                return self.pace(criticality, pacing.overflow())
            return self.refuse(criticality, "overloaded", "the server is overloaded; retry later")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        self.metrics.admitted.labels(criticality.name.lower()).inc()
        ticket = _Ticket(self)
        timeout = ticket.timeout = deadline.timeout()
        ticket_token, deadline_token = _ticket.set(ticket), current_deadline.set(deadline)
        try:
            async with timeout:
                return await handler(request)
        except TimeoutError:
            if not timeout.expired() or ticket.started:
                raise  # not ours, or too late to answer: the connection carries the news
            doubt = "" if request.method in SAFE_METHODS else "; it may have acted: check"
            return self.refuse(
                criticality, "deadline_exceeded", f"the request's deadline passed{doubt}"
            )
        finally:
            ticket.release()
            current_deadline.reset(deadline_token)
            _ticket.reset(ticket_token)


def _is_channel(request: web.Request) -> bool:
    route = request.match_info.route
    return (
        request.method == "GET"
        and route.resource is not None
        and route.resource.canonical == CHANNEL_PATH
    )


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """A handler that starts its own response (a WebSocket upgrade) is past admission: its
    deadline no longer applies and an open WebSocket holds no in-flight slot."""
    ticket = _ticket.get()
    if ticket is None or ticket.started:
        return  # a response prepared after the middleware returned: nothing to do
    ticket.started = True
    if ticket.timeout is not None:
        ticket.timeout.reschedule(None)
    current_deadline.set(None)
    if isinstance(response, web.WebSocketResponse):
        ticket.release()


def setup(
    app: web.Application, config: Config, registry: CollectorRegistry, criticalities: Criticalities
) -> AdmissionControl:
    """Check that every served route has a criticality, then admit through a middleware placed
    inside those already listed (so the error middleware wraps it)."""
    check_routes(app.router.routes(), criticalities)
    control = AdmissionControl(config, AdmissionMetrics.create(registry), criticalities)
    app.middlewares.append(control.middleware)
    app.on_response_prepare.append(_on_response_prepare)
    return control


def document(doc: dict[str, Any]) -> None:
    """Every operation may be refused 429 (overloaded, deadline) and 400 (a bad deadline)."""
    refusal = {
        "description": "overloaded, or the request's deadline (PK-Deadline-Ms) passed",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    bad = {
        "description": "bad request (for one: an invalid PK-Deadline-Ms header)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("429", refusal)
                operation["responses"].setdefault("400", bad)
