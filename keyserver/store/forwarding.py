"""A ``Store`` that forwards every operation to another one through one policy hook: the base of
the store's wrappers (the breaker guard, the metrics, the last-known cache).

Each operation of the ``Store`` protocol is written out here once, by hand, so mypy checks every
forwarding against the protocol's signature; ``ForwardingStore`` subclasses ``Store`` explicitly,
so a protocol method added without its forwarding here leaves the wrappers abstract and mypy
refuses to build them (tests/keyserver/test_store_wrappers.py checks the same at run time, with
the name each forwarding hands the hook). A wrapper overrides ``_through`` — the policy applied to
every operation, by name: time it, guard it — and overrides an operation itself where it does
something particular there (``LastKnownStore``). ``close`` goes straight through: the wrappers
hold no resources, and the backend's owner closes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ParamSpec, TypeVar

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
from keyserver.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


class ForwardingStore(Store):
    """Every ``Store`` operation, forwarded to ``inner`` through ``_through`` (module doc)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    async def _through(
        self, operation: str, call: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``operation`` (the ``Store`` method's name) as ``call(*args, **kwargs)`` on the
        inner store; this base adds nothing."""
        return await call(*args, **kwargs)

    async def close(self) -> None:
        await self._inner.close()

    async def ping(self) -> None:
        await self._through("ping", self._inner.ping)

    # accounts and sessions

    async def create_account(self, account: Account) -> None:
        await self._through("create_account", self._inner.create_account, account)

    async def account(self, account_id: str) -> Account | None:
        return await self._through("account", self._inner.account, account_id)

    async def account_by_email(self, email: str) -> Account | None:
        return await self._through("account_by_email", self._inner.account_by_email, email)

    async def put_session(self, session: Session) -> None:
        await self._through("put_session", self._inner.put_session, session)

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        return await self._through("session", self._inner.session, token_hash, now=now)

    async def delete_session(self, token_hash: bytes) -> None:
        await self._through("delete_session", self._inner.delete_session, token_hash)

    # devices

    async def add_device(self, device: Device) -> None:
        await self._through("add_device", self._inner.add_device, device)

    async def device(self, device_id: str) -> Device | None:
        return await self._through("device", self._inner.device, device_id)

    async def devices_of(self, account_id: str) -> list[Device]:
        return await self._through("devices_of", self._inner.devices_of, account_id)

    # single use and rate limits

    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        return await self._through(
            "claim_nonce", self._inner.claim_nonce, scope, nonce, now=now, expires_at=expires_at
        )

    async def hit(self, key: str, *, now: int, window: int, limit: int) -> bool:
        return await self._through("hit", self._inner.hit, key, now=now, window=window, limit=limit)

    async def refresh_context(
        self,
        token_hash: bytes,
        *,
        device_id: str | None,
        key_id: str | None,
        now: int,
        claim: NonceClaim | None = None,
    ) -> RefreshContext:
        return await self._through(
            "refresh_context",
            self._inner.refresh_context,
            token_hash,
            device_id=device_id,
            key_id=key_id,
            now=now,
            claim=claim,
        )

    # vehicles and pairing

    async def add_vehicle(self, vehicle: Vehicle) -> None:
        await self._through("add_vehicle", self._inner.add_vehicle, vehicle)

    async def vehicle(self, vin: str) -> Vehicle | None:
        return await self._through("vehicle", self._inner.vehicle, vin)

    async def set_owner(
        self, vin: str, *, owner_id: str | None, expected: str | None, now: int
    ) -> bool:
        return await self._through(
            "set_owner", self._inner.set_owner, vin, owner_id=owner_id, expected=expected, now=now
        )

    async def ownership(self, vin: str) -> list[Tenure]:
        return await self._through("ownership", self._inner.ownership, vin)

    async def put_pairing(self, pairing: Pairing) -> None:
        await self._through("put_pairing", self._inner.put_pairing, pairing)

    async def try_pairing(self, vin: str, code_hash: bytes, *, now: int) -> PairingResult:
        return await self._through("try_pairing", self._inner.try_pairing, vin, code_hash, now=now)

    # keys and invitations

    async def put_key(self, key: KeyRecord) -> None:
        await self._through("put_key", self._inner.put_key, key)

    async def key(self, key_id: str) -> KeyRecord | None:
        return await self._through("key", self._inner.key, key_id)

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        return await self._through("keys_of_vehicle", self._inner.keys_of_vehicle, vin)

    async def set_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> bool:
        return await self._through(
            "set_key_status", self._inner.set_key_status, key_id, status, expected=expected
        )

    async def put_invitation(self, invitation: Invitation) -> None:
        await self._through("put_invitation", self._inner.put_invitation, invitation)

    async def take_invitation(self, invitation_id: str, *, now: int) -> Invitation | None:
        return await self._through(
            "take_invitation", self._inner.take_invitation, invitation_id, now=now
        )

    # revocation ledger

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
        return await self._through(
            "withdraw_keys",
            self._inner.withdraw_keys,
            vin,
            keys,
            status,
            expected=expected,
            before=before,
            until=until,
        )

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        return await self._through(
            "append_revocations", self._inner.append_revocations, vin, entries
        )

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        return await self._through(
            "renumber_revocations", self._inner.renumber_revocations, vin, since=since, above=above
        )

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        return await self._through("revocations", self._inner.revocations, vin, since=since)

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        return await self._through(
            "prune_revocations", self._inner.prune_revocations, vin, before=before
        )

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        return await self._through(
            "add_key",
            self._inner.add_key,
            key,
            holder=holder,
            counted_until=counted_until,
            limit=limit,
            now=now,
        )

    # remote commands

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        return await self._through("put_command", self._inner.put_command, command)

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self._through("command", self._inner.command, command_id)

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
        return await self._through(
            "set_command_status",
            self._inner.set_command_status,
            command_id,
            status,
            vin=vin,
            expected=expected,
            detail=detail,
            now=now,
        )

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        return await self._through("pending_commands", self._inner.pending_commands, vin, now=now)

    # audit events from cars

    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        return await self._through(
            "add_audit_batch", self._inner.add_audit_batch, vin, batch_id, events, now=now
        )

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        return await self._through("audit_events", self._inner.audit_events, vin)
