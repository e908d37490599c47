"""SQLite store behaviour beyond the shared contract: durability, bad files, locks, housekeeping."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from keycore import Role
from keyserver.errors import StoreUnavailable
from keyserver.models import (
    Account,
    Invitation,
    KeyRecord,
    KeyStatus,
    RevocationEntry,
    RevocationKind,
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store.sqlite import SCHEMA_VERSION, SQLiteStore

NOW = 1_800_000_000
VIN = "5YJ3E1EA7KF000001"
ACCOUNT = Account("acc1", "user1@example.org", "scrypt$…", NOW)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "keyserver.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(db_path)
    try:
        yield opened
    finally:
        await opened.close()


def count_rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(count)


async def test_accepted_writes_survive_close_and_reopen(db_path: Path) -> None:
    key = KeyRecord(
        "key1", VIN, "acc1", "dev1", Role.OWNER, 0xFF, NOW, NOW + 60, None, KeyStatus.ACTIVE, NOW
    )
    entry = RevocationEntry(RevocationKind.HOLDER, b"\x02" * 16, NOW, NOW + 200)
    first = await SQLiteStore.open(db_path)
    await first.create_account(ACCOUNT)
    await first.put_key(key)
    assert await first.append_revocations(VIN, [entry]) == 1
    assert await first.claim_nonce("dev1", b"n1", now=NOW, expires_at=NOW + 300)
    await first.close()

    second = await SQLiteStore.open(db_path)  # opening an existing database changes nothing
    try:
        assert await second.account("acc1") == ACCOUNT
        assert await second.key("key1") == key
        assert await second.revocations(VIN) == (1, [replace(entry, sequence=1)])
        assert not await second.claim_nonce("dev1", b"n1", now=NOW + 1, expires_at=NOW + 301)
    finally:
        await second.close()

    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


@pytest.fixture
def not_a_database(db_path: Path) -> Path:
    db_path.write_bytes(b"this is not an SQLite database\n" * 64)
    return db_path


async def test_a_file_that_is_not_a_database_is_unavailable(not_a_database: Path) -> None:
    db_path = not_a_database
    with pytest.raises(StoreUnavailable) as caught:
        await SQLiteStore.open(db_path)
    assert not caught.value.may_have_succeeded
    message = str(caught.value)
    assert "\n" not in message
    assert str(db_path) in message
    assert "not a database" in message


async def test_a_path_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        await SQLiteStore.open(tmp_path)  # a directory
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        await SQLiteStore.open(tmp_path / "missing" / "keyserver.db")


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        await SQLiteStore.open(db_path)


async def test_a_version_1_database_gains_the_channel_tables(db_path: Path) -> None:
    first = await SQLiteStore.open(db_path)
    await first.create_account(ACCOUNT)
    await first.close()
    with closing(sqlite3.connect(db_path)) as conn:  # as version 1 left it
        conn.execute("DROP TABLE commands")
        conn.execute("DROP TABLE audit_events")
        conn.execute("PRAGMA user_version = 1")
    second = await SQLiteStore.open(db_path)
    try:
        assert await second.account("acc1") == ACCOUNT
        assert await second.audit_events(VIN) == []
        assert await second.pending_commands(VIN, now=NOW) == []
    finally:
        await second.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_version_2_database_gains_the_ownership_history(db_path: Path) -> None:
    first = await SQLiteStore.open(db_path)
    await first.add_vehicle(Vehicle(VIN, b"\x05" * 64, "acc1", NOW))
    await first.close()
    with closing(sqlite3.connect(db_path)) as conn:  # as version 2 left it
        conn.execute("DROP TABLE vehicle_owners")
        conn.execute("PRAGMA user_version = 2")
    second = await SQLiteStore.open(db_path)
    try:
        assert await second.ownership(VIN) == []  # owned from before the history was kept
        assert await second.set_owner(VIN, owner_id="acc2", expected="acc1", now=NOW + 1)
        assert await second.ownership(VIN) == [
            Tenure("acc1", 0, NOW + 1),
            Tenure("acc2", NOW + 1, None),
        ]
    finally:
        await second.close()


async def test_a_closed_store_refuses_calls(db_path: Path) -> None:
    closed = await SQLiteStore.open(db_path)
    await closed.close()
    await closed.close()  # closing twice is fine
    with pytest.raises(StoreUnavailable, match="is closed") as caught:
        await closed.create_account(ACCOUNT)
    assert not caught.value.may_have_succeeded


async def test_a_write_lock_held_elsewhere_fails_the_write_before_anything_is_applied(
    db_path: Path,
) -> None:
    store = await SQLiteStore.open(db_path, busy_timeout=0.01)
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="database is locked") as caught:
                await store.create_account(ACCOUNT)
            assert not caught.value.may_have_succeeded
            assert await store.account("acc1") is None  # readers are not blocked (WAL)
            other.execute("ROLLBACK")
        await store.create_account(ACCOUNT)
        assert await store.account("acc1") == ACCOUNT
    finally:
        await store.close()


async def test_two_stores_on_one_file_claim_a_nonce_once(db_path: Path) -> None:
    stores = [await SQLiteStore.open(db_path), await SQLiteStore.open(db_path)]
    try:
        entry = RevocationEntry(RevocationKind.TOKEN, b"\x09" * 16, 0, NOW + 100)
        claims = await asyncio.gather(
            *(
                stores[n % 2].claim_nonce("dev1", b"n", now=NOW, expires_at=NOW + 60)
                for n in range(20)
            )
        )
        assert claims.count(True) == 1
        entries = [replace(entry, subject=bytes([n]) * 16) for n in range(20)]
        finals = await asyncio.gather(
            *(stores[n % 2].append_revocations(VIN, [entries[n]]) for n in range(20))
        )
        assert sorted(finals) == list(range(1, 21))
    finally:
        for opened in stores:
            await opened.close()


async def test_many_coroutines_share_one_rate_limit_exactly(store: SQLiteStore) -> None:
    allowed = await asyncio.gather(
        *(store.hit("login:a", now=NOW, window=60, limit=50) for _ in range(200))
    )
    assert allowed.count(True) == 50


async def test_an_expired_nonce_can_be_claimed_again(store: SQLiteStore) -> None:
    assert await store.claim_nonce("dev1", b"n", now=NOW, expires_at=NOW + 10)
    assert not await store.claim_nonce("dev1", b"n", now=NOW + 9, expires_at=NOW + 19)
    assert await store.claim_nonce("dev1", b"n", now=NOW + 10, expires_at=NOW + 20)


async def test_expired_rows_do_not_accumulate(store: SQLiteStore, db_path: Path) -> None:
    await store.put_session(Session(b"\x01" * 32, "acc1", NOW + 10))
    await store.put_session(Session(b"\x02" * 32, "acc1", NOW + 1000))
    invitation = Invitation("inv1", VIN, "acc1", Role.GUEST, 1, NOW, NOW + 60, None, NOW + 10)
    await store.put_invitation(invitation)
    for n in range(3):
        assert await store.claim_nonce(f"dev{n}", b"n", now=NOW, expires_at=NOW + 10)
    assert await store.hit("login:a", now=NOW, window=60, limit=3)

    # any later claim or hit sweeps what has expired, whatever its scope or key
    assert await store.claim_nonce("dev9", b"m", now=NOW + 100, expires_at=NOW + 400)
    assert count_rows(db_path, "nonces") == 1
    assert count_rows(db_path, "sessions") == 1
    assert count_rows(db_path, "invitations") == 0
    assert count_rows(db_path, "rate_windows") == 0
    assert await store.session(b"\x02" * 32, now=NOW + 100) is not None
