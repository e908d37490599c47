"""The revocation ledger cannot be jammed: repeats change nothing, a withdrawal is one atomic
step, a car has at most ``MAX_VEHICLE_HOLDERS`` holders, and a refresh racing a revocation never
yields a token that outlives it (issue 12; docs/protocol.md §12.1)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from keycore import Reason
from keycore.revocation import MAX_VEHICLE_HOLDERS, read_revocation_list
from keyserver import auth
from keyserver.app import SERVICES, STORE
from keyserver.errors import StoreUnavailable
from keyserver.issuance import LEDGER_GRACE_S, MAX_TOKEN_LIFETIME, Withdrawn
from keyserver.models import KeyRecord, KeyStatus, Session
from keyserver.store.sqlite import ledger as sqlite_ledger
from tests.keyserver.keys_harness import (
    DAY,
    REVOCATIONS,
    REVOKE,
    SUSPEND,
    TOKEN,
    VIN,
    Api,
    Person,
)

REPEATS = 10_000


@pytest.fixture
def api(unlimited_api: Api) -> Api:
    return unlimited_api


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


async def lists(api: Api, owner: Person, since: int) -> list[tuple[int, int, int, Any]]:
    """The full list and the delta after ``since`` as a phone fetches them: (size, sequence,
    base, entries) of each, as the car reads them."""
    seen = []
    for after in (0, since):
        reply = await api.revocation_list(owner, since=after)
        assert reply.status == 200
        doc = read_revocation_list(reply.data, trust=api.trust(), now=api.clock.now)
        seen.append((len(reply.data), doc.sequence, doc.base, (doc.tokens, doc.holders)))
    return seen


async def test_ten_thousand_repeated_revokes_change_no_list(api: Api, owner: Person) -> None:
    guest = await api.person("guest")
    other = await api.person("other")
    await api.call(owner, "POST", REVOKE, key_id=(await api.share(owner, other))["key_id"])
    key = await api.share(owner, guest, "guest")
    first = await api.call(guest, "POST", REVOKE, key_id=key["key_id"])  # the guest's own
    assert (first.status, first.body["changed"]) == (200, True)
    before = await lists(api, owner, since=1)

    answered: list[int] = []

    async def repeat() -> None:
        reply = await api.call(guest, "POST", REVOKE, key_id=key["key_id"])
        if reply.status == 429:  # shed by admission on a loaded machine: the client's problem
            assert reply.body["error"]["code"] in {"overloaded", "deadline_exceeded"}, reply.body
            return
        assert (reply.status, reply.body["changed"]) == (200, False), reply.body
        assert reply.body["revocation_sequence"] == 2
        answered.append(reply.status)

    for start in range(0, REPEATS, 200):  # 200 in flight at a time, like a scripted client
        api.clock.advance(1)  # time moves on: a later cutoff would be a new entry
        await asyncio.gather(*(repeat() for _ in range(start, start + 200)))
    assert len(answered) >= REPEATS // 2  # most repeats went through to the store
    assert await lists(api, owner, since=1) == before
    sequence, entries = await api.store.revocations(VIN)
    assert (sequence, len(entries)) == (2, 2)
    assert before[0][0] < 300  # two holder entries, signed


async def test_a_failure_inside_the_withdrawal_leaves_nothing_half_done(
    api: Api, owner: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    record = await api.store.key(key["key_id"])
    assert record is not None

    def crash(*_: Any) -> int:  # the process dies between the status write and the entry
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(sqlite_ledger, "merge_entries", crash)
        with pytest.raises(StoreUnavailable):
            await revoke(api, [record])
    # rolled back as one: the key is still active, so a retry does the whole withdrawal
    assert (await api.store.key(key["key_id"])).status is KeyStatus.ACTIVE  # type: ignore[union-attr]
    assert await api.store.revocations(VIN) == (0, [])
    done = await revoke(api, [record])
    assert (done.sequence, done.changed) == (1, (key["key_id"],))
    # the answer was lost and the client retries: nothing more
    again = await revoke(api, [record])
    assert (again.sequence, again.changed) == (1, ())
    sequence, entries = await api.store.revocations(VIN)
    assert (sequence, len(entries)) == (1, 1)


async def test_suspend_resume_cycles_keep_one_entry_per_holder(api: Api, owner: Person) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    for _ in range(20):
        assert (await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])).status == 200
        repeat = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
        assert (repeat.status, repeat.body["changed"]) == (200, False)
        api.clock.advance(2)  # past the cutoff, or the resume would be too_soon
        resumed = await api.call(owner, "POST", "/v1/keys/{key_id}/resume", key_id=key["key_id"])
        assert (resumed.status, resumed.body["changed"]) == (200, True)
    sequence, entries = await api.store.revocations(VIN)
    assert (sequence, len(entries)) == (20, 1)  # each suspension moved the one entry on
    full = read_revocation_list(
        (await api.revocation_list(owner)).data, trust=api.trust(), now=api.clock.now
    )
    assert len(full.holders) == 1


async def test_a_car_has_at_most_max_vehicle_holders(api: Api, owner: Person) -> None:
    await api.owner_key(owner)
    people = [await api.person(f"p{n}") for n in range(MAX_VEHICLE_HOLDERS)]
    keys = [await api.share(owner, p) for p in people[: MAX_VEHICLE_HOLDERS - 1]]
    last = people[-1]
    refused = await api.accept(last, await api.invite(owner))
    assert (refused.status, refused.code) == (409, "too_many_holders")
    assert str(MAX_VEHICLE_HOLDERS) in refused.body["error"]["message"]
    # withdrawals are never refused, and a withdrawn holder still counts while listed
    for key in keys[:3]:
        assert (await api.call(owner, "POST", REVOKE, key_id=key["key_id"])).status == 200
    again = await api.accept(last, await api.invite(owner))
    assert (again.status, again.code) == (409, "too_many_holders")
    # a holder already counted may get a new key: no new place is taken
    api.clock.advance(2)
    returning = await api.accept(people[0], await api.invite(owner))
    assert returning.status == 201, returning.data
    # once the revocations have left the ledger, their places are free
    api.clock.advance(MAX_TOKEN_LIFETIME + LEDGER_GRACE_S + 10)
    token, token_hash = auth.new_session_token()  # the owner's session has ended meanwhile
    await api.store.put_session(Session(token_hash, owner.account_id, api.clock.now + DAY))
    owner = replace(owner, session=token)
    assert (await api.call(owner, "POST", REVOKE, key_id=keys[3]["key_id"])).status == 200
    other = await api.person("other")  # the withdrawal above pruned the ledger as it went
    renewed = await api.share(owner, other)
    assert renewed["key_id"]
    full = read_revocation_list(
        (await api.revocation_list(owner)).data, trust=api.trust(), now=api.clock.now
    )
    assert len(full.holders) <= MAX_VEHICLE_HOLDERS


class PausedRefresh:
    """Holds a refresh after its status read (the store call), until the test lets it go."""

    def __init__(self, api: Api) -> None:
        self.read = asyncio.Event()
        self.go = asyncio.Event()
        store = api.app[STORE]
        inner = store.refresh_context

        async def refresh_context(*args: Any, **kwargs: Any) -> Any:
            context = await inner(*args, **kwargs)
            self.read.set()
            await self.go.wait()
            return context

        self._store, self._patched = store, refresh_context

    def patch(self) -> None:
        self._store.refresh_context = self._patched  # type: ignore[method-assign]

    def unpatch(self) -> None:
        del self._store.refresh_context  # the class's own again


async def test_a_refresh_racing_a_revocation_yields_a_dead_token(
    api: Api, owner: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    paused = PausedRefresh(api)
    paused.patch()
    refresh: asyncio.Task[Any] = asyncio.create_task(
        api.call(driver, "POST", TOKEN, key_id=key["key_id"])
    )
    await paused.read.wait()  # the refresh has read the key as active
    api.clock.advance(5)
    paused.unpatch()
    revoked = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert revoked.status == 200
    api.clock.advance(5)  # the refresh signs later still
    paused.go.set()
    reply = await refresh
    assert reply.status == 200  # it had read the key as active: a token, but a dead one
    car = api.car((await api.revocation_list(owner)).data)
    assert api.check(reply.body["token"], revocations=car) is Reason.REVOKED


async def test_a_withdrawal_whose_clock_moves_on_moves_its_cutoff(
    api: Api, owner: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    store = api.app[STORE]
    inner: Callable[..., Awaitable[Any]] = store.withdraw_keys
    start = api.clock.now

    async def slow_withdraw(*args: Any, **kwargs: Any) -> Any:
        result = await inner(*args, **kwargs)
        api.clock.advance(7)  # the write took a while: refreshes may have read the old status
        return result

    monkeypatch.setattr(store, "withdraw_keys", slow_withdraw)
    record = await store.key(key["key_id"])
    assert record is not None
    done = await revoke(api, [record])
    _, entries = await store.revocations(VIN)
    assert done.sequence == 2
    assert [e.before for e in entries] == [start + 7 + 1]


async def test_refused_requests_leave_the_ledger_alone(api: Api, owner: Person) -> None:
    stranger = await api.person("stranger")
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    before = await api.state()
    for who in (stranger,):
        reply = await api.call(who, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status == 404
        reply = await api.call(who, "POST", REVOCATIONS, {"device_id": "x"}, vin=VIN)
        assert reply.status == 404
    assert await api.state() == before


async def revoke(api: Api, keys: list[KeyRecord]) -> Withdrawn:
    return await api.app[SERVICES].holders.revoke_keys(VIN, keys, now=api.clock.now)
