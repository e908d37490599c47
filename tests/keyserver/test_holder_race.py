"""One device, one live key per vehicle, even under concurrent requests (review of issue 12).

``keyserver.issuance.Holders.create_key`` checks "this device holds no live key" on the vehicle's
keys read before the holder claim and the insert; two acceptances for one device that both read
the keys before either stores its key both pass. The holder bound relies on the rule: revoking one
of the two keys ends the holder's claim (``Store.withdraw_keys``) while the other stays live, so
once the revocation has left the ledger the phone holds a key and is counted nowhere.

The interleaving is forced, not hoped for: each acceptance waits at ``add_key`` until the
other has got there too (or has finished); ``Store.add_key`` is the one atomic step that checks
the device, claims the holder and stores the key.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from keycore.revocation import MAX_VEHICLE_HOLDERS
from keyserver import auth
from keyserver.app import STORE
from keyserver.issuance import LEDGER_GRACE_S, MAX_TOKEN_LIFETIME
from keyserver.models import KeyStatus, Session
from tests.keyserver.keys_harness import (
    DAY,
    REVOKE,
    VIN,
    Api,
    Person,
    Reply,
)


@pytest.fixture
def api(unlimited_api: Api) -> Api:
    return unlimited_api


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


async def signed_in_again(api: Api, person: Person) -> Person:
    """``person`` with a new session (the harness's last 30 days)."""
    token, token_hash = auth.new_session_token()
    await api.store.put_session(Session(token_hash, person.account_id, api.clock.now + DAY))
    return replace(person, session=token)


async def accept_together(
    api: Api, who: Person, invitations: list[str], monkeypatch: pytest.MonkeyPatch
) -> list[Reply]:
    """``who`` accepts ``invitations`` for one phone at once, both past the key check before
    either claims the holder."""
    store = api.app[STORE]
    claim = store.add_key
    arrived = 0
    together = asyncio.Event()

    async def claim_together(*args: Any, **kwargs: Any) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == len(invitations):
            together.set()
        await together.wait()
        return await claim(*args, **kwargs)

    async def accept(invitation_id: str) -> Reply:
        try:
            return await api.accept(who, invitation_id)
        finally:
            together.set()  # the other one need not wait for a request that is over

    with monkeypatch.context() as patch:
        patch.setattr(store, "add_key", claim_together, raising=False)
        return list(await asyncio.gather(*(accept(i) for i in invitations)))


async def test_two_acceptances_at_once_leave_one_device_one_live_key(
    api: Api, owner: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = await api.person("guest")
    invitations = [await api.invite(owner), await api.invite(owner)]
    replies = await accept_together(api, guest, invitations, monkeypatch)
    assert sorted((r.status, r.code) for r in replies) == [(201, None), (409, "device_has_key")]
    live = [
        k
        for k in await api.store.keys_of_vehicle(VIN)
        if k.device_id == guest.phone.device_id
        and k.status in (KeyStatus.ACTIVE, KeyStatus.SUSPENDED)
    ]
    assert len(live) == 1


async def test_a_phone_with_two_keys_cannot_escape_the_holder_bound(
    api: Api, owner: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consequence: a phone that got two keys revokes one, waits out the ledger's retention,
    and is then counted nowhere while its other key lives; the car ends up with more holders
    than ``MAX_VEHICLE_HOLDERS`` and, once they are revoked, a longer list than the bound."""
    guest, other = await api.person("guest"), await api.person("other")
    other_key = await api.share(owner, other)
    invitations = [await api.invite(owner), await api.invite(owner)]
    keys = [r.body["key_id"] for r in await accept_together(api, guest, invitations, monkeypatch)
            if r.status == 201]  # fmt: skip
    # the guest revokes one of its keys (a holder may revoke its own) and waits a month
    assert (await api.call(guest, "POST", REVOKE, key_id=keys[0])).status == 200
    api.clock.advance(MAX_TOKEN_LIFETIME + LEDGER_GRACE_S + 2 * DAY)
    owner = await signed_in_again(api, owner)
    assert (await api.call(owner, "POST", REVOKE, key_id=other_key["key_id"])).status == 200
    people = [await api.person(f"p{n}") for n in range(MAX_VEHICLE_HOLDERS)]
    shared = []
    for person in people:
        reply = await api.accept(person, await api.invite(owner))
        if reply.status != 201:
            assert reply.code == "too_many_holders"
            break
        shared.append(reply.body["key_id"])
    for key_id in [*keys, *shared]:
        await api.call(owner, "POST", REVOKE, key_id=key_id)
    _, entries = await api.store.revocations(VIN)
    assert len({e.subject for e in entries}) <= MAX_VEHICLE_HOLDERS
