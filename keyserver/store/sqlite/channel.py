"""The SQLite store's transactions for the cloud↔car channel: remote commands and the audit
events cars upload (tables in its schema). Each function runs inside one transaction on the
store's worker thread (keyserver.store.sqlite.transactions)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from keycore import Action
from keycore.channel import AuditEvent
from keyserver.models import (
    AUDIT_RETENTION_S,
    COMMAND_RETENTION_S,
    CommandRecord,
    CommandStatus,
)
from keyserver.store.sqlite.schema import SWEEP_BATCH

_SELECT: Final = (
    "SELECT command_id, vin, account_id, idempotency_key, action, issued_at, expires_at, status, "
    "detail, updated_at, document FROM commands"
)
_PENDING: Final = (CommandStatus.QUEUED.value, CommandStatus.DELIVERED.value)


def _command(row: Any) -> CommandRecord:
    (command_id, vin, account, key, action, issued, expires, status, detail, updated, doc) = row
    return CommandRecord(
        command_id, vin, account, key, Action(action), issued, expires, CommandStatus(status),
        detail, updated, doc,
    )  # fmt: skip


def put_command(conn: sqlite3.Connection, command: CommandRecord) -> tuple[CommandRecord, bool]:
    conn.execute(
        "DELETE FROM commands WHERE rowid IN "
        "(SELECT rowid FROM commands WHERE expires_at <= ? LIMIT ?)",
        (command.issued_at - COMMAND_RETENTION_S, SWEEP_BATCH),
    )
    row = conn.execute(
        _SELECT + " WHERE account_id = ? AND idempotency_key = ?",
        (command.account_id, command.idempotency_key),
    ).fetchone()
    if row is not None:
        return _command(row), False
    conn.execute(
        "INSERT INTO commands (command_id, vin, account_id, idempotency_key, action, "
        "issued_at, expires_at, status, detail, updated_at, document) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            command.command_id, command.vin, command.account_id, command.idempotency_key,
            int(command.action), command.issued_at, command.expires_at, command.status.value,
            command.detail, command.updated_at, command.document,
        ),
    )  # fmt: skip
    return command, True


def command(conn: sqlite3.Connection, command_id: str) -> CommandRecord | None:
    row = conn.execute(_SELECT + " WHERE command_id = ?", (command_id,)).fetchone()
    return None if row is None else _command(row)


def set_command_status(
    conn: sqlite3.Connection,
    command_id: str,
    status: CommandStatus,
    *,
    vin: str,
    expected: Sequence[CommandStatus],
    detail: str,
    now: int,
) -> bool:
    allowed = sorted({CommandStatus(s).value for s in expected})
    if not allowed:
        return False
    # one statement for any subset: the list is padded to every status with repeats
    padded = allowed + [allowed[0]] * (len(CommandStatus) - len(allowed))
    cursor = conn.execute(
        "UPDATE commands SET status = ?, detail = ?, updated_at = ? "
        "WHERE command_id = ? AND vin = ? AND status IN (?, ?, ?, ?, ?)",
        (status.value, detail, now, command_id, vin, *padded),
    )
    return cursor.rowcount == 1


def pending_commands(conn: sqlite3.Connection, vin: str, *, now: int) -> list[CommandRecord]:
    rows = conn.execute(
        _SELECT + " WHERE vin = ? AND expires_at > ? AND status IN (?, ?) "
        "ORDER BY issued_at, command_id",
        (vin, now, *_PENDING),
    ).fetchall()
    return [_command(row) for row in rows]


def add_audit_batch(
    conn: sqlite3.Connection, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
) -> int:
    conn.execute(
        "DELETE FROM audit_events WHERE rowid IN "
        "(SELECT rowid FROM audit_events WHERE received_at <= ? LIMIT ?)",
        (now - AUDIT_RETENTION_S, SWEEP_BATCH),
    )
    cursor = conn.executemany(
        "INSERT INTO audit_events (vin, seq, event, batch_id, received_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (vin, seq) DO NOTHING",
        [(vin, e.seq, e.event, batch_id, now) for e in events],
    )
    return max(cursor.rowcount, 0)


def audit_events(conn: sqlite3.Connection, vin: str) -> list[AuditEvent]:
    rows = conn.execute(
        "SELECT seq, event FROM audit_events WHERE vin = ? ORDER BY seq", (vin,)
    ).fetchall()
    return [AuditEvent(seq, event) for seq, event in rows]
