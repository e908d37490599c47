"""The store interface: every operation the keyserver needs, each atomic on its own.

Two adapters implement it and pass one contract suite (tests/keyserver/test_store_contract.py):
``SQLiteStore`` (embedded default, WAL) and ``RedisStore`` (production; transactions or Lua).
Adapters map their backend's errors to ``StoreUnavailable`` and never let them leak.

Times are integers (Unix seconds) passed in by the caller; a store never reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keycore.channel import AuditEvent
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
    Session,
    Tenure,
    Vehicle,
)


class Store(Protocol):
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return if the backend answers; raise StoreUnavailable otherwise (readiness)."""

    # accounts and sessions
    async def create_account(self, account: Account) -> None:
        """Insert; raise Conflict if the account id or the e-mail address exists."""

    async def account(self, account_id: str) -> Account | None: ...

    async def account_by_email(self, email: str) -> Account | None: ...

    async def put_session(self, session: Session) -> None: ...

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        """The session, or None if unknown or expired at ``now``."""

    async def delete_session(self, token_hash: bytes) -> None: ...

    # devices
    async def add_device(self, device: Device) -> None:
        """Insert; raise Conflict if the device id exists."""

    async def device(self, device_id: str) -> Device | None: ...

    async def devices_of(self, account_id: str) -> list[Device]:
        """All devices of an account, oldest first."""

    # single use and rate limits
    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        """True the first time (scope, nonce) is claimed before it expires; False after."""

    async def hit(self, key: str, *, now: int, window: int, limit: int) -> bool:
        """Count one attempt in the fixed window containing ``now``; False once over ``limit``."""

    # the hot path: a signed request on a key (token refresh)
    async def refresh_context(
        self,
        token_hash: bytes,
        *,
        device_id: str | None,
        key_id: str | None,
        now: int,
        claim: NonceClaim | None = None,
    ) -> RefreshContext:
        """In one atomic operation (one round trip): the session as ``session(token_hash,
        now=now)``, the device ``device_id`` and the key ``key_id`` (None when not asked for or
        unknown), and, with ``claim``, the nonce claimed as ``claim_nonce`` does it — but only if
        the session is valid, the device exists, belongs to the session's account and has
        ``claim.public_key``: what a proof verified with that key must pass before its nonce may
        be spent. ``nonce_fresh`` is None when no claim was made."""

    # vehicles and pairing
    async def add_vehicle(self, vehicle: Vehicle) -> None:
        """Insert; raise Conflict if the VIN exists."""

    async def vehicle(self, vin: str) -> Vehicle | None: ...

    async def set_owner(
        self, vin: str, *, owner_id: str | None, expected: str | None, now: int
    ) -> bool:
        """Compare and set the owner: True if the owner was ``expected`` and is now ``owner_id``.

        In the same atomic step the ownership history closes ``expected``'s tenure at ``now``
        (one from before the history was kept is recorded as since 0) and opens ``owner_id``'s
        at ``now`` — at 0 for the car's first owner (no history yet: before it nobody held a
        key, so the trail holds nobody's data) — and drops closed tenures that ended more than
        ``AUDIT_RETENTION_S`` before ``now``, always keeping the latest entry (so "no history"
        keeps meaning "never owned")."""

    async def ownership(self, vin: str) -> list[Tenure]:
        """The vehicle's ownership history, oldest first; the current owner's tenure, if
        recorded, is the last and open (``until`` None)."""

    async def put_pairing(self, pairing: Pairing) -> None:
        """Store the pending pairing for a vehicle, replacing any earlier one."""

    async def try_pairing(self, vin: str, code_hash: bytes, *, now: int) -> PairingResult:
        """One attempt, atomically: PAIRED consumes the pairing, WRONG spends an attempt."""

    # keys and invitations
    async def put_key(self, key: KeyRecord) -> None:
        """Insert or replace a key record."""

    async def key(self, key_id: str) -> KeyRecord | None: ...

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        """All keys of a vehicle, oldest first."""

    async def set_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> bool:
        """Compare and set: True if the key's status was one of ``expected`` and is now
        ``status``; False (nothing changed) otherwise or if there is no such key."""

    async def put_invitation(self, invitation: Invitation) -> None: ...

    async def take_invitation(self, invitation_id: str, *, now: int) -> Invitation | None:
        """The invitation, removed atomically, if it exists and has not expired; else None.
        Two concurrent takers: exactly one gets it."""

    # revocation ledger: at most one entry per (kind, subject), so its size is bounded by the
    # vehicle's holders (keyserver.issuance says how that is kept)
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
        """One atomic step: each key of ``keys`` whose status is one of ``expected`` becomes
        ``status`` and, if it names a holder, the holder entry (``before``, ``until``) is merged
        into the vehicle's ledger as ``append_revocations`` merges it. A key already in
        ``status`` (or in no expected one, or gone) changes nothing, so "the key is withdrawn"
        always means "its entry is in the ledger". A revocation (``status`` REVOKED) also ends
        the holder's claim (``add_key``) unless another live key of the same device is on the
        vehicle: from then on its ledger entry counts it, until pruned. Returns (the ledger's
        sequence after, the ids of the keys that changed)."""

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        """Merge atomically, in order: an entry for a new (kind, subject) takes the vehicle's
        next sequence number; one for a subject already in the ledger replaces it with the later
        ``before`` and the later ``until`` (never weaker) at the next sequence number — or
        changes nothing if the ledger's entry already covers it. Returns the vehicle's
        sequence afterwards (unchanged when nothing changed)."""

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        """Atomically move the vehicle's sequence to at least ``above`` and give every entry
        after ``since`` a new sequence number past it, keeping their order; returns the
        sequence afterwards. (The journal's replay: keyserver.replay.)"""

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        """(the vehicle's current sequence, entries with sequence > ``since``, in order)."""

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        """Drop entries whose ``until`` is earlier than ``before``; returns how many."""

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        """One atomic step: unless the key's device holds a live key (active or suspended) on
        the vehicle already (DEVICE_HAS_KEY), or the vehicle counts ``limit`` holders at ``now``
        without ``holder`` (TOO_MANY_HOLDERS) — holders with an unexpired claim, and holders with
        an entry in the ledger — store ``key`` and claim ``holder`` until ``counted_until``
        (extending an earlier claim). Otherwise nothing changes. This is how a vehicle gains a
        holder (``put_key`` is for records that exist)."""

    # remote commands
    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        """Insert unless the account has a command under the same idempotency key: (the stored
        command, True if it is this one). Two concurrent puts with one key store one command.
        Commands are kept ``COMMAND_RETENTION_S`` after they expire; raise Conflict if the
        command id exists."""

    async def command(self, command_id: str) -> CommandRecord | None: ...

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
        """Compare and set: True if the command exists for ``vin`` with a status in
        ``expected``, and now has ``status``, ``detail`` and ``updated_at`` = ``now``."""

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        """The vehicle's queued or delivered commands that have not expired at ``now``, oldest
        first: what a car is sent when it connects."""

    # audit events from cars
    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        """Store each event once per (vehicle, seq), atomically; returns how many were new (a
        batch sent twice stores nothing the second time). Kept ``AUDIT_RETENTION_S``."""

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        """The vehicle's stored audit events in seq order."""
