"""Token refresh on its hot path: with the device's key already known, the proof is checked before
the store is asked and one store operation (``refresh_context``) reads the session, device and key
and spends the nonce. Every request here is answered exactly as on the first path (the device not
yet known: the nonce spent in a second operation), and a refused request spends no nonce."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.request_proof import HEADER, sign_request
from keyserver.app import DEVICE_KEYS, METRICS, create_app
from keyserver.config import build
from keyserver.models import Device
from tests.keyserver.keys_harness import SUSPEND, TOKEN, Api, Clock, Person


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path)}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def people(api: Api) -> tuple[Person, Person, str]:
    """An owner, and a driver holding a key on the owner's car: (owner, driver, key id)."""
    owner = await api.person("owner")
    await api.vehicle(owner)
    driver = await api.person("driver")
    return owner, driver, (await api.share(owner, driver))["key_id"]


def store_calls(api: Api, operation: str) -> float:
    value = api.app[METRICS].registry.get_sample_value(
        "keyserver_store_seconds_count", {"operation": operation}
    )
    return value or 0.0


def proof(api: Api, who: Person, key_id: str, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "device_id": who.phone.device_id,
        "method": "POST",
        "path": TOKEN.format(key_id=key_id),
        "body": b"",
        "timestamp": api.clock.now,
        "nonce": secrets.token_bytes(16),
    }
    signer = overrides.pop("signer", who.phone.key)
    args.update(overrides)
    return sign_request(signer, **args)


async def send(
    api: Api, key_id: str, *, session: str, header: str | None, body: bytes | None = None
) -> tuple[int, str | None]:
    headers = {"Authorization": f"Bearer {session}"}
    if header is not None:
        headers[HEADER] = header
    if body is not None:
        headers["Content-Type"] = "application/json"
    response = await api.client.post(TOKEN.format(key_id=key_id), data=body, headers=headers)
    answer = await response.json()
    return response.status, answer["error"]["code"] if response.status >= 400 else None


async def test_a_known_device_refreshes_in_one_store_operation(
    api: Api, people: tuple[Person, Person, str]
) -> None:
    _, who, key_id = people
    before = store_calls(api, "refresh_context"), store_calls(api, "claim_nonce")
    first = await api.call(who, "POST", TOKEN, key_id=key_id)  # the device is new here
    assert first.status == 200
    assert store_calls(api, "refresh_context") == before[0] + 1
    assert store_calls(api, "claim_nonce") == before[1] + 1
    second = await api.call(who, "POST", TOKEN, key_id=key_id)  # and now known
    assert second.status == 200
    assert store_calls(api, "refresh_context") == before[0] + 2
    assert store_calls(api, "claim_nonce") == before[1] + 1
    assert api.check(second.body["token"]) is None


async def test_the_store_confirms_the_key_the_proof_was_checked_with(
    api: Api, people: tuple[Person, Person, str]
) -> None:
    _, who, key_id = people
    assert (await api.call(who, "POST", TOKEN, key_id=key_id)).status == 200
    # Say the key remembered for the device were another one (it cannot be: a device id is
    # derived from its key), here an impostor's: its proofs must still be refused.
    impostor = SoftwareSigner.generate()
    impostor_xy = point_bytes(impostor.public_key)
    api.app[DEVICE_KEYS].remember(Device(who.phone.device_id, who.account_id, impostor_xy, "", 0))
    nonce = secrets.token_bytes(16)
    forged = proof(api, who, key_id, signer=impostor, nonce=nonce)
    assert await send(api, key_id, session=who.session, header=forged) == (401, "bad_device_proof")
    # nothing spent; the phone's own proof with that nonce works, checked with the stored key
    header = proof(api, who, key_id, nonce=nonce)
    assert await send(api, key_id, session=who.session, header=header) == (200, None)
    assert api.app[DEVICE_KEYS].get(who.phone.device_id) == who.phone.xy


Case = Callable[[Api, Person, str, Person], Any]


async def _replayed(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id)
    assert await send(api, key_id, session=who.session, header=header) == (200, None)
    return await send(api, key_id, session=who.session, header=header), None


async def _stale(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id, timestamp=api.clock.now - 61)
    return await send(api, key_id, session=who.session, header=header), None


async def _forged(api: Api, who: Person, key_id: str, other: Person) -> Any:
    nonce = secrets.token_bytes(16)
    forged = proof(api, who, key_id, signer=SoftwareSigner.generate(), nonce=nonce)
    answer = await send(api, key_id, session=who.session, header=forged)
    return answer, proof(api, who, key_id, nonce=nonce)


async def _no_session(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id)
    return await send(api, key_id, session="not-a-session", header=header), header


async def _another_account(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id)
    return await send(api, key_id, session=other.session, header=header), header


async def _no_proof(api: Api, who: Person, key_id: str, other: Person) -> Any:
    return await send(api, key_id, session=who.session, header=None), None


async def _malformed(api: Api, who: Person, key_id: str, other: Person) -> Any:
    return await send(api, key_id, session=who.session, header="device=x"), None


async def _second_phone(api: Api, who: Person, key_id: str, other: Person) -> Any:
    second = await api.phone(who.account_id)
    header = proof(api, who, key_id, signer=second.key, device_id=second.device_id)
    answer = await send(api, key_id, session=who.session, header=header)
    return answer, None


async def _other_key(api: Api, who: Person, key_id: str, other: Person) -> Any:
    other_key = (await api.owner_key(other))["key_id"]
    header = proof(api, who, other_key)
    return await send(api, other_key, session=who.session, header=header), None


async def _suspended(api: Api, who: Person, key_id: str, other: Person) -> Any:
    assert (await api.call(other, "POST", SUSPEND, key_id=key_id)).status == 200
    return await send(api, key_id, session=who.session, header=proof(api, who, key_id)), None


async def _unknown_field(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id, body=b'{"extra": 1}')
    return await send(api, key_id, session=who.session, header=header, body=b'{"extra": 1}'), None


async def _empty_object(api: Api, who: Person, key_id: str, other: Person) -> Any:
    header = proof(api, who, key_id, body=b"{}")
    return await send(api, key_id, session=who.session, header=header, body=b"{}"), None


CASES: dict[str, tuple[Case, tuple[int, str | None]]] = {
    "replayed": (_replayed, (401, "replayed_device_proof")),
    "stale": (_stale, (401, "stale_device_proof")),
    "forged": (_forged, (401, "bad_device_proof")),
    "no_session": (_no_session, (401, "unauthorized")),
    "another_account": (_another_account, (403, "unknown_device")),
    "no_proof": (_no_proof, (401, "device_proof_required")),
    "malformed_proof": (_malformed, (400, "bad_device_proof")),
    "second_phone": (_second_phone, (403, "wrong_device")),
    "other_key": (_other_key, (404, "unknown_key")),
    "suspended": (_suspended, (403, "key_suspended")),
    "unknown_field": (_unknown_field, (400, "unknown_field")),
    "empty_object": (_empty_object, (200, None)),
}


@pytest.mark.parametrize("known", [False, True], ids=["device_new", "device_known"])
@pytest.mark.parametrize("case", list(CASES))
async def test_every_answer_is_the_same_on_both_paths(
    api: Api, people: tuple[Person, Person, str], case: str, known: bool
) -> None:
    owner, who, key_id = people
    if known:
        assert (await api.call(who, "POST", TOKEN, key_id=key_id)).status == 200
    else:
        api.app[DEVICE_KEYS].forget(who.phone.device_id)
    run, expected = CASES[case]
    answer, unspent = await run(api, who, key_id, owner)
    assert answer == expected
    if unspent is not None:  # the refused request spent no nonce: the right request works
        assert await send(api, key_id, session=who.session, header=unspent) == (200, None)
