"""The app shell: health, readiness, metrics, the trust update, and the JSON error shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from keycore import TrustStore
from keyserver.app import KEYRING, create_app
from keyserver.config import build
from keyserver.keyring import KeyRingStore
from keyserver.openapi import documented_routes, served_routes

Client = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


async def test_health_ready_metrics_and_trust_update(
    tmp_path: Path, aiohttp_client: Client
) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))
    client = await aiohttp_client(app)

    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert len(response.headers["X-Request-Id"]) >= 8

    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"status": "ready", "store": "ok"})

    response = await client.get("/v1/trust-update")
    assert response.status == 200
    assert response.content_type == "application/cbor"
    state = KeyRingStore(tmp_path / "keys").load()  # made on first start
    assert state.ring.active.kid == app[KEYRING].ring.active.kid
    trust = TrustStore(state.root_key).apply(await response.read())
    assert trust.sequence == int(response.headers["PK-Trust-Sequence"]) == 1

    text = await (await client.get("/metrics")).text()
    assert (
        'keyserver_requests_total{method="GET",outcome="ok",route="/healthz",status="200"} 1.0'
        in text
    )
    # the readiness probe's ping went through the measured store
    assert 'keyserver_store_seconds_count{operation="ping"} 1.0' in text
    assert 'keyserver_store_errors_total{operation="ping"} 0.0' in text


async def test_errors_are_json_with_a_code(tmp_path: Path, aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(build({"data_dir": str(tmp_path)})))
    response = await client.get("/no/such/route", headers={"X-Request-Id": "abcdef123456"})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    assert response.headers["X-Request-Id"] == "abcdef123456"  # a sane client id is kept
    response = await client.post("/healthz")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    response = await client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9"})
    assert response.headers["X-Request-Id"] != "bad id\u00e9"


async def test_every_route_is_documented_and_nothing_else(
    tmp_path: Path, aiohttp_client: Client
) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))
    client = await aiohttp_client(app)
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert served_routes(app) == documented_routes(doc)
