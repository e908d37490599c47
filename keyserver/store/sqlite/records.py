"""The SQLite store's records as rows: the column lists and the conversions several of its
transactions share (the keyserver's records are dataclasses whose fields are the columns)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from keycore import Role
from keyserver.models import Invitation, KeyRecord, KeyStatus

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

INSERT_KEY: Final = (
    "INSERT OR REPLACE INTO vehicle_keys (key_id, vin, account_id, device_id, role, "
    "entitlements, not_before, not_after, schedule, status, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_ACCOUNT: Final = "SELECT account_id, email, password_hash, created_at FROM accounts"
SELECT_LIVE_SESSION: Final = (
    "SELECT token_hash, account_id, expires_at FROM sessions "
    "WHERE token_hash = ? AND expires_at > ?"
)
SELECT_DEVICE: Final = "SELECT device_id, account_id, public_key, name, created_at FROM devices"
SELECT_KEY: Final = (
    "SELECT key_id, vin, account_id, device_id, role, entitlements, not_before, not_after, "
    "schedule, status, created_at FROM vehicle_keys"
)


def values(record: DataclassInstance) -> tuple[object, ...]:
    """A record's fields in declaration order: the column order of its table."""
    return tuple(getattr(record, field.name) for field in dataclasses.fields(record))


def key(row: Any) -> KeyRecord:
    (key_id, vin, account_id, device_id, role, mask, nbf, naf, schedule, status, created) = row
    return KeyRecord(
        key_id, vin, account_id, device_id, Role(role), mask, nbf, naf, schedule,
        KeyStatus(status), created,
    )  # fmt: skip


def invitation(row: Any) -> Invitation:
    (invitation_id, vin, inviter_id, role, mask, nbf, naf, schedule, expires_at) = row
    return Invitation(
        invitation_id, vin, inviter_id, Role(role), mask, nbf, naf, schedule, expires_at
    )
