"""The keyserver's records: what the stores keep. Plain frozen dataclasses, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from keycore import Action, Role


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    email: str  # normalised: stripped, lower case; unique
    password_hash: str  # scrypt, see keyserver.passwords; never logged
    created_at: int


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: bytes  # SHA-256 of the bearer token; the token itself is never stored
    account_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    account_id: str
    public_key: bytes  # P-256 x || y, 64 bytes
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Vehicle:
    vin: str
    public_key: bytes  # the vehicle's P-256 key, x || y
    owner_id: str | None  # account id of the owner, None until paired
    created_at: int


@dataclass(frozen=True, slots=True)
class Pairing:
    """A one-time owner pairing code shown by the car; only its hash is stored."""

    vin: str
    code_hash: bytes
    expires_at: int
    attempts_left: int


class PairingResult(StrEnum):
    PAIRED = "paired"  # code matched: the pairing is consumed
    WRONG = "wrong"  # code did not match: one attempt spent
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    NONE = "none"  # no pairing pending for this vehicle


class KeyStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key: the right of one device of one account to open one vehicle, within limits.

    Tokens are issued from it (and refreshed) while it is active. Revoking it puts a holder entry
    for its device key into the vehicle's revocation list: every token issued before then dies.
    """

    key_id: str
    vin: str
    account_id: str
    device_id: str
    role: Role
    entitlements: int  # action bit mask, keycore.roles.to_mask
    not_before: int
    not_after: int
    schedule: bytes | None  # CBOR of keycore.WeeklySchedule.encode(), or None
    status: KeyStatus
    created_at: int


@dataclass(frozen=True, slots=True)
class Invitation:
    """A share offered by an owner, accepted once by the recipient with its device key."""

    invitation_id: str
    vin: str
    inviter_id: str
    role: Role
    entitlements: int
    not_before: int
    not_after: int
    schedule: bytes | None
    expires_at: int  # the invitation itself, not the key it grants


class RevocationKind(StrEnum):
    TOKEN = "token"  # noqa: S105 — an entry kind, not a secret
    HOLDER = "holder"


@dataclass(frozen=True, slots=True)
class RevocationEntry:
    """One line of a vehicle's revocation ledger; ``sequence`` is given by the store."""

    kind: RevocationKind
    subject: bytes  # token id (16 bytes) or holder id (16 bytes)
    before: int  # holder entries: tokens issued before this are revoked; token entries: 0
    until: int  # the entry can be pruned after this time
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class KeyWithdrawal:
    """A key to suspend or revoke, its device, and the holder id of that device (None: no entry
    is needed, e.g. the device is gone or the key's window has ended, so no token of it can be
    alive)."""

    key_id: str
    device_id: str
    holder: bytes | None


class KeyAdded(StrEnum):
    """What ``Store.add_key`` did."""

    ADDED = "added"
    DEVICE_HAS_KEY = "device_has_key"  # the device holds a live key on the vehicle already
    TOO_MANY_HOLDERS = "too_many_holders"  # the vehicle has its most holders already


@dataclass(frozen=True, slots=True)
class NonceClaim:
    """A device proof's nonce to spend in ``Store.refresh_context``: single use within ``scope``
    until ``expires_at``, as ``Store.claim_nonce``. The proof was verified with ``public_key``."""

    scope: str
    nonce: bytes
    expires_at: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class RefreshContext:
    """What ``Store.refresh_context`` read (and spent) in one atomic operation."""

    session: Session | None  # None: unknown or expired
    device: Device | None
    key: KeyRecord | None
    nonce_fresh: bool | None  # None: no claim was made


class CommandStatus(StrEnum):
    QUEUED = "queued"  # stored and signed; not yet acknowledged by the car
    DELIVERED = "delivered"  # the car said it has the command
    EXECUTED = "executed"  # the car reports it moved
    FAILED = "failed"  # the car reports it did not (or may not have: detail says which)
    EXPIRED = "expired"  # refused by the car as expired; or past expires_at with no result


#: Commands (and with them their idempotency keys) are kept this long after they expire.
COMMAND_RETENTION_S = 86_400
#: Audit events are kept this long after they arrive (an export job takes them further).
AUDIT_RETENTION_S = 30 * 86_400


@dataclass(frozen=True, slots=True)
class Tenure:
    """One account's time as a vehicle's owner, ``since`` ≤ t < ``until`` (None: still owner).

    It decides which part of the car's audit trail the account may read (keyserver.tenure).
    """

    owner_id: str
    since: int
    until: int | None


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A remote command: who asked the car for what, its signed document, and its state.

    ``(account_id, idempotency_key)`` is unique: the same key never makes a second command.
    """

    command_id: str
    vin: str
    account_id: str
    idempotency_key: str
    action: Action
    issued_at: int
    expires_at: int
    status: CommandStatus
    detail: str
    updated_at: int
    document: bytes  # keycore.sign_command: what the car verifies
