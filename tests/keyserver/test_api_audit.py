"""The car's audit trail over HTTP (``GET /v1/vehicles/{vin}/audit``): the owner reads what the car
uploaded, in the car's order, page by page; after a transfer each owner reads only its own
tenure, by the car's clock; nobody else learns the car exists."""

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
TRANSFER = "/v1/vehicles/{vin}/transfer"


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


def at(seconds: float, code: str = "granted") -> str:
    return json.dumps({"kind": "decision", "path": "ble", "action": "unlock", "code": code,
                       "at": seconds})  # fmt: skip


UNTIMED = json.dumps({"kind": "courier", "path": "ble", "document": "revocation_list"})


async def sell(api: Api, seller: Person, buyer: Person) -> None:
    body = {"to_email": f"{buyer.name}@example.com"}
    reply = await api.call(seller, "POST", TRANSFER, body, vin=VIN)
    assert reply.status == 200


async def seqs(api: Api, reader: Person) -> tuple[list[int], list[dict[str, Any]]]:
    reply = await api.call(reader, "GET", AUDIT, proof=False, vin=VIN)
    assert reply.status == 200
    return [e["seq"] for e in reply.body["events"]], reply.body["tenures"]


async def test_after_a_transfer_each_owner_reads_only_its_own_tenure(
    api: Api, owner: Person
) -> None:
    sold_at = api.clock.now
    buyer = await api.person("buyer")
    await sell(api, owner, buyer)
    # The car was offline at the sale: the seller's last trips arrive after it, with the buyer's.
    trail = [
        AuditEvent(1, at(sold_at - 100)),  # the seller's
        AuditEvent(2, UNTIMED),  # between two of the seller's: the seller's
        AuditEvent(3, at(sold_at - 10)),
        AuditEvent(4, UNTIMED),  # somewhere around the sale: shown to neither side
        AuditEvent(5, at(sold_at + 50)),  # the buyer's
        AuditEvent(6, UNTIMED),  # after the buyer's: the buyer's
    ]
    api.clock.advance(3600)
    await api.store.add_audit_batch(VIN, "1-6", trail, now=api.clock.now)

    assert await seqs(api, buyer) == ([5, 6], [{"since": sold_at, "until": None}])
    assert await seqs(api, owner) == ([1, 2, 3], [{"since": 0, "until": sold_at}])
    stranger = await api.person("stranger")
    reply = await api.call(stranger, "GET", AUDIT, proof=False, vin=VIN)
    assert (reply.status, reply.code) == (404, "unknown_vehicle")


async def test_an_owner_who_buys_the_car_back_reads_both_tenures_not_the_one_between(
    api: Api, owner: Person
) -> None:
    first_sale = api.clock.now
    buyer = await api.person("buyer")
    await sell(api, owner, buyer)
    api.clock.advance(1000)
    bought_back = api.clock.now
    await sell(api, buyer, owner)
    trail = [AuditEvent(1, at(first_sale - 1)), AuditEvent(2, at(first_sale + 1)),
             AuditEvent(3, at(bought_back + 1))]  # fmt: skip
    await api.store.add_audit_batch(VIN, "1-3", trail, now=api.clock.now)

    assert await seqs(api, owner) == (
        [1, 3],
        [{"since": 0, "until": first_sale}, {"since": bought_back, "until": None}],
    )
    assert await seqs(api, buyer) == ([2], [{"since": first_sale, "until": bought_back}])
