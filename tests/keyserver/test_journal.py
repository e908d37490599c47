"""The local journal: durable, ordered, idempotent by operation id; and writes accepted while the
store is down, replayed in order once it is back, with the effect of applying each once."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyserver.app import CONFIG, JOURNAL, REPLAYER
from keyserver.degraded import DEGRADED_HEADER
from keyserver.errors import StoreUnavailable
from keyserver.journal import DONE, PENDING, REFUSED, Journal
from keyserver.models import KeyStatus, RevocationKind
from tests.keyserver.flaky_store import FlakyStore
from tests.keyserver.keys_harness import KEYS, REVOCATIONS, REVOKE, SUSPEND, VIN, Api, Person


@pytest.fixture
def api(flaky_api: Api) -> Api:
    """The keyserver on a store that fails on demand (tests/keyserver/conftest.py)."""
    return flaky_api


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    await api.call(person, "GET", KEYS, proof=False, vin=VIN)
    return person


# the journal file on its own


async def test_an_operation_is_kept_once_in_order_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    first = await journal.append("op-aaaaaaaa", "withdraw", VIN, {"key_ids": ["k1"]}, now=10)
    again = await journal.append("op-aaaaaaaa", "withdraw", VIN, {"key_ids": ["other"]}, now=11)
    second = await journal.append("op-bbbbbbbb", "withdraw", VIN, {"key_ids": ["k2"]}, now=12)
    assert again == first  # idempotent by operation id
    await journal.record_list(VIN, ledger_base=3, sequence=4)
    journal.close()  # a crash after the answer: the rows are on disk

    reopened = Journal.open(path)
    assert [op.op_id for op in reopened.pending()] == [first.op_id, second.op_id]
    assert [(r.ledger_base, r.sequence) for r in reopened.open_lists()] == [(3, 4)]
    await reopened.settle(first.seq, DONE, "ok")
    assert [op.op_id for op in reopened.pending()] == [second.op_id]
    settled = reopened.operation(first.op_id)
    assert settled is not None
    assert settled.state == DONE
    assert reopened.has_work()
    await reopened.settle(second.seq, REFUSED, "unknown_key")
    await reopened.settle_lists(VIN, up_to=4)
    assert not reopened.has_work()
    reopened.close()


# accepted while the store is down, replayed once it is back


async def test_writes_accepted_during_an_outage_are_replayed_in_order(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver = await api.person("driver")
    guest = await api.person("guest")
    driver_key = await api.share(owner, driver)
    guest_key = await api.share(owner, guest)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    flaky.fail()
    suspended = await api.call(owner, "POST", SUSPEND, key_id=driver_key["key_id"])
    revoked = await api.call(owner, "POST", REVOKE, key_id=driver_key["key_id"])
    holder = await api.call(
        owner, "POST", REVOCATIONS, {"device_id": guest.phone.device_id}, vin=VIN
    )
    for reply in (suspended, revoked, holder):
        assert reply.status == 202, reply.data
        assert reply.body["status"] == "accepted_pending"
        assert reply.headers[DEGRADED_HEADER] == "store_unavailable"
    journal = api.app[JOURNAL]
    assert len(journal.pending()) == 3
    assert (await flaky.inner.key(driver_key["key_id"])).status is KeyStatus.ACTIVE  # type: ignore[union-attr]

    flaky.recover()
    await api.app[REPLAYER].replay_once()
    assert journal.pending() == []
    states = [journal.operation(r.body["operation_id"]) for r in (suspended, revoked, holder)]
    assert [op.state for op in states if op is not None] == [DONE, DONE, DONE]
    assert [op.seq for op in states if op is not None] == sorted(
        op.seq for op in states if op is not None
    )
    keys = {k.key_id: k.status for k in await flaky.inner.keys_of_vehicle(VIN)}
    assert keys[driver_key["key_id"]] is KeyStatus.REVOKED  # suspended, then revoked: in order
    assert keys[guest_key["key_id"]] is KeyStatus.REVOKED
    _, entries = await flaky.inner.revocations(VIN)
    holders = {e.subject for e in entries if e.kind is RevocationKind.HOLDER}
    assert len(holders) == 2
    listed = await api.revocation_list(owner)
    state = api.car(listed.data)
    assert api.check(driver_key["token"], revocations=state) is not None
    assert api.check(guest_key["token"], revocations=state) is not None

    # replayed again (a crash before the journal recorded it done): the same effect
    for op in states:
        assert op is not None
        journal._execute("UPDATE operations SET state = ? WHERE seq = ?", (PENDING, op.seq))
    await api.app[REPLAYER].replay_once()
    keys_again = {k.key_id: k.status for k in await flaky.inner.keys_of_vehicle(VIN)}
    assert keys_again == keys
    _, entries_again = await flaky.inner.revocations(VIN)
    assert {e.subject for e in entries_again if e.kind is RevocationKind.HOLDER} == holders


async def test_a_replay_the_store_refuses_is_recorded_not_retried(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    flaky.fail()
    reply = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert reply.status == 202
    flaky.recover()
    # meanwhile (another process, say) the key was revoked for good: suspending is refused
    await flaky.inner.set_key_status(key["key_id"], KeyStatus.REVOKED, expected=tuple(KeyStatus))
    await api.app[REPLAYER].replay_once()
    operation = api.app[JOURNAL].operation(reply.body["operation_id"])
    assert operation is not None
    assert operation.state == REFUSED
    assert operation.outcome == "key_revoked"
    assert not api.app[JOURNAL].has_work()


async def test_a_replay_that_meets_the_store_down_again_resumes_later(
    api: Api, owner: Person, flaky: FlakyStore
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)
    flaky.fail()
    reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert reply.status == 202
    with pytest.raises(StoreUnavailable):
        await api.app[REPLAYER].replay_once()
    assert len(api.app[JOURNAL].pending()) == 1
    flaky.recover()
    await api.app[REPLAYER].replay_once()
    assert (await flaky.inner.key(key["key_id"])).status is KeyStatus.REVOKED  # type: ignore[union-attr]


async def test_the_journal_lives_in_the_data_directory(api: Api) -> None:
    assert api.app[CONFIG].journal_path.exists()
