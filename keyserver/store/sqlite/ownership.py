"""The SQLite store's ownership history (table ``vehicle_owners`` in its schema): the owner's
compare-and-set and the tenures it closes and opens, in one transaction on the store's worker
thread (keyserver.store.sqlite.transactions). The rules are the Store contract's (``set_owner``)."""

from __future__ import annotations

import sqlite3

from keyserver.models import AUDIT_RETENTION_S, Tenure


def set_owner(
    conn: sqlite3.Connection, vin: str, owner_id: str | None, expected: str | None, now: int
) -> bool:
    moved = conn.execute(
        "UPDATE vehicles SET owner_id = ? WHERE vin = ? AND owner_id IS ?",
        (owner_id, vin, expected),
    ).rowcount
    if moved != 1:
        return False
    query = "SELECT 1 FROM vehicle_owners WHERE vin = ? LIMIT 1"
    had_owners = conn.execute(query, (vin,)).fetchone() is not None
    closed = conn.execute(
        "UPDATE vehicle_owners SET until = ? WHERE vin = ? AND until IS NULL", (now, vin)
    ).rowcount
    if not closed and expected is not None:  # owner since before the history was kept
        _insert(conn, Tenure(expected, 0, now), vin)
        had_owners = True
    if owner_id is not None:  # the first owner reads from 0: nobody held a key before
        _insert(conn, Tenure(owner_id, now if had_owners else 0, None), vin)
    conn.execute(
        "DELETE FROM vehicle_owners WHERE vin = ? AND until < ? AND rowid < "
        "(SELECT max(rowid) FROM vehicle_owners WHERE vin = ?)",
        (vin, now - AUDIT_RETENTION_S, vin),
    )
    return True


def ownership(conn: sqlite3.Connection, vin: str) -> list[Tenure]:
    rows = conn.execute(
        "SELECT owner_id, since, until FROM vehicle_owners WHERE vin = ? ORDER BY rowid", (vin,)
    ).fetchall()
    return [Tenure(*row) for row in rows]


def _insert(conn: sqlite3.Connection, tenure: Tenure, vin: str) -> None:
    conn.execute(
        "INSERT INTO vehicle_owners (vin, owner_id, since, until) VALUES (?, ?, ?, ?)",
        (vin, tenure.owner_id, tenure.since, tenure.until),
    )
