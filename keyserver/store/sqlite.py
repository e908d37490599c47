"""The embedded SQLite store: the keyserver's zero-configuration default for a single node.

One worker thread owns the connection, so calls from any number of coroutines are serialized and
never block the event loop. WAL with ``synchronous=FULL``: an accepted write survives a crash.
Every operation is one transaction; writes take the write lock up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from keycore import Role
from keycore.channel import AuditEvent
from keyserver.errors import Conflict, StoreUnavailable
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
    RevocationKind,
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store import sqlite_channel as channel
from keyserver.store import sqlite_ownership as owners
from keyserver.store.sqlite_schema import SCHEMA, SCHEMA_VERSION, SWEEP_BATCH, SWEEPS
from runtime.sqlite import open_durable

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_UNIQUE_VIOLATIONS: Final = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})

_INSERT_KEY: Final = (
    "INSERT OR REPLACE INTO vehicle_keys (key_id, vin, account_id, device_id, role, "
    "entitlements, not_before, not_after, schedule, status, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_ACCOUNT: Final = "SELECT account_id, email, password_hash, created_at FROM accounts"
_SELECT_LIVE_SESSION: Final = (
    "SELECT token_hash, account_id, expires_at FROM sessions "
    "WHERE token_hash = ? AND expires_at > ?"
)
_SELECT_DEVICE: Final = "SELECT device_id, account_id, public_key, name, created_at FROM devices"
_SELECT_KEY: Final = (
    "SELECT key_id, vin, account_id, device_id, role, entitlements, not_before, not_after, "
    "schedule, status, created_at FROM vehicle_keys"
)


def _values(record: DataclassInstance) -> tuple[object, ...]:
    """A record's fields in declaration order: the column order of its table."""
    return tuple(getattr(record, field.name) for field in dataclasses.fields(record))


def _key(row: Any) -> KeyRecord:
    (key_id, vin, account_id, device_id, role, mask, nbf, naf, schedule, status, created) = row
    return KeyRecord(
        key_id, vin, account_id, device_id, Role(role), mask, nbf, naf, schedule,
        KeyStatus(status), created,
    )  # fmt: skip


def _invitation(row: Any) -> Invitation:
    (invitation_id, vin, inviter_id, role, mask, nbf, naf, schedule, expires_at) = row
    return Invitation(
        invitation_id, vin, inviter_id, Role(role), mask, nbf, naf, schedule, expires_at
    )


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


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # A failed rollback leaves the transaction open; the next call rolls it back first.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _unavailable(path: Path, exc: sqlite3.Error, *, may_have_succeeded: bool) -> StoreUnavailable:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    detail = " ".join(str(exc).split())
    return StoreUnavailable(
        f"SQLite store {path}: {detail} ({name})", may_have_succeeded=may_have_succeeded
    )


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open the database and create or check its schema; runs on the worker thread."""
    conn: sqlite3.Connection | None = None
    try:
        try:
            # 0600, WAL, synchronous=FULL, autocommit: we issue BEGIN/COMMIT ourselves
            conn = open_durable(path, busy_timeout=busy_timeout)
        except OSError as exc:
            raise StoreUnavailable(
                f"SQLite store {path}: unable to open database file ({exc.strerror})",
                may_have_succeeded=False,
            ) from None
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"SQLite store {path}: schema version {version} is newer than this keyserver's "
                f"({SCHEMA_VERSION})",
                may_have_succeeded=False,
            )
        if version < SCHEMA_VERSION:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _unavailable(path, exc, may_have_succeeded=False) from exc
        raise


class SQLiteStore:
    """The keyserver ``Store`` in one SQLite file, for a single node."""

    def __init__(self, path: Path, conn: sqlite3.Connection, worker: ThreadPoolExecutor) -> None:
        self._path = path
        self._conn = conn  # used on the worker thread only
        self._worker = worker
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 2.0) -> SQLiteStore:
        """Open (creating if needed) the database at ``path``; ``busy_timeout`` in seconds bounds
        the wait for another process's write lock."""
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                worker, _connect, path, busy_timeout
            )
        except BaseException:
            worker.shutdown(wait=False)
            raise
        return cls(path, conn, worker)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # queued calls run first: the worker takes jobs in order
            await asyncio.get_running_loop().run_in_executor(self._worker, self._conn.close)
        except sqlite3.Error:
            pass  # committed writes are already durable in the WAL; nothing to save here
        finally:
            self._worker.shutdown(wait=False)

    async def _run(
        self, work: Callable[[sqlite3.Connection], T], *, write: bool, conflict: str = ""
    ) -> T:
        if self._closed:
            raise StoreUnavailable(f"SQLite store {self._path} is closed", may_have_succeeded=False)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, self._transact, work, write, conflict
        )

    def _transact(self, work: Callable[[sqlite3.Connection], T], write: bool, conflict: str) -> T:
        """Run ``work`` in one transaction on the worker thread, mapping SQLite's errors."""
        conn = self._conn
        committing = False
        try:
            if conn.in_transaction:  # left open by a failed rollback, so never committed
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(conn)
            except BaseException:
                _rollback_quietly(conn)
                raise
            committing = write
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if conn.in_transaction:
                _rollback_quietly(conn)
            unique = getattr(exc, "sqlite_errorname", "") in _UNIQUE_VIOLATIONS
            if conflict and unique and not committing:
                raise Conflict(conflict) from exc
            # Before COMMIT the rollback proves nothing was applied; a failed COMMIT proves nothing.
            raise _unavailable(self._path, exc, may_have_succeeded=committing) from exc

    async def _one(self, sql: str, params: tuple[object, ...]) -> Any:
        return await self._run(lambda c: c.execute(sql, params).fetchone(), write=False)

    async def _all(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        return await self._run(lambda c: c.execute(sql, params).fetchall(), write=False)

    async def _change(self, sql: str, params: tuple[object, ...], conflict: str = "") -> int:
        return await self._run(
            lambda c: c.execute(sql, params).rowcount, write=True, conflict=conflict
        )

    async def ping(self) -> None:
        await self._one("PRAGMA user_version", ())  # reads the file header, not just the library

    # accounts and sessions

    async def create_account(self, account: Account) -> None:
        await self._change(
            "INSERT INTO accounts (account_id, email, password_hash, created_at) "
            "VALUES (?, ?, ?, ?)",
            _values(account),
            conflict="the account id or the e-mail address is already registered",
        )

    async def account(self, account_id: str) -> Account | None:
        row = await self._one(_SELECT_ACCOUNT + " WHERE account_id = ?", (account_id,))
        return None if row is None else Account(*row)

    async def account_by_email(self, email: str) -> Account | None:
        row = await self._one(_SELECT_ACCOUNT + " WHERE email = ?", (email,))
        return None if row is None else Account(*row)

    async def put_session(self, session: Session) -> None:
        await self._change(
            "INSERT OR REPLACE INTO sessions (token_hash, account_id, expires_at) VALUES (?, ?, ?)",
            _values(session),
        )

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        row = await self._one(_SELECT_LIVE_SESSION, (token_hash, now))
        return None if row is None else Session(*row)

    async def delete_session(self, token_hash: bytes) -> None:
        await self._change("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    # devices

    async def add_device(self, device: Device) -> None:
        await self._change(
            "INSERT INTO devices (device_id, account_id, public_key, name, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            _values(device),
            conflict=f"device {device.device_id} already exists",
        )

    async def device(self, device_id: str) -> Device | None:
        row = await self._one(_SELECT_DEVICE + " WHERE device_id = ?", (device_id,))
        return None if row is None else Device(*row)

    async def devices_of(self, account_id: str) -> list[Device]:
        rows = await self._all(
            _SELECT_DEVICE + " WHERE account_id = ? ORDER BY created_at, device_id", (account_id,)
        )
        return [Device(*row) for row in rows]

    # single use and rate limits

    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        return await self._run(
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
            row = conn.execute(_SELECT_LIVE_SESSION, (token_hash, now)).fetchone()
            session = None if row is None else Session(*row)
            device = None
            if device_id is not None:
                row = conn.execute(_SELECT_DEVICE + " WHERE device_id = ?", (device_id,)).fetchone()
                device = None if row is None else Device(*row)
            key = None
            if key_id is not None:
                row = conn.execute(_SELECT_KEY + " WHERE key_id = ?", (key_id,)).fetchone()
                key = None if row is None else _key(row)
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

        return await self._run(read, write=claim is not None)

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

        return await self._run(count, write=True)

    # vehicles and pairing

    async def add_vehicle(self, vehicle: Vehicle) -> None:
        await self._change(
            "INSERT INTO vehicles (vin, public_key, owner_id, created_at) VALUES (?, ?, ?, ?)",
            _values(vehicle),
            conflict=f"vehicle {vehicle.vin} is already registered",
        )

    async def vehicle(self, vin: str) -> Vehicle | None:
        row = await self._one(
            "SELECT vin, public_key, owner_id, created_at FROM vehicles WHERE vin = ?", (vin,)
        )
        return None if row is None else Vehicle(*row)

    async def set_owner(
        self, vin: str, *, owner_id: str | None, expected: str | None, now: int
    ) -> bool:
        return await self._run(
            lambda conn: owners.set_owner(conn, vin, owner_id, expected, now), write=True
        )

    async def ownership(self, vin: str) -> list[Tenure]:
        return await self._run(lambda conn: owners.ownership(conn, vin), write=False)

    async def put_pairing(self, pairing: Pairing) -> None:
        await self._change(
            "INSERT OR REPLACE INTO pairings (vin, code_hash, expires_at, attempts_left) "
            "VALUES (?, ?, ?, ?)",
            _values(pairing),
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

        return await self._run(attempt, write=True)

    # keys and invitations

    async def put_key(self, key: KeyRecord) -> None:
        await self._change(
            _INSERT_KEY,
            _values(key),
        )

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._one(_SELECT_KEY + " WHERE key_id = ?", (key_id,))
        return None if row is None else _key(row)

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        rows = await self._all(_SELECT_KEY + " WHERE vin = ? ORDER BY created_at, key_id", (vin,))
        return [_key(row) for row in rows]

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

        return await self._run(compare_and_set, write=True)

    async def put_invitation(self, invitation: Invitation) -> None:
        await self._change(
            "INSERT OR REPLACE INTO invitations (invitation_id, vin, inviter_id, role, "
            "entitlements, not_before, not_after, schedule, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _values(invitation),
        )

    async def take_invitation(self, invitation_id: str, *, now: int) -> Invitation | None:
        def take(conn: sqlite3.Connection) -> Invitation | None:
            rows = conn.execute(
                "DELETE FROM invitations WHERE invitation_id = ? AND expires_at > ? "
                "RETURNING invitation_id, vin, inviter_id, role, entitlements, not_before, "
                "not_after, schedule, expires_at",
                (invitation_id, now),
            ).fetchall()
            return _invitation(rows[0]) if rows else None

        return await self._run(take, write=True)

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

        def withdraw(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            changed, entries = [], []
            for key in keys:
                row = conn.execute(
                    "SELECT status FROM vehicle_keys WHERE key_id = ? AND vin = ?",
                    (key.key_id, vin),
                ).fetchone()
                if row is None or row[0] not in allowed:
                    continue
                conn.execute(
                    "UPDATE vehicle_keys SET status = ? WHERE key_id = ?",
                    (status.value, key.key_id),
                )
                changed.append(key.key_id)
                if key.holder is not None:
                    entries.append(
                        RevocationEntry(RevocationKind.HOLDER, key.holder, before, until)
                    )
                    if status is KeyStatus.REVOKED and not _other_live_key(
                        conn, vin, key.device_id, key.key_id
                    ):
                        conn.execute(
                            "DELETE FROM vehicle_holders WHERE vin = ? AND holder = ?",
                            (vin, key.holder),
                        )
            return _merge_entries(conn, vin, entries), changed

        return await self._run(withdraw, write=True)

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        batch = list(entries)
        return await self._run(lambda c: _merge_entries(c, vin, batch), write=bool(batch))

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        def renumber(conn: sqlite3.Connection) -> int:
            head = max(_ledger_head(conn, vin), above)
            rows = conn.execute(
                "SELECT sequence FROM revocations WHERE vin = ? AND sequence > ? ORDER BY sequence",
                (vin, since),
            ).fetchall()
            for (old,) in rows:
                head += 1
                conn.execute(
                    "UPDATE revocations SET sequence = ? WHERE vin = ? AND sequence = ?",
                    (head, vin, old),
                )
            _set_ledger_head(conn, vin, head)
            return head

        return await self._run(renumber, write=True)

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        def read(conn: sqlite3.Connection) -> tuple[int, list[RevocationEntry]]:
            rows = conn.execute(
                "SELECT kind, subject, issued_before, prune_after, sequence FROM revocations "
                "WHERE vin = ? AND sequence > ? ORDER BY sequence",
                (vin, since),
            ).fetchall()
            entries = [RevocationEntry(RevocationKind(k), s, b, u, n) for k, s, b, u, n in rows]
            return _ledger_head(conn, vin), entries

        return await self._run(read, write=False)

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        return await self._change(
            "DELETE FROM revocations WHERE vin = ? AND prune_after < ?", (vin, before)
        )

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        def add(conn: sqlite3.Connection) -> KeyAdded:
            if _other_live_key(conn, key.vin, key.device_id, key.key_id):
                return KeyAdded.DEVICE_HAS_KEY
            conn.execute(
                "DELETE FROM vehicle_holders WHERE vin = ? AND expires_at <= ?", (key.vin, now)
            )
            counted = {
                row[0]
                for row in conn.execute(
                    "SELECT holder FROM vehicle_holders WHERE vin = ? UNION "
                    "SELECT subject FROM revocations WHERE vin = ? AND kind = ?",
                    (key.vin, key.vin, RevocationKind.HOLDER.value),
                )
            }
            if holder not in counted and len(counted) >= limit:
                return KeyAdded.TOO_MANY_HOLDERS
            conn.execute(
                "INSERT INTO vehicle_holders (vin, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (vin, holder) DO UPDATE SET "
                "expires_at = max(expires_at, excluded.expires_at)",
                (key.vin, holder, counted_until),
            )
            conn.execute(_INSERT_KEY, _values(key))
            return KeyAdded.ADDED

        return await self._run(add, write=True)

    # remote commands and audit events: the transactions are in keyserver.store.sqlite_channel

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        return await self._run(
            lambda conn: channel.put_command(conn, command),
            write=True,
            conflict=f"command {command.command_id} already exists",
        )

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self._run(lambda conn: channel.command(conn, command_id), write=False)

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
        return await self._run(
            lambda conn: channel.set_command_status(
                conn, command_id, status, vin=vin, expected=expected, detail=detail, now=now
            ),
            write=True,
        )

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        return await self._run(lambda c: channel.pending_commands(c, vin, now=now), write=False)

    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        return await self._run(
            lambda conn: channel.add_audit_batch(conn, vin, batch_id, events, now=now), write=True
        )

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        return await self._run(lambda conn: channel.audit_events(conn, vin), write=False)


def _ledger_head(conn: sqlite3.Connection, vin: str) -> int:
    row = conn.execute("SELECT sequence FROM revocation_heads WHERE vin = ?", (vin,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_ledger_head(conn: sqlite3.Connection, vin: str, head: int) -> None:
    conn.execute(
        "INSERT INTO revocation_heads (vin, sequence) VALUES (?, ?) "
        "ON CONFLICT (vin) DO UPDATE SET sequence = excluded.sequence",
        (vin, head),
    )


def _merge_entries(conn: sqlite3.Connection, vin: str, entries: Sequence[RevocationEntry]) -> int:
    """``Store.append_revocations`` inside the caller's transaction: one row per subject."""
    head = _ledger_head(conn, vin)
    start = head
    for entry in entries:
        row = conn.execute(
            "SELECT issued_before, prune_after FROM revocations "
            "WHERE vin = ? AND kind = ? AND subject = ?",
            (vin, entry.kind.value, entry.subject),
        ).fetchone()
        before, until = entry.before, entry.until
        if row is not None:
            if row[0] >= before and row[1] >= until:
                continue  # covered already: a repeat adds nothing
            before, until = max(before, row[0]), max(until, row[1])
        head += 1
        conn.execute(
            "INSERT INTO revocations (vin, sequence, kind, subject, issued_before, prune_after) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (vin, kind, subject) DO UPDATE SET "
            "sequence = excluded.sequence, issued_before = excluded.issued_before, "
            "prune_after = excluded.prune_after",
            (vin, head, entry.kind.value, entry.subject, before, until),
        )
    if head != start:
        _set_ledger_head(conn, vin, head)
    return head


def _other_live_key(conn: sqlite3.Connection, vin: str, device_id: str, key_id: str) -> bool:
    """Whether the device holds a live key (active or suspended) on the vehicle besides
    ``key_id``: one device, one live key per vehicle."""
    row = conn.execute(
        "SELECT 1 FROM vehicle_keys WHERE vin = ? AND device_id = ? AND key_id <> ? "
        "AND status IN (?, ?) LIMIT 1",
        (vin, device_id, key_id, KeyStatus.ACTIVE.value, KeyStatus.SUSPENDED.value),
    ).fetchone()
    return row is not None
