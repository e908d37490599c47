"""The embedded SQLite store: the keyserver's zero-configuration default for a single node.

Every operation is one transaction on the store's one connection and worker thread
(``transactions``); WAL with ``synchronous=FULL``: an accepted write survives a crash. The
revocation ledger's transactions are in ``ledger``, the channel's (commands, audit) in
``channel``, the ownership history's in ``ownership``.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from keycore.channel import AuditEvent
from keyserver.models import (
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
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store.sqlite import channel, ledger, records
from keyserver.store.sqlite import ownership as owners
from keyserver.store.sqlite.records import (
    INSERT_KEY,
    SELECT_ACCOUNT,
    SELECT_DEVICE,
    SELECT_KEY,
    SELECT_LIVE_SESSION,
    values,
)
from keyserver.store.sqlite.schema import SCHEMA_VERSION, SWEEP_BATCH, SWEEPS
from keyserver.store.sqlite.transactions import Transactions

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]


def _sweep(conn: sqlite3.Connection, now: int) -> None:
    for statement in SWEEPS:
        conn.execute(statement, (now, SWEEP_BATCH))


def _claim_nonce(
    conn: sqlite3.Connection, scope: str, nonce: bytes, *, now: int, expires_at: int
) -> bool:
    _sweep(conn, now)
    # an expired claim of the same nonce that the sweep has not reached yet is taken over
    cursor = conn.execute(
        "INSERT INTO nonces (scope, nonce, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (scope, nonce) DO UPDATE SET expires_at = excluded.expires_at "
        "WHERE nonces.expires_at <= ?",
        (scope, nonce, expires_at, now),
    )
    return cursor.rowcount == 1


class SQLiteStore:
    """The keyserver ``Store`` in one SQLite file, for a single node."""

    def __init__(self, transactions: Transactions) -> None:
        self._db = transactions

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 2.0) -> SQLiteStore:
        """Open (creating if needed) the database at ``path``; ``busy_timeout`` in seconds bounds
        the wait for another process's write lock."""
        return cls(await Transactions.open(path, busy_timeout=busy_timeout))

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.one("PRAGMA user_version", ())  # reads the file header, not just the library

    # accounts and sessions

    async def create_account(self, account: Account) -> None:
        await self._db.change(
            "INSERT INTO accounts (account_id, email, password_hash, created_at) "
            "VALUES (?, ?, ?, ?)",
            values(account),
            conflict="the account id or the e-mail address is already registered",
        )

    async def account(self, account_id: str) -> Account | None:
        row = await self._db.one(SELECT_ACCOUNT + " WHERE account_id = ?", (account_id,))
        return None if row is None else Account(*row)

    async def account_by_email(self, email: str) -> Account | None:
        row = await self._db.one(SELECT_ACCOUNT + " WHERE email = ?", (email,))
        return None if row is None else Account(*row)

    async def put_session(self, session: Session) -> None:
        await self._db.change(
            "INSERT OR REPLACE INTO sessions (token_hash, account_id, expires_at) VALUES (?, ?, ?)",
            values(session),
        )

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        row = await self._db.one(SELECT_LIVE_SESSION, (token_hash, now))
        return None if row is None else Session(*row)

    async def delete_session(self, token_hash: bytes) -> None:
        await self._db.change("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    # devices

    async def add_device(self, device: Device) -> None:
        await self._db.change(
            "INSERT INTO devices (device_id, account_id, public_key, name, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            values(device),
            conflict=f"device {device.device_id} already exists",
        )

    async def device(self, device_id: str) -> Device | None:
        row = await self._db.one(SELECT_DEVICE + " WHERE device_id = ?", (device_id,))
        return None if row is None else Device(*row)

    async def devices_of(self, account_id: str) -> list[Device]:
        rows = await self._db.all(
            SELECT_DEVICE + " WHERE account_id = ? ORDER BY created_at, device_id", (account_id,)
        )
        return [Device(*row) for row in rows]

    # single use and rate limits

    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        return await self._db.run(
            lambda conn: _claim_nonce(conn, scope, nonce, now=now, expires_at=expires_at),
            write=True,
        )

    async def refresh_context(
        self,
        token_hash: bytes,
        *,
        device_id: str | None,
        key_id: str | None,
        now: int,
        claim: NonceClaim | None = None,
    ) -> RefreshContext:
        def read(conn: sqlite3.Connection) -> RefreshContext:
            row = conn.execute(SELECT_LIVE_SESSION, (token_hash, now)).fetchone()
            session = None if row is None else Session(*row)
            device = None
            if device_id is not None:
                row = conn.execute(SELECT_DEVICE + " WHERE device_id = ?", (device_id,)).fetchone()
                device = None if row is None else Device(*row)
            key = None
            if key_id is not None:
                row = conn.execute(SELECT_KEY + " WHERE key_id = ?", (key_id,)).fetchone()
                key = None if row is None else records.key(row)
            fresh = None
            if (
                claim is not None
                and session is not None
                and device is not None
                and device.account_id == session.account_id
                and device.public_key == claim.public_key
            ):
                fresh = _claim_nonce(
                    conn, claim.scope, claim.nonce, now=now, expires_at=claim.expires_at
                )
            return RefreshContext(session, device, key, fresh)

        return await self._db.run(read, write=claim is not None)

    async def hit(self, key: str, *, now: int, window: int, limit: int) -> bool:
        start = now - now % window

        def count(conn: sqlite3.Connection) -> bool:
            _sweep(conn, now)
            # fetchall: a RETURNING statement must be finished before COMMIT
            ((hits,),) = conn.execute(
                "INSERT INTO rate_windows (name, window_start, window_end, hits) "
                "VALUES (?, ?, ?, 1) ON CONFLICT (name, window_start) "
                "DO UPDATE SET hits = hits + 1 RETURNING hits",
                (key, start, start + window),
            ).fetchall()
            return bool(hits <= limit)

        return await self._db.run(count, write=True)

    # vehicles and pairing

    async def add_vehicle(self, vehicle: Vehicle) -> None:
        await self._db.change(
            "INSERT INTO vehicles (vin, public_key, owner_id, created_at) VALUES (?, ?, ?, ?)",
            values(vehicle),
            conflict=f"vehicle {vehicle.vin} is already registered",
        )

    async def vehicle(self, vin: str) -> Vehicle | None:
        row = await self._db.one(
            "SELECT vin, public_key, owner_id, created_at FROM vehicles WHERE vin = ?", (vin,)
        )
        return None if row is None else Vehicle(*row)

    async def set_owner(
        self, vin: str, *, owner_id: str | None, expected: str | None, now: int
    ) -> bool:
        return await self._db.run(
            lambda conn: owners.set_owner(conn, vin, owner_id, expected, now), write=True
        )

    async def ownership(self, vin: str) -> list[Tenure]:
        return await self._db.run(lambda conn: owners.ownership(conn, vin), write=False)

    async def put_pairing(self, pairing: Pairing) -> None:
        await self._db.change(
            "INSERT OR REPLACE INTO pairings (vin, code_hash, expires_at, attempts_left) "
            "VALUES (?, ?, ?, ?)",
            values(pairing),
        )

    async def try_pairing(self, vin: str, code_hash: bytes, *, now: int) -> PairingResult:
        def attempt(conn: sqlite3.Connection) -> PairingResult:
            row = conn.execute(
                "SELECT code_hash, expires_at, attempts_left FROM pairings WHERE vin = ?", (vin,)
            ).fetchone()
            if row is None:
                return PairingResult.NONE
            stored, expires_at, attempts_left = row
            if now >= expires_at:
                return PairingResult.EXPIRED
            if attempts_left <= 0:
                return PairingResult.EXHAUSTED
            if hmac.compare_digest(stored, code_hash):
                conn.execute("DELETE FROM pairings WHERE vin = ?", (vin,))
                return PairingResult.PAIRED
            conn.execute(
                "UPDATE pairings SET attempts_left = attempts_left - 1 WHERE vin = ?", (vin,)
            )
            return PairingResult.WRONG

        return await self._db.run(attempt, write=True)

    # keys and invitations

    async def put_key(self, key: KeyRecord) -> None:
        await self._db.change(
            INSERT_KEY,
            values(key),
        )

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._db.one(SELECT_KEY + " WHERE key_id = ?", (key_id,))
        return None if row is None else records.key(row)

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        rows = await self._db.all(SELECT_KEY + " WHERE vin = ? ORDER BY created_at, key_id", (vin,))
        return [records.key(row) for row in rows]

    async def set_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> bool:
        allowed = frozenset(KeyStatus(s).value for s in expected)

        def compare_and_set(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT status FROM vehicle_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None or row[0] not in allowed:
                return False
            conn.execute(
                "UPDATE vehicle_keys SET status = ? WHERE key_id = ?", (status.value, key_id)
            )
            return True

        return await self._db.run(compare_and_set, write=True)

    async def put_invitation(self, invitation: Invitation) -> None:
        await self._db.change(
            "INSERT OR REPLACE INTO invitations (invitation_id, vin, inviter_id, role, "
            "entitlements, not_before, not_after, schedule, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values(invitation),
        )

    async def take_invitation(self, invitation_id: str, *, now: int) -> Invitation | None:
        def take(conn: sqlite3.Connection) -> Invitation | None:
            found = conn.execute(
                "DELETE FROM invitations WHERE invitation_id = ? AND expires_at > ? "
                "RETURNING invitation_id, vin, inviter_id, role, entitlements, not_before, "
                "not_after, schedule, expires_at",
                (invitation_id, now),
            ).fetchall()
            return records.invitation(found[0]) if found else None

        return await self._db.run(take, write=True)

    # revocation ledger

    async def withdraw_keys(
        self,
        vin: str,
        keys: Sequence[KeyWithdrawal],
        status: KeyStatus,
        *,
        expected: Sequence[KeyStatus],
        before: int,
        until: int,
    ) -> tuple[int, list[str]]:
        allowed = frozenset(KeyStatus(s).value for s in expected) - {status.value}
        return await self._db.run(
            lambda conn: ledger.withdraw_keys(
                conn, vin, keys, status, allowed=allowed, before=before, until=until
            ),
            write=True,
        )

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        batch = list(entries)
        return await self._db.run(
            lambda conn: ledger.merge_entries(conn, vin, batch), write=bool(batch)
        )

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        return await self._db.run(
            lambda conn: ledger.renumber(conn, vin, since=since, above=above), write=True
        )

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        return await self._db.run(
            lambda conn: ledger.revocations(conn, vin, since=since), write=False
        )

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        return await self._db.change(
            "DELETE FROM revocations WHERE vin = ? AND prune_after < ?", (vin, before)
        )

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        return await self._db.run(
            lambda conn: ledger.add_key(
                conn, key, holder=holder, counted_until=counted_until, limit=limit, now=now
            ),
            write=True,
        )

    # remote commands and audit events: the transactions are in keyserver.store.sqlite.channel

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        return await self._db.run(
            lambda conn: channel.put_command(conn, command),
            write=True,
            conflict=f"command {command.command_id} already exists",
        )

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self._db.run(lambda conn: channel.command(conn, command_id), write=False)

    async def set_command_status(
        self,
        command_id: str,
        status: CommandStatus,
        *,
        vin: str,
        expected: Sequence[CommandStatus],
        detail: str,
        now: int,
    ) -> bool:
        return await self._db.run(
            lambda conn: channel.set_command_status(
                conn, command_id, status, vin=vin, expected=expected, detail=detail, now=now
            ),
            write=True,
        )

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        return await self._db.run(lambda c: channel.pending_commands(c, vin, now=now), write=False)

    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        return await self._db.run(
            lambda conn: channel.add_audit_batch(conn, vin, batch_id, events, now=now), write=True
        )

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        return await self._db.run(lambda conn: channel.audit_events(conn, vin), write=False)
