"""Every route's declared behaviour with the state store down (``Route.degraded``): a sweep
over the router — a route without a declared behaviour, or without a request here, fails — then
stale reads with their age, the last-resort 429, commands that tell the phone to use Bluetooth,
and fail-closed refusals of callers this process does not know."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keycore.request_proof import HEADER, sign_request
from keyserver import auth, openapi, passwords, routing
from keyserver.app import CONFIG, OPENAPI, ROUTES
from keyserver.degraded import DEGRADED_HEADER, STALE_AGE_HEADER, Behaviour
from tests.keyserver.flaky_store import (
    PROVISIONING_SECRET,
    FlakyStore,
)
from tests.keyserver.keys_harness import (
    ACCEPT,
    INVITATIONS,
    KEYS,
    OTHER_VIN,
    RESUME,
    REVOCATIONS,
    REVOKE,
    SUSPEND,
    TOKEN,
    VIN,
    Api,
    Clock,
    Phone,
    Reply,
)

COMMANDS = "/v1/vehicles/{vin}/commands"
#: Each route's declared behaviour, named as OpenAPI names operations: (method, path).
BEHAVIOURS = {(method.lower(), path): b for (method, path), b in routing.degraded(ROUTES).items()}
CAR_KEY = SoftwareSigner.generate()
COMMAND = "/v1/commands/{command_id}"
PASSWORD = "owner's password 1"


@pytest.fixture
def api(flaky_api: Api) -> Api:
    """The keyserver on a store that fails on demand (tests/keyserver/conftest.py)."""
    return flaky_api


class World:
    """An owner with an owner key, a driver and a passenger with shared keys, a command, a
    revoked fourth key:
    everything read once while the store was up, so this process knows it."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def build(self) -> None:
        api = self.api
        # with the right password an enrolment gets as far as the store (rate limits count in
        # this process while it is down) and is answered "try later" there
        self.owner = await api.person("owner", password_hash=passwords.hash_password(PASSWORD))
        await api.vehicle(self.owner)
        self.driver = await api.person("driver")
        self.stranger = await api.person("stranger")  # logs out in the sweep
        self.recipient = await api.person("recipient")  # accepts the invitation in the sweep
        self.owner_key = await api.owner_key(self.owner)
        self.driver_key = await api.share(self.owner, self.driver)
        self.passenger = await api.person("passenger")  # all of whose keys are revoked
        await api.share(self.owner, self.passenger)
        gone = await api.person("gone")
        gone_key = await api.share(self.owner, gone)
        assert (await api.call(self.owner, "POST", REVOKE, key_id=gone_key["key_id"])).status == 200
        self.spare = await api.phone(self.owner.account_id)  # a second phone, never seen here
        self.invitation = await api.invite(self.owner)
        reply = await api.call(
            self.owner, "POST", COMMANDS, {"action": "unlock", "idempotency_key": "warm-0001"},
            vin=VIN,
        )  # fmt: skip
        self.command_id = reply.body["command_id"]
        for who in (self.owner, self.driver, self.stranger, self.recipient):  # fill the cache
            assert (await api.call(who, "GET", "/v1/accounts/me", proof=False)).status == 200
            assert (await api.call(who, "GET", "/v1/devices", proof=False)).status == 200
        for call in (
            ("GET", "/v1/vehicles/{vin}"), ("GET", KEYS), ("GET", REVOCATIONS),
        ):  # fmt: skip
            assert (await api.call(self.owner, *call, proof=False, vin=VIN)).status == 200
        await api.call(self.owner, "GET", COMMAND, proof=False, command_id=self.command_id)


Request = Callable[[World], Awaitable[Reply]]


def _call(who: str, method: str, template: str, body: object = None, **params: Any) -> Request:
    async def request(world: World) -> Reply:
        values = {k: v(world) if callable(v) else v for k, v in params.items()}
        proof = values.pop("proof", True)
        sent = body
        if isinstance(body, dict):
            sent = {k: v(world) if callable(v) else v for k, v in body.items()}
        return await world.api.call(
            getattr(world, who), method, template, sent, proof=proof, **values
        )

    return request


async def _plain(world: World, method: str, path: str, **kwargs: Any) -> Reply:
    response = await world.api.client.request(method, path, **kwargs)
    return Reply(response.status, dict(response.headers), await response.read())


def _as_car(world: World, method: str, path: str, vin: str) -> Awaitable[Reply]:
    proof = sign_request(
        CAR_KEY, device_id=vin, method=method, path=path, body=b"", timestamp=world.api.clock.now
    )
    return _plain(world, method, path, headers={HEADER: proof})


def _enrol(world: World) -> Awaitable[Reply]:
    key = SoftwareSigner.generate()
    xy = point_bytes(key.public_key)
    phone = Phone(key, xy, auth.device_id_for(xy))
    body = {"name": "new phone", "public_key": b64url_encode(xy), "password": PASSWORD}
    return world.api.call(world.owner, "POST", "/v1/devices", body, phone=phone)


def _refresh(world: World) -> Awaitable[Reply]:
    token = {"token": world.driver_key["token"]}
    return world.api.call(world.driver, "POST", TOKEN, token, key_id=world.driver_key["key_id"])


#: One request per route, made as a caller this process knows (except where the route is for
#: strangers, like registering).
REQUESTS: dict[tuple[str, str], Request] = {
    ("get", "/healthz"): lambda w: _plain(w, "GET", "/healthz"),
    ("get", "/readyz"): lambda w: _plain(w, "GET", "/readyz"),
    ("get", "/metrics"): lambda w: _plain(w, "GET", "/metrics"),
    ("get", "/openapi.json"): lambda w: _plain(w, "GET", "/openapi.json"),
    ("get", "/v1/trust-update"): lambda w: _plain(w, "GET", "/v1/trust-update"),
    ("post", "/v1/accounts"): lambda w: _plain(
        w, "POST", "/v1/accounts", json={"email": "new@example.com", "password": "x" * 16}
    ),
    ("get", "/v1/accounts/me"): _call("owner", "GET", "/v1/accounts/me", proof=False),
    ("post", "/v1/sessions"): lambda w: _plain(
        w, "POST", "/v1/sessions", json={"email": "owner@example.com", "password": "x" * 16}
    ),
    ("delete", "/v1/sessions/current"): _call(
        "stranger", "DELETE", "/v1/sessions/current", proof=False
    ),
    ("post", "/v1/devices"): lambda w: _enrol(w),
    ("get", "/v1/devices"): _call("owner", "GET", "/v1/devices", proof=False),
    ("post", "/v1/vehicles"): lambda w: _plain(
        w,
        "POST",
        "/v1/vehicles",
        json={"vin": OTHER_VIN, "public_key": b64url_encode(point_bytes(CAR_KEY.public_key))},
        headers={"Authorization": f"Provisioning {PROVISIONING_SECRET}"},
    ),
    ("get", "/v1/vehicles/{vin}"): _call(
        "owner", "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN
    ),
    ("post", "/v1/vehicles/{vin}/pairing-code"): lambda w: _as_car(
        w, "POST", f"/v1/vehicles/{OTHER_VIN}/pairing-code", OTHER_VIN
    ),
    ("post", "/v1/vehicles/{vin}/owner"): _call(
        "driver", "POST", "/v1/vehicles/{vin}/owner", {"code": "12345678"}, vin=OTHER_VIN
    ),
    ("post", "/v1/vehicles/{vin}/transfer"): _call(
        "owner", "POST", "/v1/vehicles/{vin}/transfer", {"to_email": "d@example.com"}, vin=VIN
    ),
    ("post", "/v1/keys/{key_id}/token"): _refresh,
    ("post", "/v1/vehicles/{vin}/keys"): _call(
        "owner", "POST", KEYS, {"device_id": lambda w: w.spare.device_id}, vin=VIN
    ),
    ("get", "/v1/vehicles/{vin}/keys"): _call("owner", "GET", KEYS, proof=False, vin=VIN),
    ("post", "/v1/vehicles/{vin}/invitations"): _call(
        "owner", "POST", INVITATIONS, {"role": "driver"}, vin=VIN
    ),
    ("post", "/v1/invitations/{invitation_id}/accept"): _call(
        "recipient",
        "POST",
        ACCEPT,
        {"device_id": lambda w: w.recipient.phone.device_id},
        invitation_id=lambda w: w.invitation,
    ),
    ("post", "/v1/keys/{key_id}/suspend"): _call(
        "owner", "POST", SUSPEND, key_id=lambda w: w.owner_key["key_id"]
    ),
    # after the suspension above: resuming needs the store
    ("post", "/v1/keys/{key_id}/resume"): _call(
        "owner", "POST", RESUME, key_id=lambda w: w.owner_key["key_id"]
    ),
    ("post", "/v1/keys/{key_id}/revoke"): _call(
        "owner", "POST", REVOKE, key_id=lambda w: w.driver_key["key_id"]
    ),
    ("post", "/v1/vehicles/{vin}/revocations"): _call(
        "owner",
        "POST",
        REVOCATIONS,
        {"device_id": lambda w: w.passenger.phone.device_id},
        vin=VIN,
    ),
    ("get", "/v1/vehicles/{vin}/revocations"): _call(
        "owner", "GET", REVOCATIONS, proof=False, vin=VIN
    ),
    ("post", "/v1/vehicles/{vin}/commands"): _call(
        "owner", "POST", COMMANDS, {"action": "unlock", "idempotency_key": "down-0001"}, vin=VIN
    ),
    ("get", "/v1/commands/{command_id}"): _call(
        "owner", "GET", COMMAND, proof=False, command_id=lambda w: w.command_id
    ),
    ("get", "/v1/vehicles/{vin}/channel"): lambda w: _as_car(
        w, "GET", f"/v1/vehicles/{OTHER_VIN}/channel", OTHER_VIN
    ),
    ("get", "/v1/vehicles/{vin}/audit"): _call(
        "owner", "GET", "/v1/vehicles/{vin}/audit", proof=False, vin=VIN
    ),
}

EXPECTED_STATUS = {
    Behaviour.STALE: 200,
    Behaviour.TOKEN_FROM_RING: 200,
    Behaviour.JOURNALED: 202,
    Behaviour.NOT_SENT: 202,
    Behaviour.TRY_LATER: 429,
    Behaviour.READINESS: 200,
}


def test_every_served_route_declares_its_degraded_behaviour(api: Api) -> None:
    served = openapi.served_routes(api.app)
    assert served - set(BEHAVIOURS) == set(), "declare these in a route table"
    assert set(BEHAVIOURS) - served == set(), "a route table names a route nobody serves"
    assert served - set(REQUESTS) == set(), "add a store-down request for these routes here"


async def test_with_the_store_down_every_route_answers_as_declared(
    api: Api, flaky: FlakyStore, clock: Clock
) -> None:
    world = World(api)
    await world.build()
    clock.advance(30)
    flaky.fail()
    seen: dict[tuple[str, str], int] = {}
    for route, request in REQUESTS.items():  # in the table's order: suspend before resume
        behaviour = BEHAVIOURS[route]
        reply = await request(world)
        seen[route] = reply.status
        assert reply.status < 500, (route, reply.data)
        expected = EXPECTED_STATUS.get(behaviour)
        if expected is not None:
            assert reply.status == expected, (route, reply.status, reply.data)
        if behaviour in (Behaviour.NO_STORE, Behaviour.CHANNEL):
            continue
        assert DEGRADED_HEADER in reply.headers, route
        if reply.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(reply.data)
            assert body["degraded"]["reason"] == "store_unavailable", route
        if behaviour is Behaviour.TRY_LATER:
            assert int(reply.headers["Retry-After"]) > 0
        if behaviour is Behaviour.STALE:
            assert int(reply.headers[STALE_AGE_HEADER]) >= 30, route
    assert flaky.failures > 0  # the sweep really ran against a failing store
    assert [r for r, status in seen.items() if status >= 500] == []


async def test_stale_reads_carry_their_age(api: Api, flaky: FlakyStore, clock: Clock) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    fresh = await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    assert fresh.status == 200
    assert DEGRADED_HEADER not in fresh.headers
    assert "degraded" not in fresh.body
    clock.advance(42)
    flaky.fail()
    stale = await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    assert stale.status == 200
    assert stale.body["owner_id"] == owner.account_id
    assert stale.body["degraded"]["stale_age_s"] == 42
    assert stale.headers[STALE_AGE_HEADER] == "42"
    flaky.recover()
    again = await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    assert DEGRADED_HEADER not in again.headers


async def test_an_unknown_caller_is_refused_not_shown_anything(api: Api, flaky: FlakyStore) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # the owner's data is cached
    other = await api.person("other")  # never seen by this process
    flaky.fail()
    reply = await api.call(other, "GET", KEYS, proof=False, vin=VIN)
    assert reply.status == 429
    assert reply.code == "temporarily_unavailable"
    assert "keys" not in reply.body


async def test_a_known_session_does_not_open_someone_elses_data(
    api: Api, flaky: FlakyStore
) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    intruder = await api.person("intruder")
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    await api.call(intruder, "GET", "/v1/accounts/me", proof=False)  # its session is cached
    flaky.fail()
    reply = await api.call(intruder, "GET", KEYS, proof=False, vin=VIN)
    assert reply.status == 404  # the same refusal as with the store up, from last known data
    assert reply.headers[DEGRADED_HEADER] == "store_unavailable"


async def test_too_old_data_is_not_served(api: Api, flaky: FlakyStore, clock: Clock) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    clock.advance(api.app[CONFIG].last_known_max_age_s + 1)
    flaky.fail()
    reply = await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    assert reply.status == 429


@pytest.mark.parametrize("may_have_succeeded", [False, True])
async def test_a_command_with_the_store_down_sends_the_phone_to_bluetooth(
    api: Api, flaky: FlakyStore, may_have_succeeded: bool
) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    await api.owner_key(owner)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    flaky.fail(may_have_succeeded=may_have_succeeded, land_writes=may_have_succeeded)
    reply = await api.call(
        owner, "POST", COMMANDS, {"action": "unlock", "idempotency_key": "cmd-00001"}, vin=VIN
    )
    assert reply.status == 202
    assert reply.headers[DEGRADED_HEADER] == "store_unavailable"
    body = reply.body
    assert body["status"] == ("may_be_queued" if may_have_succeeded else "not_sent")
    assert body["may_have_succeeded"] is may_have_succeeded
    assert body["hint"]["code"] == "use_bluetooth"
    assert "Bluetooth" in body["hint"]["message"]
    flaky.recover()
    stored = await api.store.command(body["command_id"])
    assert (stored is not None) is may_have_succeeded  # the answer told the truth


async def test_a_command_for_an_absent_car_is_marked_car_unreachable(api: Api) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    reply = await api.call(
        owner, "POST", COMMANDS, {"action": "lock", "idempotency_key": "cmd-00002"}, vin=VIN
    )
    assert reply.status == 202
    assert reply.body["status"] == "queued"
    assert reply.headers[DEGRADED_HEADER] == "car_unreachable"
    assert reply.body["degraded"]["reason"] == "car_unreachable"


def test_no_503_is_documented_for_a_phone(api: Api) -> None:
    doc = api.app[OPENAPI]
    with_503 = [
        (path, method)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if "503" in operation["responses"]
    ]
    assert with_503 == []
    for (method, path), behaviour in BEHAVIOURS.items():
        responses = doc["paths"][path][method]["responses"]
        if behaviour not in (Behaviour.NO_STORE, Behaviour.READINESS):
            assert "429" in responses, (method, path)
        if behaviour is Behaviour.JOURNALED:
            assert "202" in responses, (method, path)
