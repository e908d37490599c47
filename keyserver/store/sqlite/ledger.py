"""The SQLite store's revocation ledger and the holders it counts: each function is one
``Store`` operation's transaction (the rules are the Store contract's), run on the store's worker
thread (keyserver.store.sqlite.transactions). One row per (vehicle, kind, subject) in
``revocations``; the vehicle's last sequence number in ``revocation_heads``, never lowered."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from keyserver.models import (
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    RevocationEntry,
    RevocationKind,
)
from keyserver.store.sqlite.records import INSERT_KEY, values


def withdraw_keys(
    conn: sqlite3.Connection,
    vin: str,
    keys: Sequence[KeyWithdrawal],
    status: KeyStatus,
    *,
    allowed: frozenset[str],
    before: int,
    until: int,
) -> tuple[int, list[str]]:
    """``Store.withdraw_keys``; ``allowed`` holds the expected statuses' values, less ``status``."""
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
            entries.append(RevocationEntry(RevocationKind.HOLDER, key.holder, before, until))
            if status is KeyStatus.REVOKED and not other_live_key(
                conn, vin, key.device_id, key.key_id
            ):
                conn.execute(
                    "DELETE FROM vehicle_holders WHERE vin = ? AND holder = ?",
                    (vin, key.holder),
                )
    return merge_entries(conn, vin, entries), changed


def merge_entries(conn: sqlite3.Connection, vin: str, entries: Sequence[RevocationEntry]) -> int:
    """``Store.append_revocations`` inside the caller's transaction: one row per subject."""
    head = _head(conn, vin)
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
        _set_head(conn, vin, head)
    return head


def renumber(conn: sqlite3.Connection, vin: str, *, since: int, above: int) -> int:
    """``Store.renumber_revocations``."""
    head = max(_head(conn, vin), above)
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
    _set_head(conn, vin, head)
    return head


def revocations(
    conn: sqlite3.Connection, vin: str, *, since: int
) -> tuple[int, list[RevocationEntry]]:
    """``Store.revocations``."""
    rows = conn.execute(
        "SELECT kind, subject, issued_before, prune_after, sequence FROM revocations "
        "WHERE vin = ? AND sequence > ? ORDER BY sequence",
        (vin, since),
    ).fetchall()
    entries = [RevocationEntry(RevocationKind(k), s, b, u, n) for k, s, b, u, n in rows]
    return _head(conn, vin), entries


def add_key(
    conn: sqlite3.Connection,
    key: KeyRecord,
    *,
    holder: bytes,
    counted_until: int,
    limit: int,
    now: int,
) -> KeyAdded:
    """``Store.add_key``: the holders counted are the unexpired claims and the ledger's."""
    if other_live_key(conn, key.vin, key.device_id, key.key_id):
        return KeyAdded.DEVICE_HAS_KEY
    conn.execute("DELETE FROM vehicle_holders WHERE vin = ? AND expires_at <= ?", (key.vin, now))
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
    conn.execute(INSERT_KEY, values(key))
    return KeyAdded.ADDED


def other_live_key(conn: sqlite3.Connection, vin: str, device_id: str, key_id: str) -> bool:
    """Whether the device holds a live key (active or suspended) on the vehicle besides
    ``key_id``: one device, one live key per vehicle."""
    row = conn.execute(
        "SELECT 1 FROM vehicle_keys WHERE vin = ? AND device_id = ? AND key_id <> ? "
        "AND status IN (?, ?) LIMIT 1",
        (vin, device_id, key_id, KeyStatus.ACTIVE.value, KeyStatus.SUSPENDED.value),
    ).fetchone()
    return row is not None


def _head(conn: sqlite3.Connection, vin: str) -> int:
    row = conn.execute("SELECT sequence FROM revocation_heads WHERE vin = ?", (vin,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_head(conn: sqlite3.Connection, vin: str, head: int) -> None:
    conn.execute(
        "INSERT INTO revocation_heads (vin, sequence) VALUES (?, ?) "
        "ON CONFLICT (vin) DO UPDATE SET sequence = excluded.sequence",
        (vin, head),
    )
