"""The local durable journal: writes accepted while the store is down, replayed once it is back.

One SQLite file per keyserver process (``<data_dir>/journal.db``, mode 0600, WAL,
``synchronous=FULL``: a 202 is answered only after the row is on disk). The data directory must
outlive the process (deploy/ gives each keyserver its own volume): until it is replayed, an
accepted write exists nowhere else. Who replays it: keyserver.replay.

Each accepted write is one row with a sequence (the replay order) and an operation id (the same
request twice is one row: ``append`` returns the existing one). Replay (keyserver.replay)
applies pending rows in sequence order and records each as ``done`` or ``refused`` (a business
refusal, e.g. the key is gone: never retried); a store failure (or ``NotYet``) stops the replay,
which resumes later from the same row. Applying an operation twice has the effect of applying it
once (revocation merges holder entries, one per holder; a share acceptance creates a key whose
id is in the journal).

Revocations pushed to cars during the outage (``issued_lists``). A revocation accepted here must
reach the cars connected to this process at once (G4), but the ledger, which numbers lists, is in
the store. So for each connected car the process signs a delta itself: base = the sequence the
car holds, sequence D = base + 1, the new holder entries; the car merges it and now holds D. The
row (vin, ledger_base, D) is written before the push. ``ledger_base`` is the last sequence the
car held *from the ledger*: everything up to it the car really has.

A car holding D must never later miss a ledger entry: the ledger numbers its own entries
independently, so its entry D may be another one (written by another process), and a delta
"since D" would skip it. Replay therefore, per vehicle, after applying the journaled operations:

1. moves the ledger's sequence past the highest D issued, and
2. gives every ledger entry after the lowest ``ledger_base`` of those rows a new sequence number
   above it (``Store.renumber_revocations``, one atomic step: the ledger keeps one entry per
   subject, so this re-sends entries instead of copying them, and its size does not change);
3. tells the hub: connected cars get the delta from their ``ledger_base`` (which the car accepts:
   base at or below what it holds, sequence above it).

A car holding any D then gets, from any process, a "since D" delta that holds copies of every
entry after its ``ledger_base``: nothing is missed, and its sequence stays at or above the
ledger's. Entries appended by others after step 1 are above every D, so they are in that delta
too. Known limit: until this process has replayed (it replays at start-up), a car that holds a D
and reconnects elsewhere after the store is back can miss entries numbered up to D there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyserver.errors import KeyserverError
from runtime.sqlite import open_durable

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    vin TEXT NOT NULL,
    payload TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS issued_lists (
    vin TEXT NOT NULL,
    ledger_base INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
"""
PENDING, DONE, REFUSED = "pending", "done", "refused"


class NotYet(KeyserverError):
    """An operation that cannot be applied yet: the replay stops at it and tries again later."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One accepted write. ``payload`` is plain JSON data (ids, never a token or a key)."""

    seq: int
    op_id: str
    kind: str
    vin: str
    payload: dict[str, Any]
    accepted_at: int
    state: str = PENDING
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class IssuedList:
    vin: str
    ledger_base: int
    sequence: int


class Journal:
    """The journal file. Calls are short and serialised; each write is durable when it returns."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Journal:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # It names accounts, devices and keys: owner-only, like the store's own database. FULL
        # synchronous: an answered 202 survives a power cut. 5 s: sqlite3's default, as before.
        db = open_durable(path, busy_timeout=5.0, check_same_thread=False)
        db.executescript(SCHEMA)
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def append(
        self, op_id: str, kind: str, vin: str, payload: dict[str, Any], *, now: int
    ) -> Operation:
        """Record an accepted write (durably), or return the one already under ``op_id``."""
        return await asyncio.to_thread(self._append, op_id, kind, vin, payload, now)

    def _append(
        self, op_id: str, kind: str, vin: str, payload: dict[str, Any], now: int
    ) -> Operation:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO operations (op_id, kind, vin, payload, accepted_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (op_id, kind, vin, json.dumps(payload, sort_keys=True), now),
            )
            row = self._db.execute("SELECT * FROM operations WHERE op_id = ?", (op_id,)).fetchone()
        return _operation(row)

    def pending(self) -> list[Operation]:
        """Operations not yet applied, in the order they were accepted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM operations WHERE state = ? ORDER BY seq", (PENDING,)
            ).fetchall()
        return [_operation(r) for r in rows]

    def pending_of(self, kind: str, account_id: str) -> list[Operation]:
        """The pending operations of ``kind`` whose payload names ``account_id``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM operations WHERE state = ? AND kind = ?"
                " AND json_extract(payload, '$.account_id') = ? ORDER BY seq",
                (PENDING, kind, account_id),
            ).fetchall()
        return [_operation(r) for r in rows]

    def operation(self, op_id: str) -> Operation | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM operations WHERE op_id = ?", (op_id,)).fetchone()
        return None if row is None else _operation(row)

    async def settle(self, seq: int, state: str, outcome: str = "") -> None:
        """Mark an operation applied (``done``) or refused for good (``refused``)."""
        if state not in (DONE, REFUSED):
            raise ValueError("an operation settles as done or refused")
        await asyncio.to_thread(self._execute,
            "UPDATE operations SET state = ?, outcome = ? WHERE seq = ?", (state, outcome, seq),
        )  # fmt: skip

    async def set_payload(self, seq: int, payload: dict[str, Any]) -> None:
        """Replace a pending operation's payload: what its replay has taken from the store and
        must not lose (keyserver.acceptance)."""
        await asyncio.to_thread(self._execute,
            "UPDATE operations SET payload = ? WHERE seq = ? AND state = ?",
            (json.dumps(payload, sort_keys=True), seq, PENDING),
        )  # fmt: skip

    async def record_list(self, vin: str, *, ledger_base: int, sequence: int) -> None:
        """A revocation list signed during the outage and about to be pushed to a car."""
        await asyncio.to_thread(self._execute,
            "INSERT INTO issued_lists (vin, ledger_base, sequence) VALUES (?, ?, ?)",
            (vin, ledger_base, sequence),
        )  # fmt: skip

    def open_lists(self) -> list[IssuedList]:
        """Lists issued during an outage whose vehicle's ledger has not been moved past them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT vin, ledger_base, sequence FROM issued_lists WHERE settled = 0"
                " ORDER BY rowid"
            ).fetchall()
        return [IssuedList(*r) for r in rows]

    async def settle_lists(self, vin: str, *, up_to: int) -> None:
        await asyncio.to_thread(self._execute,
            "UPDATE issued_lists SET settled = 1 WHERE vin = ? AND sequence <= ?", (vin, up_to),
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        """How many operations are in each state (pending, done, refused)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM operations GROUP BY state")
            found = dict(rows.fetchall())
        return {state: int(found.get(state, 0)) for state in (PENDING, DONE, REFUSED)}

    def has_work(self) -> bool:
        with self._lock:
            ops = self._db.execute(
                "SELECT 1 FROM operations WHERE state = ? LIMIT 1", (PENDING,)
            ).fetchone()
            lists = self._db.execute(
                "SELECT 1 FROM issued_lists WHERE settled = 0 LIMIT 1"
            ).fetchone()
        return ops is not None or lists is not None

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)


def _operation(row: tuple[Any, ...]) -> Operation:
    seq, op_id, kind, vin, payload, accepted_at, state, outcome = row
    return Operation(seq, op_id, kind, vin, json.loads(payload), accepted_at, state, outcome)
