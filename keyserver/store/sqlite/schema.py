"""The SQLite store's schema and its housekeeping statements (keyserver.store.sqlite).

Every statement is idempotent (``IF NOT EXISTS``), so a database of an older version is brought
up to date by running them all again.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 3
# 2: remote commands and audit events (channel.py)
# 3: one ledger entry per (vehicle, kind, subject), older duplicates dropped (the newest holds
#    the latest cutoff); the vehicles' holder claims; the ownership history (ownership.py)
# Expired rows deleted per table per sweep: catching up after a long pause costs many small
# sweeps, never one long stall of the only worker thread.
SWEEP_BATCH: Final = 256

# No foreign keys: records may name accounts, devices and vehicles that the service layer checks.
SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS accounts (account_id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS sessions (token_hash BLOB PRIMARY KEY,
    account_id TEXT NOT NULL, expires_at INTEGER NOT NULL) STRICT""",
    "CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at)",
    """CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,
    public_key BLOB NOT NULL, name TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT""",
    "CREATE INDEX IF NOT EXISTS devices_of_account ON devices (account_id, created_at)",
    """CREATE TABLE IF NOT EXISTS nonces (scope TEXT NOT NULL, nonce BLOB NOT NULL,
    expires_at INTEGER NOT NULL, PRIMARY KEY (scope, nonce)) STRICT""",
    "CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at)",
    """CREATE TABLE IF NOT EXISTS rate_windows (name TEXT NOT NULL, window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL, hits INTEGER NOT NULL, PRIMARY KEY (name, window_start)) STRICT""",
    "CREATE INDEX IF NOT EXISTS rate_windows_end ON rate_windows (window_end)",
    """CREATE TABLE IF NOT EXISTS vehicles (vin TEXT PRIMARY KEY, public_key BLOB NOT NULL,
    owner_id TEXT, created_at INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS pairings (vin TEXT PRIMARY KEY, code_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL, attempts_left INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS vehicle_keys (key_id TEXT PRIMARY KEY, vin TEXT NOT NULL,
    account_id TEXT NOT NULL, device_id TEXT NOT NULL, role INTEGER NOT NULL,
    entitlements INTEGER NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
    schedule BLOB, status TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT""",
    "CREATE INDEX IF NOT EXISTS vehicle_keys_of_vehicle ON vehicle_keys (vin, created_at)",
    """CREATE TABLE IF NOT EXISTS invitations (invitation_id TEXT PRIMARY KEY,
    vin TEXT NOT NULL, inviter_id TEXT NOT NULL, role INTEGER NOT NULL,
    entitlements INTEGER NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
    schedule BLOB, expires_at INTEGER NOT NULL) STRICT""",
    "CREATE INDEX IF NOT EXISTS invitations_expiry ON invitations (expires_at)",
    """CREATE TABLE IF NOT EXISTS revocation_heads (vin TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS revocations (vin TEXT NOT NULL, sequence INTEGER NOT NULL,
    kind TEXT NOT NULL, subject BLOB NOT NULL, issued_before INTEGER NOT NULL,
    prune_after INTEGER NOT NULL, PRIMARY KEY (vin, sequence)) STRICT""",
    # version 2
    """CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, vin TEXT NOT NULL,
    account_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, action INTEGER NOT NULL,
    issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL, updated_at INTEGER NOT NULL, document BLOB NOT NULL,
    UNIQUE (account_id, idempotency_key)) STRICT""",
    "CREATE INDEX IF NOT EXISTS commands_of_vehicle ON commands (vin, expires_at)",
    "CREATE INDEX IF NOT EXISTS commands_expiry ON commands (expires_at)",
    """CREATE TABLE IF NOT EXISTS audit_events (vin TEXT NOT NULL, seq INTEGER NOT NULL,
    event TEXT NOT NULL, batch_id TEXT NOT NULL, received_at INTEGER NOT NULL,
    PRIMARY KEY (vin, seq)) STRICT""",
    "CREATE INDEX IF NOT EXISTS audit_events_age ON audit_events (received_at)",
    # version 3
    """DELETE FROM revocations WHERE EXISTS (SELECT 1 FROM revocations AS newer
    WHERE newer.vin = revocations.vin AND newer.kind = revocations.kind
    AND newer.subject = revocations.subject AND newer.sequence > revocations.sequence)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS revocations_subject
    ON revocations (vin, kind, subject)""",
    """CREATE TABLE IF NOT EXISTS vehicle_holders (vin TEXT NOT NULL, holder BLOB NOT NULL,
    expires_at INTEGER NOT NULL, PRIMARY KEY (vin, holder)) STRICT""",
    # the ownership history (ownership.py); a vehicle owned before it has no rows
    """CREATE TABLE IF NOT EXISTS vehicle_owners (vin TEXT NOT NULL, owner_id TEXT NOT NULL,
    since INTEGER NOT NULL, until INTEGER) STRICT""",
    "CREATE INDEX IF NOT EXISTS vehicle_owners_of_vehicle ON vehicle_owners (vin, since)",
)

# Rows that are dead at ``now``, a batch at a time (parameters: now, batch).
SWEEPS: Final = (
    "DELETE FROM nonces WHERE rowid IN (SELECT rowid FROM nonces WHERE expires_at <= ? LIMIT ?)",
    "DELETE FROM sessions WHERE rowid IN "
    "(SELECT rowid FROM sessions WHERE expires_at <= ? LIMIT ?)",
    "DELETE FROM rate_windows WHERE rowid IN "
    "(SELECT rowid FROM rate_windows WHERE window_end <= ? LIMIT ?)",
    "DELETE FROM invitations WHERE rowid IN "
    "(SELECT rowid FROM invitations WHERE expires_at <= ? LIMIT ?)",
)
