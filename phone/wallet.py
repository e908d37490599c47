"""The phone's offline key wallet: the key tokens it holds, one per car, kept durably in SQLite.

The wallet is what makes G1 work when the cloud is down: the phone unlocks over BLE with a token
it already holds. Tokens are read here (never verified — the car does that) so the wallet knows
each one's car, role and window; ``due_for_refresh`` says which to renew while online, well
before they expire. WAL with ``synchronous=FULL``: a token ``put`` has returned survives a crash.

Token bytes never reach a log or a ``repr``. A row that does not decode — damaged storage, or a
wallet written by a newer app — raises ``WalletCorrupt`` and nothing is changed.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from keycore import cose
from keycore.errors import InvalidToken
from keycore.roles import Role
from keycore.token import MAX_TIME, MAX_TOKEN_BYTES, TYP_KEY_TOKEN, KeyToken, decode_claims
from phone.errors import PhoneError
from runtime.sqlite import open_durable

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    vin TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    token BLOB NOT NULL,          -- the signed key token; never logged
    not_before INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    refreshed_at INTEGER NOT NULL
) STRICT;
"""
_SELECT = "SELECT vin, key_id, role, token, not_before, expires, refreshed_at FROM tokens"
_PUT = (
    "INSERT OR REPLACE INTO tokens (vin, key_id, role, token, not_before, expires, refreshed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLES = {role.name.lower(): role for role in Role}


class WalletCorrupt(PhoneError):
    """A stored row, or the wallet file itself, cannot be read; nothing was changed."""


@dataclass(frozen=True, slots=True)
class WalletEntry:
    """One key token held for one car. The token's bytes are kept out of ``repr``."""

    vin: str
    key_id: str
    role: Role
    token: bytes = field(repr=False)
    not_before: int
    expires: int
    refreshed_at: int

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.expires

    def due_at(self, ahead_s: int) -> int:
        """When to renew: ``ahead_s`` before expiry, but not before half the token's life, so a
        short-lived token (a valet's) is not renewed at every chance (as the keyserver's
        ``refresh_after``)."""
        return self.expires - min(ahead_s, (self.expires - self.not_before) // 2)

    @property
    def valid_until(self) -> str:
        """The end of the token's window, for people: ``2026-11-23 10:00Z``."""
        return datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%d %H:%MZ")


def read_token(token: object) -> KeyToken:
    """A key token's claims, read without verifying its signature; ValueError if it is not one."""
    if type(token) is not bytes or not 0 < len(token) <= MAX_TOKEN_BYTES:
        raise ValueError(f"a key token is 1 to {MAX_TOKEN_BYTES} bytes")
    try:
        msg = cose.parse_sign1(
            token, typ=TYP_KEY_TOKEN, max_size=MAX_TOKEN_BYTES, error=InvalidToken
        )
        return decode_claims(msg.payload, msg.kid)
    except InvalidToken:
        raise ValueError("not a key token") from None


def decode_row(row: tuple[object, ...]) -> WalletEntry:
    """A stored row as an entry: every column checked, and the token's own claims must agree
    with the columns. Raises WalletCorrupt and nothing else."""
    if len(row) != 7:
        raise WalletCorrupt("a wallet row has 7 columns")
    vin, key_id, role, token, not_before, expires, refreshed_at = row
    name = vin if isinstance(vin, str) and len(vin) <= 17 else "?"
    if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
        raise WalletCorrupt(f"wallet row {name}: bad key id")
    if not (isinstance(role, str) and role in _ROLES):
        raise WalletCorrupt(f"wallet row {name}: unknown role")
    times = (not_before, expires, refreshed_at)
    if not all(type(t) is int and 0 <= t <= MAX_TIME for t in times):
        raise WalletCorrupt(f"wallet row {name}: bad times")
    if type(token) is not bytes or type(refreshed_at) is not int:
        raise WalletCorrupt(f"wallet row {name}: bad token column")
    try:
        claims = read_token(token)
    except ValueError:
        raise WalletCorrupt(f"wallet row {name}: the token does not decode") from None
    if (claims.vin, claims.role, claims.not_before, claims.expires) != (
        vin,
        _ROLES[role],
        not_before,
        expires,
    ):
        raise WalletCorrupt(f"wallet row {name}: the token does not match its row")
    return WalletEntry(claims.vin, key_id, claims.role, token, claims.not_before, claims.expires,
                       refreshed_at)  # fmt: skip


class KeyWallet:
    """The key tokens this phone holds, by VIN. Synchronous and small: one transaction a call."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> KeyWallet:
        path = Path(path)
        db: sqlite3.Connection | None = None
        try:
            # 0600, WAL, synchronous=FULL, 2 s busy timeout
            db = open_durable(path)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise WalletCorrupt(f"{path}: wallet format {version} is newer than this app")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except OSError as exc:
            raise WalletCorrupt(f"{path}: cannot open the wallet: {exc.strerror}") from None
        except (sqlite3.Error, WalletCorrupt) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, WalletCorrupt):
                raise
            raise WalletCorrupt(f"{path}: cannot open the wallet: {exc}") from None
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KeyWallet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyWallet(path={str(self.path)!r})"

    def put(self, key_id: str, token: bytes, *, now: int) -> WalletEntry:
        """Hold ``token`` (of key ``key_id``) for its car, replacing the one held before.

        The car, role and window come from the token itself. ValueError before any write for a
        bad key id, a bad ``now``, or bytes that are not a key token."""
        if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
            raise ValueError("key_id must be 1 to 64 characters of [A-Za-z0-9_-]")
        if type(now) is not int or not 0 <= now <= MAX_TIME:
            raise ValueError("now must be whole unix seconds")
        claims = read_token(token)
        entry = WalletEntry(claims.vin, key_id, claims.role, token, claims.not_before,
                            claims.expires, now)  # fmt: skip
        with self._db:
            self._db.execute(
                _PUT,
                (entry.vin, key_id, entry.role.name.lower(), token, entry.not_before,
                 entry.expires, now),
            )  # fmt: skip
        return entry

    def get(self, vin: str) -> WalletEntry | None:
        row = self._db.execute(_SELECT + " WHERE vin = ?", (vin,)).fetchone()
        return None if row is None else decode_row(row)

    def usable(self, vin: str, now: float) -> WalletEntry | None:
        """The token held for ``vin`` if it is valid at ``now``."""
        entry = self.get(vin)
        return entry if entry is not None and entry.valid_at(now) else None

    def entries(self) -> list[WalletEntry]:
        rows = self._db.execute(_SELECT + " ORDER BY vin").fetchall()
        return [decode_row(row) for row in rows]

    def due_for_refresh(self, now: float, ahead_s: int) -> list[WalletEntry]:
        """Entries to renew now: within ``ahead_s`` of expiry (or past half their life).
        Expired ones are included — the keyserver renews a key whose token lapsed offline."""
        if ahead_s < 0:
            raise ValueError("ahead_s must be >= 0")
        return [entry for entry in self.entries() if now >= entry.due_at(ahead_s)]

    def remove(self, vin: str) -> bool:
        with self._db:
            return self._db.execute("DELETE FROM tokens WHERE vin = ?", (vin,)).rowcount > 0
