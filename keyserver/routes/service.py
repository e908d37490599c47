"""The service's own routes: liveness, readiness, metrics, this document, and the trust update."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keyserver import openapi
from keyserver.admission import Criticality
from keyserver.degraded import STORE_UNAVAILABLE, Behaviour, degraded_json
from keyserver.errors import StoreUnavailable
from keyserver.http import CBOR, ApiError
from keyserver.resources import KEYRING, METRICS, OPENAPI, STORE
from keyserver.routing import Route


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 whenever this instance can answer, with the store's state in the body.

    With the store down an instance still gives useful, degraded answers (G2); a shared store's
    outage must not take every instance out of rotation at once and turn those answers into
    the load balancer's 503s. The store's health is for metrics and alerts (breaker state).
    """
    try:
        await request.app[STORE].ping()
    except StoreUnavailable:
        return degraded_json(
            {"status": "ready", "store": "unavailable"},
            reason=STORE_UNAVAILABLE,
            detail="the state store is unavailable: answers are degraded",
        )
    return web.json_response({"status": "ready", "store": "ok"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def trust_update(request: web.Request) -> web.Response:
    """The latest root-signed trust-store update (CBOR, COSE_Sign1): cars and phones apply it."""
    ring = request.app[KEYRING]
    if not ring.trust_update:
        raise ApiError(404, "not_found", "no trust-store update yet")
    return web.Response(
        body=ring.trust_update,
        content_type=CBOR,
        headers={"PK-Trust-Sequence": str(ring.trust_sequence)},
    )


SCHEMAS: dict[str, Any] = {
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "store"],
        "properties": {
            "status": {"enum": ["ready"]},
            "store": {"enum": ["ok", "unavailable"]},
        },
    },
}

_P, _C, _S = Criticality.CRITICAL_PLUS, Criticality.CRITICAL, Criticality.SHEDDABLE
_TAG = "service"

ROUTES = (
    Route(
        "GET", "/healthz", healthz, "getHealth", _TAG, "Liveness",
        # a refused probe pulls the instance and moves its load onto the others
        criticality=_P, degraded=Behaviour.NO_STORE,
        responses={"200": openapi.json_response("alive", "Health")},
    ),
    Route(
        "GET", "/readyz", readyz, "getReadiness", _TAG,
        "Readiness: 200 while the instance answers; says if the store is down",
        criticality=_P, degraded=Behaviour.READINESS,
        responses={"200": openapi.json_response("ready (maybe degraded)", "Readiness")},
    ),
    Route(
        "GET", "/metrics", metrics_endpoint, "getMetrics", _TAG, "Prometheus metrics",
        criticality=_C,  # we need to see an overload to handle it
        degraded=Behaviour.NO_STORE,
        responses={
            "200": {
                "description": "text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    Route(
        "GET", "/openapi.json", openapi_endpoint, "getOpenApi", _TAG, "This document",
        criticality=_S, degraded=Behaviour.NO_STORE,
        responses={
            "200": {
                "description": "OpenAPI 3.1",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    ),
    Route(
        "GET", "/v1/trust-update", trust_update, "getTrustUpdate", "trust",
        "The latest root-signed trust-store update (docs/protocol.md §11)",
        criticality=_C,  # phones carry it to cars
        degraded=Behaviour.NO_STORE,
        responses={
            "200": {
                "description": "the update; its sequence in PK-Trust-Sequence",
                "headers": {"PK-Trust-Sequence": {"schema": {"type": "string"}}},
                "content": {CBOR: {"schema": {"type": "string", "format": "binary"}}},
            },
            "404": openapi.error("no update yet"),
        },
    ),
)  # fmt: skip
