"""Admission control: every route has a criticality, sheddable work is refused first (429 with
Retry-After), critical work up to the hard limit, deadlines from PK-Deadline-Ms, work cancelled at
its deadline, and WebSockets not counted once upgraded. Load is made with gated handlers: a
request stays in flight until the test opens its gate, so nothing depends on timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from keycore.channel import RECONNECT_PACED, REFUSAL_HEADER
from keyserver import admission, routing
from keyserver.admission import Criticality, UnclassifiedRoute, current_deadline
from keyserver.app import ROUTES, create_app
from keyserver.config import ConfigError, build
from keyserver.http import error_middleware
from keyserver.pacing import PACING, PacedChannel
from resilience.overload import DEADLINE_HEADER
from resilience.waiting import PredicateWaiters

Client = TestClient[web.Request, web.Application]
HANG_GUARD_S = 10  # a bound on waiting for the gate, never a timing assertion


class Gate:
    """Handlers wait here until ``open()``; the test waits until ``n`` are inside."""

    def __init__(self) -> None:
        self.inside = 0
        self.cancelled = 0
        self.opened = asyncio.Event()
        self._waiters = PredicateWaiters()

    async def enter(self) -> None:
        self.inside += 1
        self._waiters.notify()
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.inside -= 1

    async def until_inside(self, n: int) -> None:
        async with asyncio.timeout(HANG_GUARD_S):
            await self._waiters.wait_for(lambda: self.inside >= n)


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def gated(gate: Gate) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        await gate.enter()
        return web.json_response({"ok": True})

    return handler


async def deadline_left(request: web.Request) -> web.Response:
    deadline = current_deadline.get()
    return web.json_response({"left": None if deadline is None else deadline.remaining()})


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def served(
    aiohttp_client: Any, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> tuple[Client, admission.AdmissionControl]:
    """A small app with test routes of each criticality; shed at 2 in flight, hard limit 4."""
    routes = {
        ("GET", "/shed"): Criticality.SHEDDABLE,
        ("POST", "/crit"): Criticality.CRITICAL,
        ("POST", "/crit/slow"): Criticality.CRITICAL,
        ("POST", "/plus"): Criticality.CRITICAL_PLUS,
        ("GET", "/deadline"): Criticality.CRITICAL,
        ("GET", "/ws"): Criticality.CRITICAL_PLUS,
    }
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/shed", ok)
    app.router.add_post("/crit", ok)
    app.router.add_post("/crit/slow", gated(gate))
    app.router.add_post("/plus", ok)
    app.router.add_get("/deadline", deadline_left)
    app.router.add_get("/ws", websocket(gate))
    config = build({"max_in_flight": 4, "shed_sheddable_at": 2, "request_deadline_s": 2.0})
    control = admission.setup(app, config, CollectorRegistry(), routes)
    return await aiohttp_client(app), control


def websocket(gate: Gate) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"deadline": current_deadline.get() is not None})
        await gate.enter()  # held open until the test lets go
        await ws.close()
        return ws

    return handler


def test_every_route_of_the_app_has_a_criticality_and_every_entry_is_served(
    tmp_path: Path,
) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))  # would raise on an unlisted route
    table = routing.criticalities(ROUTES)
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    for method, route in served:
        assert admission.criticality_of(table, method, route) is not None, (method, route)
    assert set(table) <= served  # no stale entry
    assert table["POST", "/v1/keys/{key_id}/token"] is Criticality.CRITICAL
    assert table["POST", "/v1/vehicles/{vin}/commands"] is Criticality.CRITICAL
    assert table["POST", "/v1/keys/{key_id}/revoke"] is Criticality.CRITICAL_PLUS
    assert table["GET", "/v1/vehicles/{vin}/keys"] is Criticality.SHEDDABLE


def test_an_unlisted_route_stops_start_up() -> None:
    app = web.Application()
    app.router.add_get("/healthz", ok)
    app.router.add_post("/v1/brand-new", ok)
    with pytest.raises(UnclassifiedRoute, match="POST /v1/brand-new"):
        admission.setup(
            app, build({}), CollectorRegistry(), {("GET", "/healthz"): Criticality.CRITICAL_PLUS}
        )


def test_the_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="shed_sheddable_at"):
        build({"max_in_flight": 10, "shed_sheddable_at": 11})
    with pytest.raises(ConfigError, match="max_in_flight"):
        build({"max_in_flight": 0})


async def test_sheddable_is_shed_first_then_critical_at_the_hard_limit(
    served: tuple[Client, admission.AdmissionControl], gate: Gate
) -> None:
    client, control = served
    first = [asyncio.create_task(client.post("/crit/slow")) for _ in range(2)]
    await gate.until_inside(2)
    assert control.in_flight == 2
    shed = await client.get("/shed")
    assert shed.status == 429
    assert (await shed.json())["error"]["code"] == "overloaded"
    assert shed.headers["Retry-After"] in {"1", "2", "3"}
    assert (await client.post("/crit")).status == 200  # critical: under the hard limit
    more = [asyncio.create_task(client.post("/crit/slow")) for _ in range(2)]
    await gate.until_inside(4)
    refused = await client.post("/crit")
    assert refused.status == 429  # even critical, at the hard limit: refused, not queued
    assert "Retry-After" in refused.headers
    assert (await client.post("/plus")).status == 200  # critical-plus keeps its reserve
    gate.opened.set()
    assert [r.status for r in await asyncio.gather(*first, *more)] == [200] * 4
    assert control.in_flight == 0
    assert (await client.get("/shed")).status == 200
    refusals = control.metrics.refused
    assert refusals.labels("sheddable", "overloaded")._value.get() == 1
    assert refusals.labels("critical", "overloaded")._value.get() == 1
    assert control.metrics.admitted.labels("critical")._value.get() == 5


async def test_the_deadline_comes_from_the_header_capped_by_the_config(
    served: tuple[Client, admission.AdmissionControl],
) -> None:
    client, _ = served
    left = (await (await client.get("/deadline", headers={DEADLINE_HEADER: "1500"})).json())["left"]
    assert 0 < left <= 1.5
    capped = await client.get("/deadline", headers={DEADLINE_HEADER: "9999999"})
    assert 1.5 < (await capped.json())["left"] <= 2.0  # request_deadline_s
    default = (await (await client.get("/deadline")).json())["left"]
    assert 1.5 < default <= 2.0


@pytest.mark.parametrize("value", ["-5", "1e3", "12 34", "12.5", "", "٣", "12345678901", "+12"])
async def test_a_bad_deadline_header_is_a_400(
    served: tuple[Client, admission.AdmissionControl], value: str
) -> None:
    client, control = served
    reply = await client.get("/deadline", headers={DEADLINE_HEADER: value})
    assert reply.status == 400
    assert (await reply.json())["error"]["code"] == "invalid_deadline"
    assert control.in_flight == 0


async def test_two_deadline_headers_are_a_400(
    served: tuple[Client, admission.AdmissionControl],
) -> None:
    client, _ = served
    headers = [(DEADLINE_HEADER, "100"), (DEADLINE_HEADER, "200")]
    assert (await client.get("/deadline", headers=headers)).status == 400


async def test_a_spent_deadline_is_refused_before_any_work(
    served: tuple[Client, admission.AdmissionControl], gate: Gate
) -> None:
    client, _control = served
    reply = await client.post("/crit/slow", headers={DEADLINE_HEADER: "0"})
    assert reply.status == 429
    assert (await reply.json())["error"]["code"] == "deadline_exceeded"
    assert gate.inside == 0
    assert gate.cancelled == 0


async def test_work_that_outlives_its_deadline_is_cancelled_and_answered_429(
    served: tuple[Client, admission.AdmissionControl], gate: Gate
) -> None:
    client, control = served
    async with asyncio.timeout(HANG_GUARD_S):
        reply = await client.post("/crit/slow", headers={DEADLINE_HEADER: "50"})
    assert reply.status == 429  # never a 5xx
    body = await reply.json()
    assert body["error"]["code"] == "deadline_exceeded"
    assert "may have acted" in body["error"]["message"]  # a write: the caller must not assume
    assert reply.headers["Retry-After"] in {"1", "2", "3"}
    assert gate.cancelled == 1
    assert gate.inside == 0
    assert control.in_flight == 0
    assert control.metrics.refused.labels("critical", "deadline_exceeded")._value.get() == 1


async def test_a_channel_upgrade_over_the_limit_is_paced_not_overloaded(
    aiohttp_client: Any, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect storm meets the in-flight limit before any car has proved itself: the
    channel's refusals are spread by the pacer's overflow tail and say reconnect_paced, which a
    car honours as a slot; every other route still hears "overloaded"."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/crit/slow", gated(gate))
    app.router.add_get(admission.CHANNEL_PATH, ok)
    app[PACING] = PacedChannel(2, CollectorRegistry())  # two a second
    config = build({"max_in_flight": 1, "shed_sheddable_at": 1})
    routes = {
        ("POST", "/crit/slow"): Criticality.CRITICAL_PLUS,
        ("GET", admission.CHANNEL_PATH): Criticality.CRITICAL_PLUS,
    }
    control = admission.setup(app, config, CollectorRegistry(), routes)
    client = await aiohttp_client(app)
    held = [asyncio.create_task(client.post("/crit/slow")) for _ in range(2)]
    await gate.until_inside(2)  # the critical-plus limit: 1 + max(1, 1 // 8)
    answers = [await client.get("/v1/vehicles/VIN0/channel") for _ in range(4)]
    assert {a.status for a in answers} == {429}
    assert {a.headers[REFUSAL_HEADER] for a in answers} == {RECONNECT_PACED}
    assert [(await a.json())["error"]["code"] for a in answers] == [RECONNECT_PACED] * 4
    assert [a.headers["Retry-After"] for a in answers] == ["1", "1", "2", "2"]  # spread
    other = await client.post("/crit/slow")
    assert (other.status, (await other.json())["error"]["code"]) == (429, "overloaded")
    gate.opened.set()
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
    assert (await client.get("/v1/vehicles/VIN0/channel")).status == 200
    refused = control.metrics.refused.labels("critical_plus", RECONNECT_PACED)
    assert refused._value.get() == 4
    assert app[PACING].metrics.paced.labels("overflow")._value.get() == 4


async def test_an_open_websocket_holds_no_slot_and_no_deadline(
    served: tuple[Client, admission.AdmissionControl], gate: Gate
) -> None:
    client, control = served
    async with asyncio.timeout(HANG_GUARD_S):
        ws = await client.ws_connect("/ws", headers={DEADLINE_HEADER: "50"})
        assert (await ws.receive_json()) == {"deadline": False}
        await gate.until_inside(1)
        assert control.in_flight == 0
        assert (await client.get("/shed")).status == 200  # not shed: the socket is not counted
        # Outlive the 50 ms deadline on purpose: the socket must not be cut by it.
        await asyncio.sleep(0.2)
        gate.opened.set()
        closing = await ws.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert gate.cancelled == 0
        await ws.close()
    assert control.in_flight == 0


async def test_the_real_app_documents_and_answers_refusals(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))
    client = await aiohttp_client(app)
    reply = await client.get("/openapi.json")
    doc = await reply.json()
    for item in doc["paths"].values():
        for operation in item.values():
            assert "429" in operation["responses"]
    refused = await client.get("/healthz", headers={DEADLINE_HEADER: "x"})
    assert refused.status == 400
    assert "X-Request-Id" in refused.headers  # answered inside the error middleware


async def test_a_client_gone_mid_request_is_not_a_server_error(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A car that gave up on its upgrade resets the connection under the handler: that is logged
    as "client gone" and counted 499, never as an unhandled error answered 500."""

    async def reset(request: web.Request) -> web.Response:
        raise ConnectionResetError("Cannot write to closing transport")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/gone", reset)
    client = await aiohttp_client(app)
    with caplog.at_level("INFO", logger="keyserver.http"):
        answer = await client.get("/gone")
    assert answer.status == 499
    assert (await answer.json())["error"]["code"] == "client_gone"
    assert "client gone" in caplog.messages
    assert "unhandled error" not in caplog.messages
