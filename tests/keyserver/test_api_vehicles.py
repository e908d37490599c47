"""Vehicles over HTTP: provisioning, the car's pairing code, owner pairing, transfer, visibility.

Accounts, sessions and devices are made directly in the store, so these tests stand on the store
and keyserver.auth alone. One fake clock (``keyserver.clock.now``) drives proofs, expiry and rate
windows: nothing sleeps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keycore import Role, SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keycore.request_proof import HEADER, sign_request
from keyserver import auth
from keyserver import clock as clock_module
from keyserver.app import STORE, create_app
from keyserver.config import Config, ConfigError, build
from keyserver.models import Account, Device, KeyRecord, KeyStatus, Session, Vehicle
from keyserver.store import Store
from tests.conftest import NOW, OTHER_VIN, VIN

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

SECRET = "factory-secret-0123456789"
JSON = {"Content-Type": "application/json"}
PROVISIONING = {"Authorization": f"Provisioning {SECRET}"}
TTL = Config().pairing_ttl_s
SKEW = Config().proof_max_skew_s


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(clock_module, "now", fake)
    return fake


def xy(signer: SoftwareSigner) -> bytes:
    return point_bytes(signer.public_key)


@dataclass
class Phone:
    """An account with a session and one enrolled device, made straight in the store."""

    account_id: str
    email: str
    token: str
    key: SoftwareSigner

    @property
    def device_id(self) -> str:
        return auth.device_id_for(xy(self.key))


class Api:
    def __init__(self, client: Client, clock: Clock) -> None:
        self.client = client
        self.clock = clock

    @property
    def store(self) -> Store:
        return self.client.app[STORE]

    async def phone(self, name: str) -> Phone:
        account_id, email = f"acct-{name}", f"{name}@example.com"
        await self.store.create_account(Account(account_id, email, "-", NOW))
        token, token_hash = auth.new_session_token()
        await self.store.put_session(Session(token_hash, account_id, NOW + 86_400))
        key = SoftwareSigner.generate()
        device = Device(auth.device_id_for(xy(key)), account_id, xy(key), name, NOW)
        await self.store.add_device(device)
        return Phone(account_id, email, token, key)

    async def provision(
        self, vin: str, key: SoftwareSigner, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        body = {"vin": vin, "public_key": b64url_encode(xy(key))}
        return await self.client.post(
            "/v1/vehicles",
            data=json.dumps(body).encode(),
            headers={**JSON, **(PROVISIONING if headers is None else headers)},
        )

    def car_proof(
        self, vin: str, key: SoftwareSigner, *, device_id: str | None = None, skew: int = 0
    ) -> str:
        return sign_request(
            key,
            device_id=vin if device_id is None else device_id,
            method="POST",
            path=f"/v1/vehicles/{vin}/pairing-code",
            body=b"",
            timestamp=self.clock.now + skew,
        )

    async def request_code(self, vin: str, proof: str) -> aiohttp.ClientResponse:
        return await self.client.post(f"/v1/vehicles/{vin}/pairing-code", headers={HEADER: proof})

    async def code(self, vin: str, key: SoftwareSigner) -> str:
        response = await self.request_code(vin, self.car_proof(vin, key))
        assert response.status == 201, await response.text()
        return str((await response.json())["code"])

    async def signed(
        self,
        phone: Phone,
        path: str,
        body: object,
        *,
        signer: SoftwareSigner | None = None,
        proof: bool = True,
    ) -> aiohttp.ClientResponse:
        """POST ``body`` with the phone's session and, unless ``proof`` is False, its proof."""
        data = json.dumps(body).encode()
        headers = {**JSON, "Authorization": f"Bearer {phone.token}"}
        if proof:
            key = phone.key if signer is None else signer
            headers[HEADER] = sign_request(
                key,
                device_id=auth.device_id_for(xy(key)),
                method="POST",
                path=path,
                body=data,
                timestamp=self.clock.now,
            )
        return await self.client.post(path, data=data, headers=headers)

    async def pair(self, phone: Phone, vin: str, code: object) -> aiohttp.ClientResponse:
        return await self.signed(phone, f"/v1/vehicles/{vin}/owner", {"code": code})

    async def transfer(self, phone: Phone, vin: str, to_email: str) -> aiohttp.ClientResponse:
        return await self.signed(phone, f"/v1/vehicles/{vin}/transfer", {"to_email": to_email})

    async def show(self, phone: Phone, vin: str) -> aiohttp.ClientResponse:
        return await self.client.get(
            f"/v1/vehicles/{vin}", headers={"Authorization": f"Bearer {phone.token}"}
        )

    async def owner(self, vin: str) -> str | None:
        vehicle = await self.store.vehicle(vin)
        assert vehicle is not None
        return vehicle.owner_id


async def refused(response: aiohttp.ClientResponse) -> tuple[int, str]:
    return response.status, (await response.json())["error"]["code"]


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**8:08d}"


async def pending(api: Api, car: SoftwareSigner) -> tuple[Phone, str]:
    """A provisioned car showing a code, and alice, who has not paired yet."""
    await api.provision(VIN, car)
    return await api.phone("alice"), await api.code(VIN, car)


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
def api_with(tmp_path: Path, aiohttp_client: ClientFactory, clock: Clock) -> ApiFactory:
    """An app with the provisioning secret set, and these settings."""

    async def make(**settings: Any) -> Api:
        values = {"data_dir": str(tmp_path), "provisioning_secret": SECRET, **settings}
        return Api(await aiohttp_client(create_app(build(values))), clock)

    return make


@pytest.fixture
async def api(api_with: ApiFactory) -> Api:
    return await api_with()


@pytest.fixture
def car() -> SoftwareSigner:
    return SoftwareSigner.generate()


# provisioning


async def test_provisioning_registers_the_car(api: Api, car: SoftwareSigner) -> None:
    response = await api.provision(VIN, car)
    assert response.status == 201
    assert await response.json() == {"vin": VIN}
    assert await api.store.vehicle(VIN) == Vehicle(VIN, xy(car), None, NOW)


async def test_provisioning_refuses_bad_credentials_and_bad_input(
    api: Api, car: SoftwareSigner
) -> None:
    for headers in (
        {},
        {"Authorization": "Provisioning wrong-secret-0123456789"},
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": f"Provisioning {SECRET}x"},
        {"Authorization": "Provisioning caf\u00e9"},
    ):
        response = await api.provision(VIN, car, headers)
        assert await refused(response) == (401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Provisioning"
    point = xy(car)
    off_curve = point[:63] + bytes([point[63] ^ 1])
    for body in (
        {"vin": "5YJ3E1EA7KF00000I", "public_key": b64url_encode(point)},  # I is not in VINs
        {"vin": VIN.lower(), "public_key": b64url_encode(point)},
        {"vin": 17, "public_key": b64url_encode(point)},
        {"vin": VIN, "public_key": b64url_encode(off_curve)},
        {"vin": VIN, "public_key": b64url_encode(point[:63])},
        {"vin": VIN, "public_key": b64url_encode(point) + "="},
        {"vin": VIN, "public_key": base64.b64encode(point).decode()},
        {"vin": VIN},
        {"vin": VIN, "public_key": b64url_encode(point), "owner_id": "acct-mallory"},
    ):
        response = await api.client.post(
            "/v1/vehicles", data=json.dumps(body).encode(), headers={**JSON, **PROVISIONING}
        )
        status, code = await refused(response)
        assert status == 400
        assert code in ("invalid_field", "missing_field", "unknown_field")
    assert await api.store.vehicle(VIN) is None


async def test_a_vin_is_provisioned_once(api: Api, car: SoftwareSigner) -> None:
    assert (await api.provision(VIN, car)).status == 201
    impostor = SoftwareSigner.generate()
    assert await refused(await api.provision(VIN, impostor)) == (409, "vehicle_exists")
    vehicle = await api.store.vehicle(VIN)
    assert vehicle is not None
    assert vehicle.public_key == xy(car)


async def test_provisioning_is_off_without_a_secret(
    api_with: ApiFactory, car: SoftwareSigner
) -> None:
    api = await api_with(provisioning_secret="")
    for headers in (PROVISIONING, {"Authorization": "Provisioning "}, {}):
        response = await api.provision(VIN, car, headers)
        assert await refused(response) == (403, "provisioning_disabled")
    assert await api.store.vehicle(VIN) is None


def test_a_short_provisioning_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="provisioning_secret") as caught:
        build({"provisioning_secret": "hunter2"})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="provisioning_secret") as caught:
        build({"provisioning_secret": 12345678901234567})
    assert "12345678901234567" not in str(caught.value)
    assert SECRET not in repr(build({"provisioning_secret": SECRET}))


# the car's pairing code


async def test_the_car_gets_a_code_with_its_own_key(api: Api, car: SoftwareSigner) -> None:
    await api.provision(VIN, car)
    response = await api.request_code(VIN, api.car_proof(VIN, car))
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["expires_at"] == NOW + TTL
    assert len(body["code"]) == 8
    assert body["code"].isdigit()


async def test_the_pairing_code_needs_the_cars_fresh_single_use_proof(
    api: Api, car: SoftwareSigner
) -> None:
    other_car = SoftwareSigner.generate()
    await api.provision(VIN, car)
    await api.provision(OTHER_VIN, other_car)
    owner = await api.phone("alice")
    cases = [
        (api.car_proof(VIN, other_car), (401, "bad_device_proof")),  # another car's key
        (api.car_proof(VIN, owner.key), (401, "bad_device_proof")),  # a phone's key
        (api.car_proof(VIN, car, device_id=OTHER_VIN), (401, "bad_device_proof")),
        (api.car_proof(VIN, car, skew=-SKEW - 1), (401, "stale_device_proof")),
        (api.car_proof(VIN, car, skew=SKEW + 1), (401, "stale_device_proof")),
        ("device=x, ts=1", (400, "bad_device_proof")),
    ]
    for proof, expected in cases:
        assert await refused(await api.request_code(VIN, proof)) == expected
    response = await api.client.post(f"/v1/vehicles/{VIN}/pairing-code")
    assert await refused(response) == (401, "device_proof_required")
    unknown = "1HGCM82633A004353"
    response = await api.request_code(unknown, api.car_proof(unknown, car))
    assert await refused(response) == (401, "bad_device_proof")
    response = await api.request_code("NOT-A-VIN", api.car_proof(VIN, car))
    assert await refused(response) == (400, "invalid_vin")
    response = await api.client.post(
        f"/v1/vehicles/{VIN}/pairing-code",
        data=b"{}",
        headers={**JSON, HEADER: api.car_proof(VIN, car)},
    )
    assert await refused(response) == (400, "unexpected_body")
    # none of that left a code behind
    assert await refused(await api.pair(owner, VIN, "12345678")) == (404, "no_pairing")

    proof = api.car_proof(VIN, car)
    assert (await api.request_code(VIN, proof)).status == 201
    assert await refused(await api.request_code(VIN, proof)) == (401, "replayed_device_proof")


async def test_a_new_code_replaces_the_old_one(api: Api, car: SoftwareSigner) -> None:
    alice, first = await pending(api, car)
    second = await api.code(VIN, car)
    if first != second:  # one chance in 10^8 that they are equal
        assert await refused(await api.pair(alice, VIN, first)) == (403, "wrong_code")
    assert (await api.pair(alice, VIN, second)).status == 200


# owner pairing


async def test_owner_pairing_happy_path(api: Api, car: SoftwareSigner) -> None:
    alice, code = await pending(api, car)
    response = await api.pair(alice, VIN, code)
    assert response.status == 200
    assert await response.json() == {"vin": VIN, "owner_id": alice.account_id}
    assert await api.owner(VIN) == alice.account_id
    response = await api.show(alice, VIN)
    assert await response.json() == {"vin": VIN, "owner_id": alice.account_id, "created_at": NOW}
    # the car now has an owner: no more codes for it, and the used one is gone
    response = await api.request_code(VIN, api.car_proof(VIN, car))
    assert await refused(response) == (409, "already_owned")
    mallory = await api.phone("mallory")
    assert await refused(await api.pair(mallory, VIN, code)) == (404, "no_pairing")
    assert await api.owner(VIN) == alice.account_id


@pytest.mark.parametrize("wrong_tries", [2, 3])
async def test_each_wrong_code_spends_one_of_the_attempts(
    api_with: ApiFactory, car: SoftwareSigner, wrong_tries: int
) -> None:
    api = await api_with(pairing_attempts=3)
    alice, code = await pending(api, car)
    for _ in range(wrong_tries):
        assert await refused(await api.pair(alice, VIN, wrong(code))) == (403, "wrong_code")
    response = await api.pair(alice, VIN, code)
    if wrong_tries < 3:
        assert response.status == 200
        return
    assert await refused(response) == (429, "too_many_attempts")  # the right code, too late
    assert await api.owner(VIN) is None
    # the car can show a new code, and that one works
    assert (await api.pair(alice, VIN, await api.code(VIN, car))).status == 200


async def test_an_expired_code_is_refused(api: Api, car: SoftwareSigner) -> None:
    alice, code = await pending(api, car)
    api.clock.now += TTL
    assert await refused(await api.pair(alice, VIN, code)) == (410, "code_expired")
    assert await api.owner(VIN) is None


async def test_pairing_needs_the_callers_own_device_proof(
    api_with: ApiFactory, car: SoftwareSigner
) -> None:
    api = await api_with(pairing_attempts=1)
    alice, code = await pending(api, car)
    bob = await api.phone("bob")
    path = f"/v1/vehicles/{VIN}/owner"
    response = await api.signed(alice, path, {"code": code}, proof=False)
    assert await refused(response) == (401, "device_proof_required")
    response = await api.signed(alice, path, {"code": code}, signer=bob.key)
    assert await refused(response) == (403, "unknown_device")
    response = await api.client.post(path, data=json.dumps({"code": code}), headers=JSON)
    assert await refused(response) == (401, "unauthorized")
    assert await api.owner(VIN) is None
    # none of those spent the code or an attempt
    assert (await api.pair(alice, VIN, code)).status == 200


async def test_bad_pairing_input_changes_nothing(api_with: ApiFactory, car: SoftwareSigner) -> None:
    api = await api_with(pairing_attempts=1)
    alice, code = await pending(api, car)
    for bad in (code[:7], code + "0", int(code), "１２３４５６７８", f" {code}", None, ""):
        status, error = await refused(await api.pair(alice, VIN, bad))
        assert (status, error) in ((400, "invalid_field"), (400, "missing_field"))
    path = f"/v1/vehicles/{VIN}/owner"
    response = await api.signed(alice, path, {"code": code, "vin": VIN})
    assert await refused(response) == (400, "unknown_field")
    response = await api.signed(alice, path, [code])
    assert await refused(response) == (400, "invalid_body")
    response = await api.signed(alice, "/v1/vehicles/5YJ3E1EA7KF00000O/owner", {"code": code})
    assert await refused(response) == (400, "invalid_vin")
    # the one attempt is still there
    assert (await api.pair(alice, VIN, code)).status == 200


async def test_pairing_tries_are_rate_limited_per_account(
    api_with: ApiFactory, car: SoftwareSigner
) -> None:
    api = await api_with(pairing_attempts=20)
    alice, code = await pending(api, car)
    mallory = await api.phone("mallory")
    for _ in range(Config().pairing_attempts_per_minute):
        assert await refused(await api.pair(mallory, VIN, wrong(code))) == (403, "wrong_code")
    response = await api.pair(mallory, VIN, code)
    assert await refused(response) == (429, "rate_limited")
    assert response.headers["Retry-After"] == "60"
    assert await api.owner(VIN) is None
    api.clock.now += 60  # the next window
    assert (await api.pair(mallory, VIN, code)).status == 200
    # each account has its own count
    await api.provision(OTHER_VIN, other := SoftwareSigner.generate())
    code = await api.code(OTHER_VIN, other)
    for _ in range(Config().pairing_attempts_per_minute):
        await api.pair(mallory, OTHER_VIN, wrong(code))
    assert (await api.pair(alice, OTHER_VIN, code)).status == 200


# transfer


async def paired(api: Api, car: SoftwareSigner) -> Phone:
    """A provisioned car, and alice, its owner."""
    alice, code = await pending(api, car)
    assert (await api.pair(alice, VIN, code)).status == 200
    return alice


async def test_the_owner_transfers_the_car(api: Api, car: SoftwareSigner) -> None:
    alice = await paired(api, car)
    bob = await api.phone("bob")
    response = await api.transfer(alice, VIN, "  Bob@Example.COM ")
    assert response.status == 200
    assert await response.json() == {"vin": VIN, "owner_id": bob.account_id}
    assert await api.owner(VIN) == bob.account_id
    assert (await api.show(bob, VIN)).status == 200
    assert await refused(await api.show(alice, VIN)) == (404, "unknown_vehicle")
    # the old owner has no say any more; the new one can pass it on
    assert await refused(await api.transfer(alice, VIN, alice.email)) == (403, "not_owner")
    assert (await api.transfer(bob, VIN, alice.email)).status == 200
    assert await api.owner(VIN) == alice.account_id


async def test_transfer_refusals_change_nothing(api: Api, car: SoftwareSigner) -> None:
    alice = await paired(api, car)
    bob = await api.phone("bob")
    mallory = await api.phone("mallory")
    path = f"/v1/vehicles/{VIN}/transfer"
    assert await refused(await api.transfer(mallory, VIN, mallory.email)) == (403, "not_owner")
    assert await refused(await api.transfer(alice, OTHER_VIN, bob.email)) == (403, "not_owner")
    response = await api.transfer(alice, VIN, "nobody@example.com")
    assert await refused(response) == (404, "unknown_account")
    assert await refused(await api.transfer(alice, VIN, alice.email)) == (409, "same_owner")
    for bad in ("bob", "bob@", "@example.com", "b" * 250 + "@example.com"):
        assert await refused(await api.transfer(alice, VIN, bad)) == (400, "invalid_field")
    response = await api.signed(alice, path, {"to_email": bob.email}, proof=False)
    assert await refused(response) == (401, "device_proof_required")
    response = await api.signed(alice, path, {"to_email": bob.email}, signer=mallory.key)
    assert await refused(response) == (403, "unknown_device")
    response = await api.signed(alice, path, {"to_email": bob.email, "role": "owner"})
    assert await refused(response) == (400, "unknown_field")
    assert await api.owner(VIN) == alice.account_id


async def test_a_transfer_proof_cannot_be_replayed(api: Api, car: SoftwareSigner) -> None:
    alice = await paired(api, car)
    bob = await api.phone("bob")
    path = f"/v1/vehicles/{VIN}/transfer"
    data = json.dumps({"to_email": bob.email}).encode()
    proof = sign_request(
        alice.key, device_id=alice.device_id, method="POST", path=path, body=data, timestamp=NOW
    )
    headers = {**JSON, "Authorization": f"Bearer {alice.token}", HEADER: proof}
    assert (await api.client.post(path, data=data, headers=headers)).status == 200
    # bob gives it back; alice's old proof must not take it again
    assert (await api.transfer(bob, VIN, alice.email)).status == 200
    response = await api.client.post(path, data=data, headers=headers)
    assert await refused(response) == (401, "replayed_device_proof")
    assert await api.owner(VIN) == alice.account_id


# visibility


async def test_only_the_owner_sees_the_car(api: Api, car: SoftwareSigner) -> None:
    await api.provision(VIN, car)
    alice = await api.phone("alice")
    bob = await api.phone("bob")
    # unowned: nobody sees it, and it looks the same as a VIN never provisioned
    assert await refused(await api.show(alice, VIN)) == (404, "unknown_vehicle")
    assert await refused(await api.show(alice, OTHER_VIN)) == (404, "unknown_vehicle")
    assert (await api.pair(alice, VIN, await api.code(VIN, car))).status == 200
    assert (await api.show(alice, VIN)).status == 200
    assert await refused(await api.show(bob, VIN)) == (404, "unknown_vehicle")
    assert await refused(await api.client.get(f"/v1/vehicles/{VIN}")) == (401, "unauthorized")
    assert await refused(await api.show(alice, "5YJ3E1EA7KF00000Q")) == (400, "invalid_vin")


async def test_a_transfer_revokes_every_key_of_the_car_first(api: Api, car: SoftwareSigner) -> None:
    alice = await paired(api, car)
    bob = await api.phone("bob")
    now = api.clock()
    for n, holder in enumerate((alice, bob)):  # the seller's own key and one the seller shared
        await api.store.put_key(
            KeyRecord(
                key_id=f"key{n}",
                vin=VIN,
                account_id=holder.account_id,
                device_id=holder.device_id,
                role=Role.OWNER if holder is alice else Role.GUEST,
                entitlements=0b11,
                not_before=now,
                not_after=now + 86_400,
                schedule=None,
                status=KeyStatus.ACTIVE,
                created_at=now + n,
            )
        )
    assert (await api.transfer(alice, VIN, bob.email)).status == 200
    assert await api.owner(VIN) == bob.account_id
    keys = await api.store.keys_of_vehicle(VIN)
    assert {k.status for k in keys} == {KeyStatus.REVOKED}
    sequence, entries = await api.store.revocations(VIN)
    assert sequence == 2
    assert {e.subject.hex() for e in entries} == {alice.device_id, bob.device_id}
