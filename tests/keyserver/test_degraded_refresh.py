"""Token refresh with the state store down: a phone presenting its current valid, unrevoked token
gets a fresh one signed from the key ring, with a bounded lifetime; anything doubtful is refused
with the normal codes (keyserver.routes.keys_degraded)."""

from __future__ import annotations

from typing import Any

import pytest

from keycore import Action, Reason, Role, SoftwareSigner, issue
from keycore.cose import load_point
from keycore.encoding import b64url_encode
from keycore.request_proof import HEADER, sign_request
from keyserver.app import CONFIG, KEYRING, LAST_KNOWN
from keyserver.degraded import DEGRADED_HEADER
from keyserver.models import KeyStatus
from tests.keyserver.flaky_store import FlakyStore
from tests.keyserver.keys_harness import REVOKE, TOKEN, VIN, Api, Clock, Person


@pytest.fixture
def api(flaky_api: Api) -> Api:
    """The keyserver on a store that fails on demand (tests/keyserver/conftest.py)."""
    return flaky_api


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


async def _driver_with_key(api: Api, owner: Person) -> tuple[Person, dict[str, Any]]:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    # a normal refresh: this process now knows the session, the device and the key
    reply = await api.call(driver, "POST", TOKEN, key_id=key["key_id"])
    assert reply.status == 200
    return driver, dict(reply.body)


async def _refresh(api: Api, who: Person, key: dict[str, Any], token: str) -> Any:
    return await api.call(who, "POST", TOKEN, {"token": token}, key_id=key["key_id"])


async def test_a_valid_token_gets_a_fresh_one_without_the_store(
    api: Api, owner: Person, flaky: FlakyStore, clock: Clock
) -> None:
    driver, key = await _driver_with_key(api, owner)
    clock.advance(3600)
    flaky.fail()
    reply = await _refresh(api, driver, key, key["token"])
    assert reply.status == 200, reply.data
    assert reply.headers[DEGRADED_HEADER] == "store_unavailable"
    fresh = reply.body
    assert fresh["token"] != key["token"]
    lifetime = api.app[CONFIG].degraded_token_lifetime_s
    assert fresh["token_expires_at"] - clock.now <= lifetime
    assert fresh["token_not_before"] == clock.now
    assert api.check(fresh["token"]) is None  # keycore's verifier takes it, as a car would
    assert api.check(fresh["token"], action=Action.MANAGE_KEYS) is Reason.NOT_ENTITLED
    assert api.check(fresh["token"], at=clock.now + lifetime) is Reason.EXPIRED
    assert flaky.failures > 0


async def test_the_normal_path_takes_the_token_field_and_ignores_it(
    api: Api, owner: Person
) -> None:
    driver, key = await _driver_with_key(api, owner)
    reply = await _refresh(api, driver, key, key["token"])
    assert reply.status == 200
    assert DEGRADED_HEADER not in reply.headers


async def test_an_expired_token_is_refused(
    api: Api, owner: Person, flaky: FlakyStore, clock: Clock
) -> None:
    driver, key = await _driver_with_key(api, owner)
    expired = issue(
        signer=api.app[KEYRING].ring.active.signer, vin=VIN, holder=load_point(driver.phone.xy),
        role=Role.DRIVER, now=clock.now - 2, expires=clock.now - 1,
    )  # fmt: skip
    flaky.fail()
    reply = await _refresh(api, driver, key, b64url_encode(expired))
    assert reply.status == 403
    assert reply.code == "key_not_valid_now"


async def test_a_revoked_key_is_refused(api: Api, owner: Person, flaky: FlakyStore) -> None:
    driver, key = await _driver_with_key(api, owner)
    await api.call(owner, "GET", "/v1/vehicles/{vin}/keys", proof=False, vin=VIN)
    flaky.fail()
    revoked = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert revoked.status == 202  # journaled, and known here at once
    reply = await _refresh(api, driver, key, key["token"])
    assert reply.status == 403
    assert reply.code == "key_revoked"


async def test_a_token_revoked_by_the_last_known_list_is_refused(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver, key = await _driver_with_key(api, owner)
    old = key["token"]
    # revoked through the store; the key record here is stale (active), the list is not
    assert (await api.call(owner, "POST", REVOKE, key_id=key["key_id"])).status == 200
    assert (await api.revocation_list(owner)).status == 200  # the list is read here
    # as if the key's revocation had happened on another process: this one's record is old
    api.app[LAST_KNOWN].note_key_status(key["key_id"], KeyStatus.ACTIVE, expected=tuple(KeyStatus))
    flaky.fail()
    reply = await _refresh(api, driver, key, old)
    assert reply.status == 403
    assert reply.code == "key_revoked"


async def test_a_token_of_another_key_is_refused(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver, key = await _driver_with_key(api, owner)
    owner_key = await api.owner_key(owner)
    flaky.fail()
    reply = await _refresh(api, driver, key, owner_key["token"])
    assert reply.status == 404
    assert reply.code == "unknown_key"


async def test_a_token_not_signed_by_us_is_refused(
    api: Api, owner: Person, flaky: FlakyStore, clock: Clock
) -> None:
    driver, key = await _driver_with_key(api, owner)
    forged = issue(
        signer=SoftwareSigner.generate(), vin=VIN, holder=load_point(driver.phone.xy),
        role=Role.DRIVER, now=clock.now, expires=clock.now + 3600,
    )  # fmt: skip
    flaky.fail()
    reply = await _refresh(api, driver, key, b64url_encode(forged))
    assert reply.status == 403
    assert reply.code == "invalid_token"


async def test_a_proof_by_another_device_is_refused(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver, key = await _driver_with_key(api, owner)
    other = await api.phone(driver.account_id)
    flaky.fail()
    reply = await api.call(
        driver, "POST", TOKEN, {"token": key["token"]}, phone=other, key_id=key["key_id"]
    )
    assert reply.status == 403
    assert reply.code == "wrong_device"


async def test_a_replayed_proof_is_refused(api: Api, owner: Person, flaky: FlakyStore) -> None:
    driver, key = await _driver_with_key(api, owner)
    flaky.fail()
    path = TOKEN.format(key_id=key["key_id"])
    raw = f'{{"token": "{key["token"]}"}}'.encode()
    proof = sign_request(
        driver.phone.key, device_id=driver.phone.device_id, method="POST", path=path, body=raw,
        timestamp=api.clock.now,
    )  # fmt: skip
    headers = {
        "Authorization": f"Bearer {driver.session}", HEADER: proof,
        "Content-Type": "application/json",
    }  # fmt: skip
    first = await api.client.post(path, data=raw, headers=headers)
    second = await api.client.post(path, data=raw, headers=headers)
    assert first.status == 200
    assert second.status == 401
    assert (await second.json())["error"]["code"] == "replayed_device_proof"


async def test_an_unknown_session_or_key_is_told_to_try_later(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)  # never refreshed here: the key is not known
    api.app[LAST_KNOWN].cache.forget(("key", key["key_id"]))
    flaky.fail()
    reply = await _refresh(api, driver, key, key["token"])
    assert reply.status == 429
    assert reply.code == "temporarily_unavailable"
