"""The car's audit trail over HTTP (``GET /v1/vehicles/{vin}/audit``): the owner reads what the car
uploaded, in the car's order, page by page; nobody else learns the car exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keycore.channel import AuditEvent
from keyserver.app import create_app
from keyserver.config import build
from keyserver.routes.audit import MAX_PAGE
from tests.keyserver.keys_harness import VIN, Api, Clock, Person

AUDIT = "/v1/vehicles/{vin}/audit"


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path / "server")}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


def decision(code: str, path: str = "ble") -> str:
    event = {"kind": "decision", "path": path, "action": "unlock", "code": code, "at": 1.5}
    return json.dumps(event)


async def test_the_owner_reads_what_the_car_uploaded_in_the_cars_order(
    api: Api, owner: Person
) -> None:
    batch = [AuditEvent(2, decision("revoked")), AuditEvent(1, decision("granted"))]
    await api.store.add_audit_batch(VIN, "1-2", batch, now=api.clock.now)
    await api.store.add_audit_batch(VIN, "3-3", [AuditEvent(3, "not json")], now=api.clock.now)

    reply = await api.call(owner, "GET", AUDIT, proof=False, vin=VIN)

    assert reply.status == 200
    assert reply.body["vin"] == VIN
    assert reply.body["more"] is False
    assert [e["seq"] for e in reply.body["events"]] == [1, 2, 3]
    assert [e["event"].get("code") for e in reply.body["events"]] == ["granted", "revoked", None]
    assert reply.body["events"][0]["event"]["path"] == "ble"
    assert reply.body["events"][2]["event"] == {"kind": "unreadable"}


async def test_since_pages_through_a_long_trail(api: Api, owner: Person) -> None:
    events = [AuditEvent(seq, decision("granted")) for seq in range(1, MAX_PAGE + 3)]
    for start in range(0, len(events), 100):
        chunk = events[start : start + 100]
        batch_id = f"{chunk[0].seq}-{chunk[-1].seq}"
        await api.store.add_audit_batch(VIN, batch_id, chunk, now=api.clock.now)

    first = await api.call(owner, "GET", AUDIT, proof=False, vin=VIN)
    last_seq = first.body["events"][-1]["seq"]
    rest = await api.call(owner, "GET", AUDIT, proof=False, vin=VIN, query=f"since={last_seq}")

    assert (len(first.body["events"]), first.body["more"]) == (MAX_PAGE, True)
    assert [e["seq"] for e in rest.body["events"]] == [MAX_PAGE + 1, MAX_PAGE + 2]
    assert rest.body["more"] is False


async def test_anyone_but_the_owner_is_told_the_car_does_not_exist(api: Api, owner: Person) -> None:
    stranger = await api.person("stranger")
    reply = await api.call(stranger, "GET", AUDIT, proof=False, vin=VIN)
    assert (reply.status, reply.code) == (404, "unknown_vehicle")


@pytest.mark.parametrize("since", ["-1", "x", "99999999999999999999", ""])
async def test_a_bad_since_is_a_clear_400(api: Api, owner: Person, since: str) -> None:
    reply = await api.call(owner, "GET", AUDIT, proof=False, vin=VIN, query=f"since={since}")
    assert (reply.status, reply.code) == (400, "invalid_since")


async def test_without_a_session_nothing_is_shown(api: Api, owner: Person) -> None:
    response = await api.client.get(AUDIT.format(vin=VIN))
    assert response.status == 401
