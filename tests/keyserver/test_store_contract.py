"""The store contract: one suite, run against SQLite and against a real redis-server."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from keycore import Action, Role
from keycore.channel import AuditEvent
from keyserver.errors import Conflict
from keyserver.models import (
    AUDIT_RETENTION_S,
    Account,
    CommandRecord,
    CommandStatus,
    Device,
    Invitation,
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    NonceClaim,
    Pairing,
    PairingResult,
    RefreshContext,
    RevocationEntry,
    RevocationKind,
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store import Store

NOW = 1_800_000_000
VIN = "5YJ3E1EA7KF000001"
OTHER_VIN = "1HGCM82633A004352"


def account(n: int = 1, email: str | None = None) -> Account:
    return Account(f"acc{n}", email or f"user{n}@example.org", "scrypt$…", NOW)


def device(n: int = 1, account_id: str = "acc1") -> Device:
    return Device(f"dev{n}", account_id, bytes([n]) * 64, f"phone {n}", NOW + n)


def key(n: int = 1, *, vin: str = VIN, status: KeyStatus = KeyStatus.ACTIVE) -> KeyRecord:
    return KeyRecord(
        key_id=f"key{n}",
        vin=vin,
        account_id="acc1",
        device_id="dev1",
        role=Role.GUEST,
        entitlements=0b11,
        not_before=NOW,
        not_after=NOW + 86_400,
        schedule=b"\x82\x00\x81\x83\x01\x00\x19\x05\xa0" if n % 2 else None,
        status=status,
        created_at=NOW + n,
    )


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_accounts_are_unique_by_id_and_email(store: Store) -> None:
    await store.create_account(account(1))
    assert await store.account("acc1") == account(1)
    assert await store.account_by_email("user1@example.org") == account(1)
    assert await store.account("nobody") is None
    assert await store.account_by_email("nobody@example.org") is None
    with pytest.raises(Conflict):
        await store.create_account(account(2, email="user1@example.org"))
    with pytest.raises(Conflict):
        await store.create_account(account(1, email="other@example.org"))
    # a refused insert changed nothing
    assert await store.account("acc2") is None
    assert await store.account_by_email("other@example.org") is None


async def test_concurrent_registrations_of_one_email_admit_one(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_account(account(n, email="same@example.org")) for n in range(8)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not None)


async def test_sessions_expire_and_can_be_deleted(store: Store) -> None:
    session = Session(b"\x01" * 32, "acc1", NOW + 60)
    await store.put_session(session)
    assert await store.session(b"\x01" * 32, now=NOW) == session
    assert await store.session(b"\x01" * 32, now=NOW + 60) is None
    assert await store.session(b"\x02" * 32, now=NOW) is None
    await store.delete_session(b"\x01" * 32)
    assert await store.session(b"\x01" * 32, now=NOW) is None
    await store.delete_session(b"\x01" * 32)  # deleting twice is fine


async def test_devices(store: Store) -> None:
    await store.add_device(device(2))
    await store.add_device(device(1))
    await store.add_device(device(3, account_id="acc9"))
    assert await store.device("dev1") == device(1)
    assert await store.device("dev7") is None
    assert await store.devices_of("acc1") == [device(1), device(2)]  # oldest first
    assert await store.devices_of("acc5") == []
    with pytest.raises(Conflict):
        await store.add_device(device(1, account_id="acc9"))
    assert await store.device("dev1") == device(1)


async def test_nonces_are_single_use_until_they_expire(store: Store) -> None:
    assert await store.claim_nonce("dev1", b"n1", now=NOW, expires_at=NOW + 300)
    assert not await store.claim_nonce("dev1", b"n1", now=NOW + 1, expires_at=NOW + 301)
    assert await store.claim_nonce("dev2", b"n1", now=NOW, expires_at=NOW + 300)  # other scope
    results = await asyncio.gather(
        *(store.claim_nonce("dev1", b"n2", now=NOW, expires_at=NOW + 300) for _ in range(10))
    )
    assert sorted(results) == [False] * 9 + [True]


async def _refresh_world(store: Store) -> Session:
    """A session of acc1, its device dev1, a device dev2 of acc9, and key1 (on dev1)."""
    session = Session(b"\x01" * 32, "acc1", NOW + 60)
    await store.put_session(session)
    await store.add_device(device(1))
    await store.add_device(device(2, account_id="acc9"))
    await store.put_key(key(1))
    return session


def claim(nonce: bytes = b"n1", *, public_key: bytes = bytes([1]) * 64) -> NonceClaim:
    return NonceClaim("proof:dev1", nonce, NOW + 61, public_key)


async def test_refresh_context_reads_session_device_and_key_at_once(store: Store) -> None:
    session = await _refresh_world(store)
    token_hash = session.token_hash
    assert await store.refresh_context(
        token_hash, device_id="dev1", key_id="key1", now=NOW
    ) == RefreshContext(session, device(1), key(1), None)
    # each part is looked up on its own; what is unknown, expired or not asked for is None
    assert await store.refresh_context(
        token_hash, device_id="dev7", key_id="key9", now=NOW
    ) == RefreshContext(session, None, None, None)
    assert await store.refresh_context(
        token_hash, device_id=None, key_id=None, now=NOW
    ) == RefreshContext(session, None, None, None)
    assert await store.refresh_context(
        token_hash, device_id="dev1", key_id="key1", now=NOW + 60
    ) == RefreshContext(None, device(1), key(1), None)
    assert await store.refresh_context(
        b"\x02" * 32, device_id="dev2", key_id="key1", now=NOW
    ) == RefreshContext(None, device(2, account_id="acc9"), key(1), None)


async def test_refresh_context_spends_a_nonce_once_like_claim_nonce(store: Store) -> None:
    session = await _refresh_world(store)
    context = await store.refresh_context(
        session.token_hash, device_id="dev1", key_id="key1", now=NOW, claim=claim()
    )
    assert context == RefreshContext(session, device(1), key(1), True)
    again = await store.refresh_context(
        session.token_hash, device_id="dev1", key_id=None, now=NOW + 1, claim=claim()
    )
    assert again.nonce_fresh is False
    # one single use, whichever operation spends the nonce
    assert not await store.claim_nonce("proof:dev1", b"n1", now=NOW + 1, expires_at=NOW + 62)
    assert await store.claim_nonce("proof:dev1", b"n2", now=NOW, expires_at=NOW + 61)
    spent = await store.refresh_context(
        session.token_hash, device_id="dev1", key_id=None, now=NOW, claim=claim(b"n2")
    )
    assert spent.nonce_fresh is False
    # once the claim has expired, the nonce may be taken again
    later = await store.refresh_context(
        session.token_hash, device_id="dev1", key_id=None, now=NOW + 59, claim=claim()
    )
    assert later.nonce_fresh is False
    await store.put_session(Session(session.token_hash, "acc1", NOW + 600))
    expired = await store.refresh_context(
        session.token_hash, device_id="dev1", key_id=None, now=NOW + 61, claim=claim()
    )
    assert expired.nonce_fresh is True


@pytest.mark.parametrize(
    ("token_hash", "device_id", "public_key", "now"),
    [
        (b"\x02" * 32, "dev1", bytes([1]) * 64, NOW),  # no such session
        (b"\x01" * 32, "dev1", bytes([1]) * 64, NOW + 60),  # the session has expired
        (b"\x01" * 32, "dev7", bytes([1]) * 64, NOW),  # no such device
        (b"\x01" * 32, "dev2", bytes([2]) * 64, NOW),  # another account's device
        (b"\x01" * 32, "dev1", bytes([2]) * 64, NOW),  # the proof was checked with another key
        (b"\x01" * 32, None, bytes([1]) * 64, NOW),  # no device asked for
    ],
    ids=["no_session", "expired", "no_device", "other_account", "other_key", "no_device_id"],
)
async def test_refresh_context_spends_no_nonce_unless_session_and_device_hold(
    store: Store, token_hash: bytes, device_id: str | None, public_key: bytes, now: int
) -> None:
    await _refresh_world(store)
    context = await store.refresh_context(
        token_hash, device_id=device_id, key_id="key1", now=now, claim=claim(public_key=public_key)
    )
    assert context.nonce_fresh is None
    assert context.key == key(1)
    # the nonce is still unspent
    assert await store.claim_nonce("proof:dev1", b"n1", now=NOW, expires_at=NOW + 61)


async def test_concurrent_refresh_contexts_spend_a_nonce_once(store: Store) -> None:
    session = await _refresh_world(store)
    contexts = await asyncio.gather(
        *(
            store.refresh_context(
                session.token_hash, device_id="dev1", key_id="key1", now=NOW, claim=claim()
            )
            for _ in range(10)
        )
    )
    assert sorted(c.nonce_fresh is True for c in contexts) == [False] * 9 + [True]


async def test_rate_limit_fixed_window(store: Store) -> None:
    allowed = [await store.hit("login:a", now=NOW, window=60, limit=3) for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert await store.hit("login:b", now=NOW, window=60, limit=3)  # other key
    window_start = NOW - NOW % 60
    assert await store.hit("login:a", now=window_start + 60, window=60, limit=3)  # next window


async def test_vehicles_and_owner_compare_and_set(store: Store) -> None:
    car = Vehicle(VIN, b"\x05" * 64, None, NOW)
    await store.add_vehicle(car)
    assert await store.vehicle(VIN) == car
    assert await store.vehicle("1HGCM82633A004352") is None
    with pytest.raises(Conflict):
        await store.add_vehicle(Vehicle(VIN, b"\x06" * 64, None, NOW))
    assert await store.set_owner(VIN, owner_id="acc1", expected=None, now=NOW)
    assert not await store.set_owner(VIN, owner_id="acc2", expected=None, now=NOW)
    assert (await store.vehicle(VIN)) == Vehicle(VIN, b"\x05" * 64, "acc1", NOW)
    assert await store.set_owner(VIN, owner_id="acc2", expected="acc1", now=NOW)  # transfer
    assert not await store.set_owner("1HGCM82633A004352", owner_id="acc1", expected=None, now=NOW)


async def test_each_change_of_owner_closes_one_tenure_and_opens_the_next(store: Store) -> None:
    await store.add_vehicle(Vehicle(VIN, b"\x05" * 64, None, NOW))
    assert await store.ownership(VIN) == []
    assert await store.set_owner(VIN, owner_id="acc1", expected=None, now=NOW + 10)
    # the first owner's tenure starts at 0: before it, nobody held a key to the car
    assert await store.ownership(VIN) == [Tenure("acc1", 0, None)]
    assert not await store.set_owner(VIN, owner_id="acc3", expected="acc2", now=NOW + 15)
    assert await store.set_owner(VIN, owner_id="acc2", expected="acc1", now=NOW + 20)
    assert await store.set_owner(VIN, owner_id="acc1", expected="acc2", now=NOW + 30)  # bought back
    assert await store.ownership(VIN) == [
        Tenure("acc1", 0, NOW + 20),
        Tenure("acc2", NOW + 20, NOW + 30),
        Tenure("acc1", NOW + 30, None),
    ]
    assert await store.set_owner(VIN, owner_id=None, expected="acc1", now=NOW + 40)  # released
    assert (await store.ownership(VIN))[-1] == Tenure("acc1", NOW + 30, NOW + 40)
    # a car that has had owners never gives the next one a tenure from 0
    assert await store.set_owner(VIN, owner_id="acc4", expected=None, now=NOW + 50)
    assert (await store.ownership(VIN))[-1] == Tenure("acc4", NOW + 50, None)


async def test_tenures_past_the_audit_retention_are_dropped_but_never_the_latest(
    store: Store,
) -> None:
    await store.add_vehicle(Vehicle(VIN, b"\x05" * 64, None, NOW))
    assert await store.set_owner(VIN, owner_id="acc1", expected=None, now=NOW)
    assert await store.set_owner(VIN, owner_id="acc2", expected="acc1", now=NOW + 10)
    later = NOW + 10 + AUDIT_RETENTION_S
    assert await store.set_owner(VIN, owner_id=None, expected="acc2", now=later)
    assert await store.ownership(VIN) == [
        Tenure("acc1", 0, NOW + 10),
        Tenure("acc2", NOW + 10, later),
    ]
    much_later = later + AUDIT_RETENTION_S + 1
    assert await store.set_owner(VIN, owner_id="acc3", expected=None, now=much_later)
    assert await store.ownership(VIN) == [Tenure("acc3", much_later, None)]
    assert await store.set_owner(VIN, owner_id=None, expected="acc3", now=much_later * 2)
    assert await store.ownership(VIN) == [Tenure("acc3", much_later, much_later * 2)]


async def test_an_owner_from_before_the_history_gets_a_tenure_from_0_when_it_ends(
    store: Store,
) -> None:
    await store.add_vehicle(Vehicle(VIN, b"\x05" * 64, "legacy", NOW))  # owned, no history
    assert await store.set_owner(VIN, owner_id="acc2", expected="legacy", now=NOW + 10)
    assert await store.ownership(VIN) == [
        Tenure("legacy", 0, NOW + 10),
        Tenure("acc2", NOW + 10, None),
    ]


async def test_concurrent_transfers_record_one_tenure(store: Store) -> None:
    await store.add_vehicle(Vehicle(VIN, b"\x05" * 64, None, NOW))
    assert await store.set_owner(VIN, owner_id="acc1", expected=None, now=NOW)
    moves = await asyncio.gather(
        *(store.set_owner(VIN, owner_id=f"to{i}", expected="acc1", now=NOW + 1) for i in range(8))
    )
    (winner,) = [f"to{i}" for i, moved in enumerate(moves) if moved]
    assert await store.ownership(VIN) == [Tenure("acc1", 0, NOW + 1), Tenure(winner, NOW + 1, None)]


async def test_pairing_attempts(store: Store) -> None:
    assert await store.try_pairing(VIN, b"h", now=NOW) is PairingResult.NONE
    await store.put_pairing(Pairing(VIN, b"right", NOW + 300, 3))
    assert await store.try_pairing(VIN, b"wrong", now=NOW) is PairingResult.WRONG
    assert await store.try_pairing(VIN, b"wrong", now=NOW) is PairingResult.WRONG
    assert await store.try_pairing(VIN, b"right", now=NOW) is PairingResult.PAIRED
    assert await store.try_pairing(VIN, b"right", now=NOW) is PairingResult.NONE  # consumed

    await store.put_pairing(Pairing(VIN, b"right", NOW + 300, 2))
    assert await store.try_pairing(VIN, b"wrong", now=NOW) is PairingResult.WRONG
    assert await store.try_pairing(VIN, b"wrong", now=NOW) is PairingResult.WRONG
    # attempts are spent: even the right code no longer pairs
    assert await store.try_pairing(VIN, b"right", now=NOW) is PairingResult.EXHAUSTED

    await store.put_pairing(Pairing(VIN, b"right", NOW + 300, 3))  # a new code replaces it
    assert await store.try_pairing(VIN, b"right", now=NOW + 300) is PairingResult.EXPIRED


async def test_concurrent_pairing_with_the_right_code_pairs_once(store: Store) -> None:
    await store.put_pairing(Pairing(VIN, b"right", NOW + 300, 5))
    results = await asyncio.gather(*(store.try_pairing(VIN, b"right", now=NOW) for _ in range(10)))
    assert results.count(PairingResult.PAIRED) == 1


async def test_keys(store: Store) -> None:
    await store.put_key(key(2))
    await store.put_key(key(1))
    await store.put_key(key(3, vin="1HGCM82633A004352"))
    assert await store.key("key1") == key(1)
    assert await store.key("key9") is None
    assert await store.keys_of_vehicle(VIN) == [key(1), key(2)]  # oldest first

    assert await store.set_key_status("key1", KeyStatus.SUSPENDED, expected=[KeyStatus.ACTIVE])
    assert not await store.set_key_status("key1", KeyStatus.SUSPENDED, expected=[KeyStatus.ACTIVE])
    assert (await store.key("key1")) == key(1, status=KeyStatus.SUSPENDED)
    assert await store.set_key_status(
        "key1", KeyStatus.REVOKED, expected=[KeyStatus.ACTIVE, KeyStatus.SUSPENDED]
    )
    assert not await store.set_key_status("key9", KeyStatus.REVOKED, expected=[KeyStatus.ACTIVE])
    # put_key replaces
    await store.put_key(key(2, status=KeyStatus.SUSPENDED))
    assert (await store.key("key2")) == key(2, status=KeyStatus.SUSPENDED)
    assert len(await store.keys_of_vehicle(VIN)) == 2


async def test_invitations_are_taken_once(store: Store) -> None:
    invitation = Invitation(
        "inv1", VIN, "acc1", Role.DRIVER, 0b111, NOW, NOW + 3600, None, NOW + 60
    )
    await store.put_invitation(invitation)
    results = await asyncio.gather(*(store.take_invitation("inv1", now=NOW) for _ in range(6)))
    assert [r for r in results if r is not None] == [invitation]
    assert await store.take_invitation("inv1", now=NOW) is None

    await store.put_invitation(invitation)
    assert await store.take_invitation("inv1", now=NOW + 60) is None  # expired
    assert await store.take_invitation("nope", now=NOW) is None


async def test_revocation_ledger(store: Store) -> None:
    assert await store.revocations(VIN) == (0, [])
    assert await store.append_revocations(VIN, []) == 0
    t1 = RevocationEntry(RevocationKind.TOKEN, b"\x01" * 16, 0, NOW + 100)
    h1 = RevocationEntry(RevocationKind.HOLDER, b"\x02" * 16, NOW, NOW + 200)
    t2 = RevocationEntry(RevocationKind.TOKEN, b"\x03" * 16, 0, NOW + 300)
    assert await store.append_revocations(VIN, [t1, h1]) == 2
    assert await store.append_revocations(VIN, [t2]) == 3
    numbered = [
        RevocationEntry(t1.kind, t1.subject, t1.before, t1.until, 1),
        RevocationEntry(h1.kind, h1.subject, h1.before, h1.until, 2),
        RevocationEntry(t2.kind, t2.subject, t2.before, t2.until, 3),
    ]
    assert await store.revocations(VIN) == (3, numbered)
    assert await store.revocations(VIN, since=2) == (3, numbered[2:])
    assert await store.revocations(VIN, since=3) == (3, [])
    assert await store.revocations("1HGCM82633A004352") == (0, [])

    assert await store.prune_revocations(VIN, before=NOW + 150) == 1
    assert await store.revocations(VIN) == (3, numbered[1:])  # the sequence never goes back


async def test_concurrent_appends_get_distinct_sequences(store: Store) -> None:
    entries = [
        RevocationEntry(RevocationKind.TOKEN, bytes([n]) * 16, 0, NOW + 100) for n in range(10)
    ]
    finals = await asyncio.gather(*(store.append_revocations(VIN, [e]) for e in entries))
    assert sorted(finals) == list(range(1, 11))
    sequence, stored = await store.revocations(VIN)
    assert sequence == 10
    assert [e.sequence for e in stored] == list(range(1, 11))


async def test_ledger_keeps_one_entry_per_subject(store: Store) -> None:
    holder = b"\x07:" * 8  # a subject may hold any byte, the separator of Redis's text included
    first = RevocationEntry(RevocationKind.HOLDER, holder, NOW, NOW + 200)
    assert await store.append_revocations(VIN, [first]) == 1
    # covered already (the same, or weaker on both counts): nothing changes, not the sequence
    assert await store.append_revocations(VIN, [first]) == 1
    weaker = RevocationEntry(RevocationKind.HOLDER, holder, NOW - 5, NOW + 100)
    assert await store.append_revocations(VIN, [weaker]) == 1
    assert await store.revocations(VIN) == (1, [RevocationEntry(*_fields(first), 1)])
    # later on one count: merged (never weaker on the other) and renumbered
    later = RevocationEntry(RevocationKind.HOLDER, holder, NOW + 10, NOW + 150)
    other = RevocationEntry(RevocationKind.TOKEN, holder, 0, NOW + 50)  # another kind
    assert await store.append_revocations(VIN, [later, other]) == 3
    merged = RevocationEntry(RevocationKind.HOLDER, holder, NOW + 10, NOW + 200, 2)
    assert await store.revocations(VIN) == (3, [merged, RevocationEntry(*_fields(other), 3)])
    assert await store.revocations(VIN, since=1) == (
        3,
        [merged, RevocationEntry(*_fields(other), 3)],
    )
    # pruning forgets the subject: a new entry for it is a new line
    assert await store.prune_revocations(VIN, before=NOW + 300) == 2
    assert await store.append_revocations(VIN, [first]) == 4
    assert await store.revocations(VIN) == (4, [RevocationEntry(*_fields(first), 4)])


def _fields(entry: RevocationEntry) -> tuple[RevocationKind, bytes, int, int]:
    return entry.kind, entry.subject, entry.before, entry.until


async def test_renumber_moves_entries_past_a_sequence(store: Store) -> None:
    entries = [
        RevocationEntry(RevocationKind.HOLDER, bytes([n]) * 16, NOW, NOW + n) for n in (1, 2, 3)
    ]
    assert await store.append_revocations(VIN, entries) == 3
    assert await store.renumber_revocations(VIN, since=1, above=10) == 12
    sequence, stored = await store.revocations(VIN)
    assert sequence == 12
    assert [(e.subject[0], e.sequence) for e in stored] == [(1, 1), (2, 11), (3, 12)]
    # nothing after ``since``: only the sequence moves
    assert await store.renumber_revocations(VIN, since=12, above=20) == 20
    assert await store.revocations(VIN, since=12) == (20, [])
    assert await store.renumber_revocations(VIN, since=20, above=5) == 20  # never back
    # renumbered entries still merge as one per subject
    assert await store.append_revocations(VIN, [entries[1]]) == 20


async def test_withdraw_keys_changes_status_and_ledger_together(store: Store) -> None:
    active, suspended = key(1), key(2, status=KeyStatus.SUSPENDED)
    revoked = key(3, status=KeyStatus.REVOKED)
    elsewhere = key(4, vin=OTHER_VIN)
    for k in (active, suspended, revoked, elsewhere):
        await store.put_key(k)
    withdrawals = [
        KeyWithdrawal("key1", "dev1", b"\x01" * 16),
        KeyWithdrawal("key2", "dev1", None),  # no holder: the status changes, no entry
        KeyWithdrawal("key3", "dev1", b"\x03" * 16),  # revoked already: nothing at all
        KeyWithdrawal("key4", "dev1", b"\x04" * 16),  # another vehicle's key: nothing
        KeyWithdrawal("nokey", "dev1", b"\x05" * 16),
    ]
    sequence, changed = await store.withdraw_keys(
        VIN, withdrawals, KeyStatus.REVOKED, expected=tuple(KeyStatus), before=NOW, until=NOW + 9
    )
    assert (sequence, sorted(changed)) == (1, ["key1", "key2"])
    assert [(await store.key(f"key{n}")).status for n in (1, 2, 3, 4)] == [  # type: ignore[union-attr]
        KeyStatus.REVOKED,
        KeyStatus.REVOKED,
        KeyStatus.REVOKED,
        KeyStatus.ACTIVE,
    ]
    assert await store.revocations(VIN) == (
        1,
        [RevocationEntry(RevocationKind.HOLDER, b"\x01" * 16, NOW, NOW + 9, 1)],
    )
    # the same again: no change, no entry, no sequence
    again = await store.withdraw_keys(
        VIN,
        withdrawals,
        KeyStatus.REVOKED,
        expected=tuple(KeyStatus),
        before=NOW + 5,
        until=NOW + 20,
    )
    assert again == (1, [])
    assert (await store.revocations(VIN))[0] == 1
    # a suspension takes active keys only
    await store.put_key(key(5))
    sequence, changed = await store.withdraw_keys(
        VIN,
        [KeyWithdrawal("key5", "dev1", b"\x01" * 16), KeyWithdrawal("key1", "dev1", b"\x01" * 16)],
        KeyStatus.SUSPENDED, expected=(KeyStatus.ACTIVE,), before=NOW + 5, until=NOW + 9,
    )  # fmt: skip
    assert (sequence, changed) == (2, ["key5"])
    assert await store.revocations(VIN) == (
        2,
        [RevocationEntry(RevocationKind.HOLDER, b"\x01" * 16, NOW + 5, NOW + 9, 2)],
    )


async def test_concurrent_withdrawals_of_one_key_change_it_once(store: Store) -> None:
    await store.put_key(key(1))
    results = await asyncio.gather(
        *(
            store.withdraw_keys(
                VIN,
                [KeyWithdrawal("key1", "dev1", b"\x01" * 16)],
                KeyStatus.REVOKED,
                expected=tuple(KeyStatus),
                before=NOW + n,
                until=NOW + 100,
            )
            for n in range(8)
        )
    )
    assert sum(len(changed) for _, changed in results) == 1
    sequence, entries = await store.revocations(VIN)
    assert (sequence, len(entries)) == (1, 1)


def device_key(n: int, device: int, **changes: object) -> KeyRecord:
    return replace(key(n), device_id=f"dev{device}", **changes)  # type: ignore[arg-type]


async def test_add_key_counts_claims_and_ledger_holders(store: Store) -> None:
    async def add(n: int, device: int, *, now: int = NOW, until: int = NOW + 100) -> KeyAdded:
        return await store.add_key(
            device_key(n, device), holder=bytes([device]) * 16, counted_until=until, limit=3,
            now=now,
        )  # fmt: skip

    assert await add(1, 1) is KeyAdded.ADDED
    assert await store.key("key1") == device_key(1, 1)
    assert await add(2, 2) is KeyAdded.ADDED
    # one device, one live key per vehicle: a second is refused and nothing is stored
    assert await add(3, 1) is KeyAdded.DEVICE_HAS_KEY
    assert await store.key("key3") is None
    # a holder known only from the ledger counts too
    await store.append_revocations(
        VIN, [RevocationEntry(RevocationKind.HOLDER, bytes([9]) * 16, NOW, NOW + 50)]
    )
    assert await add(4, 4) is KeyAdded.TOO_MANY_HOLDERS  # 1, 2 and 9
    assert await store.key("key4") is None
    assert await add(5, 9) is KeyAdded.ADDED  # in the ledger: one of the three already
    # a revocation ends the claim, and the ledger entry counts the holder from then on
    await store.withdraw_keys(
        VIN, [KeyWithdrawal("key1", "dev1", bytes([1]) * 16)], KeyStatus.REVOKED,
        expected=tuple(KeyStatus), before=NOW, until=NOW + 60,
    )  # fmt: skip
    assert await add(6, 6) is KeyAdded.TOO_MANY_HOLDERS  # 1 (ledger), 2 and 9
    assert await add(7, 1) is KeyAdded.ADDED  # the revoked device may hold a key again
    # claims end with their time and ledger entries when pruned
    await store.prune_revocations(VIN, before=NOW + 100)
    assert await add(8, 8, now=NOW + 99) is KeyAdded.TOO_MANY_HOLDERS
    assert await add(8, 8, now=NOW + 100, until=NOW + 200) is KeyAdded.ADDED
    # another vehicle counts its own
    other = replace(device_key(10, 10), vin=OTHER_VIN)
    added = await store.add_key(
        other, holder=bytes([10]) * 16, counted_until=NOW + 9, limit=1, now=NOW
    )
    assert added is KeyAdded.ADDED


async def test_a_revocation_keeps_the_claim_of_a_device_with_another_live_key(
    store: Store,
) -> None:
    added = await store.add_key(
        device_key(2, 1), holder=b"\x01" * 16, counted_until=NOW + 100, limit=1, now=NOW
    )
    assert added is KeyAdded.ADDED
    await store.put_key(device_key(1, 1))  # a second live key, as from before the rule
    await store.withdraw_keys(
        VIN, [KeyWithdrawal("key1", "dev1", b"\x01" * 16)], KeyStatus.REVOKED,
        expected=tuple(KeyStatus), before=NOW, until=NOW + 10,
    )  # fmt: skip
    await store.prune_revocations(VIN, before=NOW + 50)  # the entry is gone, key2 still live
    added = await store.add_key(
        device_key(3, 3), holder=b"\x03" * 16, counted_until=NOW + 100, limit=1, now=NOW + 50
    )
    assert added is KeyAdded.TOO_MANY_HOLDERS  # device 1 is still counted


async def test_concurrent_adds_respect_the_limit_and_one_key_per_device(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.add_key(
                device_key(n, n),
                holder=bytes([n]) * 16,
                counted_until=NOW + 9,
                limit=4,
                now=NOW,
            )
            for n in range(12)
        )
    )
    assert results.count(KeyAdded.ADDED) == 4
    same_device = await asyncio.gather(
        *(
            store.add_key(
                device_key(n, 1),
                holder=b"\x01" * 16,
                counted_until=NOW + 9,
                limit=40,
                now=NOW,
            )
            for n in range(20, 26)
        )
    )
    assert same_device.count(KeyAdded.ADDED) <= 1
    live = [k for k in await store.keys_of_vehicle(VIN) if k.device_id == "dev1"]
    assert len(live) <= 1


def command(
    n: int = 1,
    *,
    key: str | None = None,
    account_id: str = "acc1",
    vin: str = VIN,
    issued_at: int = NOW,
    lifetime: int = 60,
) -> CommandRecord:
    return CommandRecord(
        command_id=f"command-{n:04d}",
        vin=vin,
        account_id=account_id,
        idempotency_key=key or f"idem-{n}",
        action=Action.UNLOCK if n % 2 else Action.CLIMATE,
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        status=CommandStatus.QUEUED,
        detail="",
        updated_at=issued_at,
        document=bytes([n % 256]) * 40 + b"\x00",
    )


async def test_commands_are_unique_per_account_and_idempotency_key(store: Store) -> None:
    first = command(1, key="same-key")
    assert await store.put_command(first) == (first, True)
    assert await store.command(first.command_id) == first
    assert await store.command("command-9999") is None
    # the same key gives back the stored command, whatever the new one says
    again = command(2, key="same-key")
    assert await store.put_command(again) == (first, False)
    assert await store.command(again.command_id) is None
    # another account may use the same key
    other = command(3, key="same-key", account_id="acc2")
    assert await store.put_command(other) == (other, True)
    with pytest.raises(Conflict):  # a command id is never reused
        await store.put_command(command(1, key="fresh-key"))


async def test_concurrent_puts_with_one_key_store_one_command(store: Store) -> None:
    results = await asyncio.gather(*(store.put_command(command(n, key="k")) for n in range(1, 9)))
    winners = [stored for stored, created in results if created]
    assert len(winners) == 1
    assert all(stored == winners[0] for stored, _ in results)


async def test_command_status_is_compare_and_set(store: Store) -> None:
    await store.put_command(command(1))
    cid = command(1).command_id
    queued = [CommandStatus.QUEUED]
    assert await store.set_command_status(
        cid, CommandStatus.DELIVERED, vin=VIN, expected=queued, detail="", now=NOW + 1
    )
    assert not await store.set_command_status(  # no longer queued
        cid, CommandStatus.DELIVERED, vin=VIN, expected=queued, detail="", now=NOW + 2
    )
    assert not await store.set_command_status(  # another vehicle's command is not this one's
        cid, CommandStatus.EXECUTED, vin=OTHER_VIN, expected=[CommandStatus.DELIVERED],
        detail="", now=NOW + 2,
    )  # fmt: skip
    assert not await store.set_command_status(
        "command-9999", CommandStatus.EXECUTED, vin=VIN, expected=list(CommandStatus),
        detail="", now=NOW + 2,
    )  # fmt: skip
    assert await store.set_command_status(
        cid, CommandStatus.FAILED, vin=VIN,
        expected=[CommandStatus.QUEUED, CommandStatus.DELIVERED], detail="refused", now=NOW + 3,
    )  # fmt: skip
    stored = await store.command(cid)
    assert stored is not None
    assert (stored.status, stored.detail, stored.updated_at) == (
        CommandStatus.FAILED,
        "refused",
        NOW + 3,
    )
    assert stored.document == command(1).document


async def test_pending_commands_are_queued_or_delivered_and_unexpired(store: Store) -> None:
    early = command(1, issued_at=NOW, lifetime=30)
    later = command(2, issued_at=NOW + 10, lifetime=60)
    done = command(3, issued_at=NOW + 5)
    elsewhere = command(4, vin=OTHER_VIN)
    for c in (later, early, done, elsewhere):
        await store.put_command(c)
    await store.set_command_status(
        done.command_id, CommandStatus.EXECUTED, vin=VIN,
        expected=[CommandStatus.QUEUED], detail="", now=NOW + 6,
    )  # fmt: skip
    await store.set_command_status(
        later.command_id, CommandStatus.DELIVERED, vin=VIN,
        expected=[CommandStatus.QUEUED], detail="", now=NOW + 11,
    )  # fmt: skip
    pending = await store.pending_commands(VIN, now=NOW + 20)
    assert [c.command_id for c in pending] == [early.command_id, later.command_id]
    assert pending[1].status is CommandStatus.DELIVERED
    # at its expires_at a command is no longer pending
    assert [c.command_id for c in await store.pending_commands(VIN, now=NOW + 30)] == [
        later.command_id
    ]
    assert await store.pending_commands(VIN, now=NOW + 70) == []
    assert await store.pending_commands("1FTFW1ET5DFC10312", now=NOW) == []


async def test_audit_batches_store_each_event_once(store: Store) -> None:
    first = [AuditEvent(1, '{"kind":"decision"}'), AuditEvent(2, '{"kind":"command"}')]
    assert await store.add_audit_batch(VIN, "1-2", first, now=NOW) == 2
    assert await store.add_audit_batch(VIN, "1-2", first, now=NOW + 1) == 0  # the same batch
    # a later batch that overlaps (its ack was lost, new events came) adds only the new ones
    overlap = [first[1], AuditEvent(3, '{"kind":"revocations"}')]
    assert await store.add_audit_batch(VIN, "2-3", overlap, now=NOW + 2) == 1
    assert await store.add_audit_batch(OTHER_VIN, "1-1", first[:1], now=NOW) == 1
    assert await store.audit_events(VIN) == [*first, overlap[1]]
    assert await store.audit_events(OTHER_VIN) == first[:1]
    assert await store.audit_events("1FTFW1ET5DFC10312") == []


async def test_concurrent_audit_batches_store_each_event_once(store: Store) -> None:
    events = [AuditEvent(n, f'{{"n":{n}}}') for n in range(1, 11)]
    added = await asyncio.gather(
        *(store.add_audit_batch(VIN, "1-10", events, now=NOW) for _ in range(6))
    )
    assert sum(added) == 10
    assert await store.audit_events(VIN) == events
