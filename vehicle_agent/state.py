"""The car's durable state in SQLite: identity, trust store, revocations, clock, commands, audit.

WAL with ``synchronous=FULL``: whatever a method has returned from survives a kill -9 or a power
cut. Synchronous and single-threaded by design (the agent runs it on one worker thread), so each
method is one transaction and easy to reason about at the moment of a crash.

Commands are executed at most once: ``begin_command`` records the intent durably BEFORE the
actuator moves; a command id already recorded is never begun again, whatever state it is in.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import RevocationState, SoftwareSigner, TrustedClock, TrustStore
from keycore.cose import load_point, point_bytes
from runtime.sqlite import open_durable
from vehicle_agent.errors import StateError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    status TEXT NOT NULL,          -- executing | executed | failed
    detail TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,           -- JSON, never a token's signature or a key
    sent INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS audit_unsent ON audit (sent, seq);
"""


@dataclass(frozen=True)
class Identity:
    vin: str
    vehicle_key: SoftwareSigner
    root: ec.EllipticCurvePublicKey
    keyserver_url: str


@dataclass(frozen=True)
class CommandRecord:
    command_id: str
    action: str
    status: str
    detail: str


class AgentState:
    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path) -> AgentState:
        try:
            # 0600 (it holds the car's private key), WAL, synchronous=FULL, 2 s busy timeout
            db = open_durable(path)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(f"{path}: state schema {version} is newer than this agent")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except OSError as exc:
            raise StateError(
                f"{path}: cannot open the agent state: cannot create the state file: {exc.strerror}"
            ) from None
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the agent state: {exc}") from None
        return cls(db, Path(path))

    def close(self) -> None:
        self._db.close()

    # identity and the documents the car decides with

    def set_identity(self, identity: Identity) -> None:
        self._put_many(
            {
                "vin": identity.vin.encode(),
                "vehicle_key": identity.vehicle_key.to_pem(),
                "root": point_bytes(identity.root),
                "keyserver_url": identity.keyserver_url.encode(),
            }
        )

    def identity(self) -> Identity:
        values = {name: self._get(name) for name in ("vin", "vehicle_key", "root", "keyserver_url")}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise StateError(f"{self.path}: not provisioned (missing {', '.join(missing)})")
        try:
            return Identity(
                vin=_text(values["vin"]),
                vehicle_key=SoftwareSigner.from_pem(_blob(values["vehicle_key"])),
                root=load_point(_blob(values["root"])),
                keyserver_url=_text(values["keyserver_url"]),
            )
        except ValueError as exc:
            raise StateError(f"{self.path}: damaged identity: {exc}") from None

    def trust(self, root: ec.EllipticCurvePublicKey) -> TrustStore:
        """The trust store, rebuilt from the last applied signed update (verified again)."""
        return TrustStore.restore(root, self._get("trust_update"))

    def save_trust(self, store: TrustStore) -> None:
        if store.update is not None:
            self._put_many({"trust_update": store.update})

    def revocations(self, vin: str) -> RevocationState:
        data = self._get("revocations")
        return RevocationState(vin) if data is None else RevocationState.decode(data)

    def save_revocations(self, state: RevocationState) -> None:
        self._put_many({"revocations": state.encode()})

    def clock(self, *, mono: float, boot_id: str) -> TrustedClock | None:
        data = self._get("clock")
        return None if data is None else TrustedClock.restore(data, mono=mono, boot_id=boot_id)

    def save_clock(self, clock: TrustedClock, *, mono: float) -> None:
        self._put_many({"clock": clock.encode(mono)})

    # remote commands, at most once

    def local_action_at(self) -> float:
        """Trusted time of the last movement a phone asked for in person (0: never)."""
        raw = self._get("local_action_at")
        return float(raw.decode()) if raw else 0.0

    def local_action(self) -> str:
        """What that movement was (an action name; "" if never, or recorded before names were)."""
        raw = self._get("local_action")
        return raw.decode() if raw else ""

    def set_local_action_at(self, at: float, action: str = "") -> None:
        self._put_many(
            {"local_action_at": repr(float(at)).encode(), "local_action": action.encode()}
        )

    def begin_command(self, command_id: str, action: str, *, at: float) -> bool:
        """Record the intent to execute; False (and nothing changes) if the id was ever seen."""
        try:
            self._db.execute(
                "INSERT INTO commands (command_id, action, status, updated_at)"
                " VALUES (?, ?, 'executing', ?)",
                (command_id, action, at),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def finish_command(self, command_id: str, status: str, detail: str, *, at: float) -> None:
        if status not in ("executed", "failed"):
            raise ValueError("a command ends executed or failed")
        self._db.execute(
            "UPDATE commands SET status = ?, detail = ?, updated_at = ? WHERE command_id = ?",
            (status, detail, at, command_id),
        )

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._db.execute(
            "SELECT command_id, action, status, detail FROM commands WHERE command_id = ?",
            (command_id,),
        ).fetchone()
        return None if row is None else CommandRecord(*row)

    def unreported_commands(self) -> list[CommandRecord]:
        """Commands with an outcome the keyserver has not acknowledged. One left ``executing``
        by a crash is reported as failed with detail ``interrupted`` — it may have moved the car,
        so it is never run again."""
        rows = self._db.execute(
            "SELECT command_id, action, status, detail FROM commands WHERE reported = 0"
            " ORDER BY updated_at"
        ).fetchall()
        return [
            CommandRecord(cid, action, "failed", "interrupted")
            if status == "executing"
            else CommandRecord(cid, action, status, detail)
            for cid, action, status, detail in rows
        ]

    def mark_reported(self, command_ids: list[str]) -> None:
        self._db.executemany(
            "UPDATE commands SET reported = 1 WHERE command_id = ?", [(c,) for c in command_ids]
        )

    # the audit outbox

    def add_audit(self, event: dict[str, Any]) -> int:
        cursor = self._db.execute("INSERT INTO audit (event) VALUES (?)", (json.dumps(event),))
        return int(cursor.lastrowid or 0)

    def pending_audit(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT seq, event FROM audit WHERE sent = 0 ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(seq, json.loads(event)) for seq, event in rows]

    def mark_audit_sent(self, up_to: int) -> None:
        self._db.execute("UPDATE audit SET sent = 1 WHERE sent = 0 AND seq <= ?", (up_to,))

    def outbox_depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM audit WHERE sent = 0").fetchone()[0])

    # helpers

    def _get(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def _put_many(self, values: dict[str, bytes]) -> None:
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )


def _blob(value: bytes | None) -> bytes:
    assert value is not None
    return value


def _text(value: bytes | None) -> str:
    return _blob(value).decode()
