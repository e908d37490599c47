"""Degraded answers (G2, "never 503"): the marker every degraded answer carries, and the behaviours
a route declares for when the state store is down (``Behaviour``).

A degraded answer has the header ``PK-Degraded: <reason>`` and, when its body is JSON, a field
``"degraded": {"reason", "stale_age_s", "detail"}``. Reasons: ``store_unavailable`` (the state
store failed; the answer is last known data, a token signed from the key ring, or a write accepted
into the local journal) and ``car_unreachable`` (the car cannot be reached from the cloud).

Each route's behaviour is part of its declaration (``keyserver.routing.Route.degraded``): it is
required, so no route lacks one; the OpenAPI document describes each route's degraded answers from
it, and the test suite checks each declared behaviour with the store down.
``try_later`` is the last resort (429 ``temporarily_unavailable`` + Retry-After): for writes that
need the store to be decided at all (registering, logging in, enrolling, pairing, ...) and for a
caller this process does not know from before the outage (fail closed: never someone else's data).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

DEGRADED_HEADER = "PK-Degraded"
STALE_AGE_HEADER = "PK-Stale-Age"
STORE_UNAVAILABLE = "store_unavailable"
CAR_UNREACHABLE = "car_unreachable"
RETRY_AFTER_S = 5  # a store outage is not over in a second; the breaker's wait is of this order


class Behaviour(StrEnum):
    """What a route answers while the state store is down."""

    NO_STORE = "no_store"  # never touches the store: unchanged
    READINESS = "readiness"  # /readyz: 200 "ready" + marker: the instance still answers
    STALE = "stale"  # last known data, 200 + marker with its age; unknown caller: 429
    TOKEN_FROM_RING = "token_from_ring"  # noqa: S105 — refresh: a token signed from the key ring
    JOURNALED = "journaled"  # 202 accepted_pending + marker; replayed once the store is back
    NOT_SENT = "not_sent"  # command: 202 not_sent (or maybe_queued) + Bluetooth hint + marker
    CHANNEL = "channel"  # car channel: opens for a known car, else closes "try later"
    TRY_LATER = "try_later"  # 429 temporarily_unavailable + Retry-After + marker


@dataclass
class RequestMark:
    """What one request was answered from: the age of the oldest last-known value it used."""

    stale_age_s: int | None = None

    def note_stale(self, age_s: int) -> None:
        self.stale_age_s = age_s if self.stale_age_s is None else max(self.stale_age_s, age_s)


_mark: ContextVar[RequestMark | None] = ContextVar("degraded_mark", default=None)


def begin_request() -> RequestMark:
    """A fresh mark for the request being handled (the error middleware calls this)."""
    mark = RequestMark()
    _mark.set(mark)
    return mark


def note_stale(age_s: int) -> None:
    """The current request used a last known value ``age_s`` old instead of the store."""
    mark = _mark.get()
    if mark is not None:
        mark.note_stale(age_s)


def marker(reason: str, detail: str, *, stale_age_s: int | None = None) -> dict[str, Any]:
    """The body field of a degraded answer."""
    return {"reason": reason, "stale_age_s": stale_age_s, "detail": detail}


def degraded_json(
    body: dict[str, Any],
    *,
    reason: str,
    detail: str,
    stale_age_s: int | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON answer carrying the degraded marker in its body and headers."""
    payload = {**body, "degraded": marker(reason, detail, stale_age_s=stale_age_s)}
    return web.json_response(
        payload, status=status, headers={**(headers or {}), **_headers(reason, stale_age_s)}
    )


def mark_response(response: web.StreamResponse, *, stale_age_s: int) -> web.StreamResponse:
    """Mark an answer built from last known data (by the middleware, after the handler).

    A JSON body gets the field; any other body (a signed CBOR list) keeps its bytes and carries
    the marker in the headers alone. An answer the handler marked already (a car away) is
    marked stale over it: its data is old, whatever else is true."""
    detail = "the state store is unavailable: this is the last known data"
    if isinstance(response, web.Response) and response.content_type == "application/json":
        assert isinstance(response.body, bytes)  # json_response always sets bytes
        value = json.loads(response.body)
        if isinstance(value, dict):
            earlier = value.get("degraded")
            if isinstance(earlier, dict) and earlier.get("reason") == STORE_UNAVAILABLE:
                detail = str(earlier["detail"])  # the handler's own account, now with an age
            elif isinstance(earlier, dict):
                detail = f"{detail}; {earlier['detail']}"
            value["degraded"] = marker(STORE_UNAVAILABLE, detail, stale_age_s=stale_age_s)
            response.body = json.dumps(value).encode()
    response.headers.update(_headers(STORE_UNAVAILABLE, stale_age_s))
    return response


def try_later(
    detail: str, *, reason: str = STORE_UNAVAILABLE, may_have_succeeded: bool = False
) -> web.Response:
    """The last resort: 429 ``temporarily_unavailable`` with Retry-After and the marker; code
    ``outcome_unknown`` instead when a write may have been applied (check before repeating)."""
    code = "outcome_unknown" if may_have_succeeded else "temporarily_unavailable"
    return web.json_response(
        {
            "error": {"code": code, "message": detail},
            "degraded": marker(reason, detail),
        },
        status=429,
        headers={"Retry-After": str(RETRY_AFTER_S), DEGRADED_HEADER: reason},
    )


def _headers(reason: str, stale_age_s: int | None) -> dict[str, str]:
    headers = {DEGRADED_HEADER: reason}
    if stale_age_s is not None:
        headers[STALE_AGE_HEADER] = str(stale_age_s)
    return headers
