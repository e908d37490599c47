"""Remote commands over HTTP: who may send what, idempotency, state and expiry as the phone sees
them, and the answer when the car is not connected (202 with a Bluetooth hint, never a 503).
Every answer is checked against its documented schema (keys_harness). The car's side of the
channel is in tests/vehicle_agent/test_channel.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keycore import Action, SoftwareSigner
from keycore.command import read_command
from keycore.cose import point_bytes
from keycore.request_proof import HEADER, sign_request
from keyserver.app import create_app
from keyserver.config import build
from keyserver.models import CommandStatus, Vehicle
from tests.keyserver.keys_harness import DAY, OTHER_VIN, SUSPEND, VIN, Api, Clock, Person

COMMANDS = "/v1/vehicles/{vin}/commands"
COMMAND = "/v1/commands/{command_id}"
CHANNEL = "/v1/vehicles/{vin}/channel"


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path)}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


async def send(api: Api, who: Person, action: str = "unlock", key: str = "key-00001") -> Any:
    body = {"action": action, "idempotency_key": key}
    return await api.call(who, "POST", COMMANDS, body, vin=VIN)


async def show(api: Api, who: Person, command_id: str) -> Any:
    return await api.call(who, "GET", COMMAND, proof=False, command_id=command_id)


async def test_a_car_that_is_not_connected_gets_202_queued_with_a_bluetooth_hint(
    api: Api, owner: Person
) -> None:
    reply = await send(api, owner)
    assert reply.status == 202  # not a 503: the car is away, the cloud is fine
    body = reply.body
    assert (body["status"], body["vin"], body["action"]) == ("queued", VIN, "unlock")
    assert body["expires_at"] == body["issued_at"] + 60
    hint = body["hint"]
    assert hint["code"] == "car_unreachable"
    assert "Bluetooth" in hint["message"]
    assert hint["key_valid_until"] is None  # the owner holds no key with an end here
    # the command is signed for this car, for exactly this action and window
    stored = await api.store.command(body["command_id"])
    assert stored is not None
    signed = read_command(stored.document, vin=VIN, now=api.clock.now, trust=api.trust())
    assert (signed.command_id, signed.action, signed.expires_at) == (
        body["command_id"],
        Action.UNLOCK,
        body["expires_at"],
    )


async def test_a_guest_is_told_until_when_its_bluetooth_key_works(api: Api, owner: Person) -> None:
    guest = await api.person("guest")
    not_after = api.clock.now + 2 * DAY
    await api.share(owner, guest, "guest", not_after=not_after)
    reply = await send(api, guest, "trunk")
    assert reply.status == 202
    assert reply.body["hint"]["key_valid_until"] == not_after


async def test_the_same_idempotency_key_never_makes_a_second_command(
    api: Api, owner: Person
) -> None:
    first = await send(api, owner, "lock", "lock-at-night")
    again = await send(api, owner, "lock", "lock-at-night")
    assert (first.status, again.status) == (202, 200)
    assert again.body["command_id"] == first.body["command_id"]
    assert again.body["issued_at"] == first.body["issued_at"]
    other = await send(api, owner, "unlock", "lock-at-night")  # the key named another command
    assert (other.status, other.code) == (409, "idempotency_key_reused")
    separate = await send(api, owner, "lock", "lock-tomorrow")
    assert separate.status == 202
    assert separate.body["command_id"] != first.body["command_id"]


async def test_who_may_send_what(api: Api, owner: Person) -> None:
    valet = await api.person("valet")
    await api.share(owner, valet, "valet")
    assert (await send(api, valet, "start")).status == 202
    refused = await send(api, valet, "trunk", "valet-trunk")  # a valet never opens the trunk
    assert (refused.status, refused.code) == (403, "not_entitled")

    driver = await api.person("driver")
    key = await api.share(owner, driver, entitlements=["unlock", "lock"])
    assert (await send(api, driver, "lock")).status == 202
    assert (await send(api, driver, "climate", "driver-climate")).code == "not_entitled"
    await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert (await send(api, driver, "lock", "after-suspend")).code == "not_entitled"

    stranger = await api.person("stranger")
    assert (await send(api, stranger)).code == "unknown_vehicle"
    await api.vehicle(stranger, vin=OTHER_VIN)
    reply = await api.call(
        owner, "POST", COMMANDS, {"action": "unlock", "idempotency_key": "k" * 8}, vin=OTHER_VIN
    )
    assert reply.code == "unknown_vehicle"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"action": "manage_keys", "idempotency_key": "key-00001"}, "invalid_field"),
        ({"action": "fly", "idempotency_key": "key-00001"}, "invalid_field"),
        ({"action": "unlock", "idempotency_key": "short"}, "invalid_field"),
        ({"action": "unlock", "idempotency_key": "has space!"}, "invalid_field"),
        ({"action": "unlock"}, "missing_field"),
        ({"action": "unlock", "idempotency_key": "key-00001", "extra": 1}, "unknown_field"),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_stored(
    api: Api, owner: Person, body: dict[str, Any], code: str
) -> None:
    reply = await api.call(owner, "POST", COMMANDS, body, vin=VIN)
    assert (reply.status, reply.code) == (400, code)
    assert await api.store.pending_commands(VIN, now=api.clock.now) == []


async def test_a_command_needs_the_device_proof(api: Api, owner: Person) -> None:
    body = {"action": "unlock", "idempotency_key": "key-00001"}
    reply = await api.call(owner, "POST", COMMANDS, body, vin=VIN, proof=False)
    assert (reply.status, reply.code) == (401, "device_proof_required")


async def test_the_requester_and_the_owner_see_a_command_and_no_one_else(
    api: Api, owner: Person
) -> None:
    driver = await api.person("driver")
    await api.share(owner, driver)
    other = await api.person("other")
    await api.share(owner, other)
    command_id = (await send(api, driver)).body["command_id"]
    assert (await show(api, driver, command_id)).body["status"] == "queued"
    assert (await show(api, owner, command_id)).body["command_id"] == command_id
    assert (await show(api, other, command_id)).code == "unknown_command"
    assert (await show(api, driver, "no-such-command")).code == "unknown_command"
    assert (await show(api, driver, "bad id!")).code == "unknown_command"


async def test_expiry_is_judged_when_the_command_is_read(api: Api, owner: Person) -> None:
    queued = (await send(api, owner, "unlock", "queued-one")).body
    delivered = (await send(api, owner, "lock", "delivered-one")).body
    assert await api.store.set_command_status(
        delivered["command_id"], CommandStatus.DELIVERED, vin=VIN,
        expected=[CommandStatus.QUEUED], detail="", now=api.clock.now,
    )  # fmt: skip
    api.clock.advance(60)
    never = (await show(api, owner, queued["command_id"])).body
    assert (never["status"], never["detail"], never["updated_at"], never["hint"]) == (
        "expired",
        "expired before the car received it",
        queued["expires_at"],
        None,
    )
    late = (await show(api, owner, delivered["command_id"])).body
    assert late["status"] == "expired"
    assert late["detail"] == "the car received it but reported no result before it expired"
    assert await api.store.pending_commands(VIN, now=api.clock.now) == []  # never sent now


async def test_the_channel_wants_a_websocket_and_the_cars_own_proof(
    api: Api, owner: Person
) -> None:
    path = CHANNEL.format(vin=VIN)
    assert (await api.client.get(path)).status == 401  # no proof
    response = await api.client.get(CHANNEL.format(vin="NOT-A-VIN"))
    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_vin")
    # a phone's proof is not the car's
    phone = owner.phone
    proof = sign_request(
        phone.key, device_id=phone.device_id, method="GET", path=path, body=b"",
        timestamp=api.clock.now,
    )  # fmt: skip
    response = await api.client.get(path, headers={HEADER: proof})
    assert response.status == 401
    # the car's own proof, but a plain GET: 426
    car = SoftwareSigner.generate()
    await api.store.add_vehicle(Vehicle(OTHER_VIN, point_bytes(car.public_key), None, 0))
    path = CHANNEL.format(vin=OTHER_VIN)
    proof = sign_request(
        car, device_id=OTHER_VIN, method="GET", path=path, body=b"", timestamp=api.clock.now
    )
    response = await api.client.get(path, headers={HEADER: proof})
    assert (response.status, (await response.json())["error"]["code"]) == (426, "upgrade_required")
    assert response.headers["Upgrade"] == "websocket"
