"""Share acceptance while the store is down (keyserver.acceptance): journaled and answered 202
accepted_pending with the key id it will create, replayed in order once the store is back; a
replay that finds the invitation unknown, used or expired, or refuses it otherwise, records the
outcome and changes nothing; the invitation taken before a failure is never lost."""

from __future__ import annotations

from typing import Any

import pytest

from keyserver.app import JOURNAL, REPLAYER
from keyserver.degraded import DEGRADED_HEADER
from keyserver.journal import DONE, PENDING, REFUSED, NotYet, Operation
from keyserver.models import KeyStatus
from tests.keyserver.flaky_store import FlakyStore
from tests.keyserver.keys_harness import (
    ACCEPT,
    KEYS,
    REVOKE,
    TOKEN,
    VIN,
    Api,
    Clock,
    Person,
    Reply,
)


@pytest.fixture
def api(flaky_api: Api) -> Api:
    """The keyserver on a store that fails on demand (tests/keyserver/conftest.py)."""
    return flaky_api


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


async def known(api: Api, name: str) -> Person:
    """Someone this process has seen (its session and devices), as a phone in use would be."""
    person = await api.person(name)
    assert (await api.call(person, "GET", "/v1/devices", proof=False)).status == 200
    return person


def pending(reply: Reply) -> str:
    """The key id a 202 accepted_pending promises."""
    assert reply.status == 202, reply.data
    assert reply.body["status"] == "accepted_pending"
    assert reply.headers[DEGRADED_HEADER] == "store_unavailable"
    assert reply.body["degraded"]["reason"] == "store_unavailable"
    return str(reply.body["key_id"])


def operation(api: Api, reply: Reply) -> Operation:
    found = api.app[JOURNAL].operation(reply.body["operation_id"])
    assert found is not None
    return found


async def live_keys(api: Api, flaky: FlakyStore) -> list[tuple[str, str, str]]:
    """(key id, device, status) of the vehicle's keys, straight from the store."""
    return sorted(
        (k.key_id, k.device_id, k.status.value) for k in await flaky.inner.keys_of_vehicle(VIN)
    )


async def test_a_share_accepted_during_an_outage_is_granted_once_the_store_is_back(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    invitation = await api.invite(owner)
    driver = await known(api, "driver")
    flaky.fail()
    reply = await api.accept(driver, invitation)
    key_id = pending(reply)
    assert operation(api, reply).state == PENDING
    assert await flaky.inner.key(key_id) is None  # nothing applied yet

    flaky.recover()
    await api.app[REPLAYER].replay_once()
    applied = operation(api, reply)
    assert (applied.state, applied.outcome) == (DONE, f"key_id={key_id}")
    key = await flaky.inner.key(key_id)
    assert key is not None
    assert (key.account_id, key.device_id, key.status) == (
        driver.account_id,
        driver.phone.device_id,
        KeyStatus.ACTIVE,
    )
    # the phone gets its token by refreshing the key it was promised; a car honours it
    refreshed = await api.call(driver, "POST", TOKEN, key_id=key_id)
    assert refreshed.status == 200, refreshed.data
    assert api.check(refreshed.body["token"]) is None
    assert (await api.accept(driver, invitation)).status == 404  # used

    # replayed again (a crash before the journal recorded it done): still one key
    before = await live_keys(api, flaky)
    api.app[JOURNAL]._execute(
        "UPDATE operations SET state = ? WHERE seq = ?", (PENDING, applied.seq)
    )
    await api.app[REPLAYER].replay_once()
    assert operation(api, reply).state == DONE
    assert await live_keys(api, flaky) == before


async def test_a_replay_records_an_unknown_used_or_expired_invitation_and_changes_nothing(
    api: Api, owner: Person, flaky: FlakyStore, clock: Clock
) -> None:
    shared = await api.invite(owner)
    short = await api.invite(owner, invitation_ttl_s=60)
    first, second, third, fourth = [await known(api, f"person{n}") for n in range(4)]
    clock.advance(61)  # the short invitation has expired
    state_before = await api.state()
    flaky.fail()
    replies = [
        await api.accept(first, shared),
        await api.accept(second, shared),  # the same invitation, a second time
        await api.accept(third, short),
        await api.accept(fourth, "no-such-invitation"),
    ]
    promised = [pending(r) for r in replies]

    flaky.recover()
    await api.app[REPLAYER].replay_once()
    outcomes = [(operation(api, r).state, operation(api, r).outcome) for r in replies]
    assert outcomes == [
        (DONE, f"key_id={promised[0]}"),
        (REFUSED, "invitation_not_found"),
        (REFUSED, "invitation_not_found"),
        (REFUSED, "invitation_not_found"),
    ]
    keys, sequence = await api.state()
    assert keys == [*state_before[0], (promised[0], "active")]  # only the first one's key
    assert sequence == state_before[1]
    assert not api.app[JOURNAL].has_work()


async def test_a_refused_acceptance_gives_the_invitation_back(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    invitation = await api.invite(owner)
    await api.call(owner, "GET", "/v1/devices", proof=False)
    flaky.fail()
    own = await api.accept(owner, invitation)  # the owner's own invitation: decided at replay
    pending(own)
    flaky.recover()
    await api.app[REPLAYER].replay_once()
    assert (operation(api, own).state, operation(api, own).outcome) == (REFUSED, "own_invitation")
    driver = await api.person("driver")
    assert (await api.accept(driver, invitation)).status == 201  # still usable


async def test_an_acceptance_right_after_a_withdrawal_on_its_device_waits_for_the_cutoff(
    api: Api, owner: Person, flaky: FlakyStore, clock: Clock
) -> None:
    driver = await known(api, "driver")
    old = await api.share(owner, driver)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    invitation = await api.invite(owner)
    flaky.fail()
    assert (await api.call(owner, "POST", REVOKE, key_id=old["key_id"])).status == 202
    key_id = pending(await api.accept(driver, invitation))
    flaky.recover()
    # the revocation's cutoff is the next second: a token signed now for the device would be
    # dead on arrival, so the acceptance waits (the replay stops there and tries again)
    with pytest.raises(NotYet):
        await api.app[REPLAYER].replay_once()
    assert await flaky.inner.key(key_id) is None
    clock.advance(1)
    await api.app[REPLAYER].replay_once()
    assert not api.app[JOURNAL].has_work()
    refreshed = await api.call(driver, "POST", TOKEN, key_id=key_id)
    assert refreshed.status == 200, refreshed.data
    car = api.car((await api.revocation_list(owner)).data)
    assert api.check(old["token"], revocations=car) is not None  # revoked
    assert api.check(refreshed.body["token"], revocations=car) is None  # the new key works


@pytest.mark.parametrize(
    ("failing", "landed"), [("revocations", False), ("add_key", False), ("add_key", True)]
)
async def test_the_store_failing_after_the_invitation_was_taken_loses_nothing(
    api: Api, owner: Person, flaky: FlakyStore, failing: str, landed: bool
) -> None:
    invitation = await api.invite(owner)
    driver = await known(api, "driver")
    flaky.broken = {failing}  # the store goes down in the middle of the acceptance
    flaky.land_writes = landed  # the key was written, the answer lost
    reply = await api.accept(driver, invitation)
    key_id = pending(reply)
    journaled = operation(api, reply)
    assert journaled.vin == VIN
    held: Any = journaled.payload["invitation"]
    assert held["invitation_id"] == invitation  # the journal holds what the store gave up
    assert await flaky.inner.take_invitation(invitation, now=journaled.accepted_at) is None

    flaky.recover()
    await api.app[REPLAYER].replay_once()
    assert operation(api, reply).state == DONE
    key = await flaky.inner.key(key_id)
    assert key is not None
    assert key.device_id == driver.phone.device_id
    assert [k for k in await live_keys(api, flaky) if k[1] == driver.phone.device_id] == [
        (key_id, driver.phone.device_id, "active")
    ]


async def test_an_unknown_caller_is_still_refused_while_the_store_is_down(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    invitation = await api.invite(owner)
    stranger = await api.person("stranger")  # never seen by this process
    flaky.fail()
    reply = await api.accept(stranger, invitation)
    assert reply.status == 429
    assert reply.code == "temporarily_unavailable"
    assert api.app[JOURNAL].pending() == []
    flaky.recover()
    assert (await api.call(stranger, "POST", ACCEPT, {"device_id": stranger.phone.device_id},
                           invitation_id=invitation)).status == 201  # fmt: skip
