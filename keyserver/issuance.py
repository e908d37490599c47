"""Signing key tokens and lists, and who holds keys: the services the key and vehicle routes share.

``Issuer`` signs every key token (the active issuer key, counted by role) and cuts every signed
revocation list. ``Holders`` is the one place a vehicle gains a holder (``create_key``) and loses
one (``revoke_keys`` / ``suspend_keys``, which put holder entries into the vehicle's revocation
ledger and tell the channel hub, so a connected car gets the delta at once). Both receive what
they use; neither knows about HTTP: they raise ``keyserver.errors.Refused``.

Token times are whole seconds, so a holder entry's cutoff ("tokens issued before T") is taken
from the clock *after* the key's status has changed, plus one second: a refresh that read the key
as active just before cannot sign a token at or past the cutoff. The other side of that second is
``holder_cutoff``: a new token for a device is only signed once the clock has passed the latest
cutoff on that device, or the car would refuse it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import ROLE_MAX_LIFETIME, RevokedHolder, RevokedToken, issue, sign_revocation_list
from keycore.cose import holder_id, load_point
from keycore.revocation import MAX_REVOCATION_BYTES, MAX_VEHICLE_HOLDERS
from keycore.roles import from_mask
from keycore.token import MAX_TIME, KeyToken
from keyserver.clock import Clock
from keyserver.config import Config
from keyserver.errors import DeviceHasKey, SinceAhead, TooManyHolders, TooSoon
from keyserver.grants import load_schedule
from keyserver.hub import ChannelHub
from keyserver.keyring_reload import ServedKeyRing
from keyserver.models import (
    Device,
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    RevocationEntry,
    RevocationKind,
)
from keyserver.observability import Metrics
from keyserver.store import Store

#: A holder entry outlives every token it can match: no token lives longer than this.
MAX_TOKEN_LIFETIME = max(ROLE_MAX_LIFETIME.values())
#: Entries stay in the ledger this long after they end (cars whose clock lags still need them).
LEDGER_GRACE_S = 86_400
KEY_ID_BYTES = 16
_LIVE = (KeyStatus.ACTIVE, KeyStatus.SUSPENDED)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: bytes
    not_before: int
    expires: int
    refresh_after: int  # when the phone should ask for the next one (refresh-ahead)


def new_key_id() -> str:
    return secrets.token_urlsafe(KEY_ID_BYTES)


def token_window(key: KeyRecord, *, now: int, lifetime: int) -> tuple[int, int] | None:
    """(nbf, exp) of the token ``key`` may have at ``now``, or None outside its window.

    The token starts when the key does (so a guest can fetch it in advance and go offline) and
    lives ``lifetime``, but never past the key's end nor longer than keycore lets the role live
    measured from now: ``exp - min(now, nbf) <= ROLE_MAX_LIFETIME[role]``.
    """
    not_before = max(now, key.not_before)
    expires = min(not_before + lifetime, now + ROLE_MAX_LIFETIME[key.role], key.not_after)
    return (not_before, expires) if not_before < expires else None


def first_refresh(key: KeyRecord, *, now: int, lifetime: int) -> int:
    """When a key whose window has not come close enough yet can first get a full token."""
    return max(now, key.not_before + lifetime - ROLE_MAX_LIFETIME[key.role] + 1)


def refresh_after(not_before: int, expires: int, *, now: int, ahead: int) -> int:
    """``ahead`` seconds before expiry, but never before half the token's life: a role whose
    tokens live less than ``ahead`` would otherwise refresh at every chance."""
    return max(now, expires - min(ahead, (expires - not_before) // 2))


class Issuer:
    """Signs key tokens and revocation lists with the served ring's active issuer key."""

    def __init__(
        self, store: Store, keyring: ServedKeyRing, metrics: Metrics, settings: Config
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.metrics = metrics
        self.settings = settings

    def issue_token(
        self,
        key: KeyRecord,
        holder: bytes | ec.EllipticCurvePublicKey,
        *,
        now: int,
        max_lifetime: int | None = None,
        presented: KeyToken | None = None,
    ) -> IssuedToken | None:
        """A fresh token for ``key``, bound to the device key ``holder``; None outside the
        key's window. The caller checks the key is active and the device is the key's.

        ``max_lifetime`` caps the role's lifetime; ``presented`` (the degraded refresh) is the
        token the phone holds, whose entitlements and schedule the new one keeps."""
        lifetime = self.settings.lifetime(key.role)
        if max_lifetime is not None:
            lifetime = min(lifetime, max_lifetime)
        window = token_window(key, now=now, lifetime=lifetime)
        if window is None:
            return None
        not_before, expires = window
        if presented is None:
            entitlements, schedule = from_mask(key.entitlements), load_schedule(key.schedule)
        else:
            entitlements, schedule = presented.entitlements, presented.schedule
        token = issue(
            signer=self.keyring.ring.active.signer,
            vin=key.vin,
            holder=load_point(holder) if isinstance(holder, bytes) else holder,
            role=key.role,
            now=now,
            expires=expires,
            not_before=not_before,
            entitlements=entitlements,
            schedule=schedule,
        )
        self.metrics.tokens_issued.labels(key.role.name.lower()).inc()
        ahead = self.settings.refresh_ahead_s
        return IssuedToken(
            token, not_before, expires, refresh_after(not_before, expires, now=now, ahead=ahead)
        )

    async def revocation_list(self, vin: str, *, since: int, now: int) -> CutList:
        """The vehicle's signed list: full for ``since`` = 0, else the delta after ``since``; no
        document when nothing was ever revoked or nothing is newer than ``since``.

        Never a document the car would refuse: past ``MAX_LIST_ENTRIES`` entries the list stops
        at the last entry that fits, with that entry's sequence (``complete`` false: the next
        delta carries the rest). Signed by the active issuer key. Raises SinceAhead when
        ``since`` is ahead of the sequence.
        """
        sequence, entries = await self.store.revocations(vin, since=since)
        if since > sequence:
            raise SinceAhead("since is ahead of the vehicle's sequence")
        if since == sequence:
            return CutList(sequence, None)
        complete = len(entries) <= MAX_LIST_ENTRIES
        if not complete:
            entries = entries[:MAX_LIST_ENTRIES]
            sequence = entries[-1].sequence
        document = sign_revocation_list(
            self.keyring.ring.active.signer,
            vin=vin,
            sequence=sequence,
            now=now,
            base=since,
            tokens=[
                RevokedToken(e.subject, e.until) for e in entries if e.kind is RevocationKind.TOKEN
            ],
            holders=[
                RevokedHolder(e.subject, e.before, e.until)
                for e in entries
                if e.kind is RevocationKind.HOLDER
            ],
        )
        if len(document) > MAX_REVOCATION_BYTES:  # cannot happen with the bounds above
            raise RuntimeError(f"a revocation list of {len(document)} bytes for {vin}")
        return CutList(sequence, document, complete)


def check_cutoff(cutoff: int, now: int) -> None:
    """A token signed before a holder entry's cutoff would be dead on arrival: wait for it."""
    if cutoff > now:
        raise TooSoon(
            "this device's keys were withdrawn a moment ago; retry shortly",
            retry_after=cutoff - now,
        )


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What a suspension or revocation did: the ledger's sequence afterwards and the keys whose
    status changed (none for a repeat, which changes nothing at all)."""

    sequence: int
    changed: tuple[str, ...]


class Holders:
    """Who holds keys on a vehicle: keys are created and withdrawn here, and nowhere else.

    ``clock`` is read once more after a withdrawal's write (``_withdraw`` says why)."""

    def __init__(self, store: Store, hub: ChannelHub, clock: Clock) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock

    async def holder_cutoff(self, vin: str, device_id: str) -> tuple[int, int]:
        """(the vehicle's ledger sequence, the latest holder-entry cutoff on ``device_id`` or 0):
        tokens signed for the device before the cutoff are dead on arrival. Reads the whole ledger,
        so it is for the rare calls (new keys, resume), never for refresh."""
        sequence, entries = await self.store.revocations(vin)
        hid = await self._holder_id(device_id)
        cutoff = max(
            (e.before for e in entries if e.kind is RevocationKind.HOLDER and e.subject == hid),
            default=0,
        )
        return sequence, cutoff

    async def create_key(
        self, key: KeyRecord, device: Device, keys: Iterable[KeyRecord], *, now: int
    ) -> None:
        """Store the new ``key`` for ``device``, given the vehicle's ``keys``. Refused with
        DeviceHasKey if the device holds a live key on the vehicle, TooSoon until its latest
        cutoff has passed (a token signed at ``now`` would be dead on arrival), TooManyHolders
        if the vehicle has ``MAX_VEHICLE_HOLDERS`` holders already (the bound on its revocation
        list, docs/protocol.md §12.1). This is the one place a vehicle gains a holder."""
        if any(k.device_id == device.device_id and k.status in _LIVE for k in keys):
            raise DeviceHasKey("this device already holds a key for the vehicle")
        _, cutoff = await self.holder_cutoff(key.vin, device.device_id)
        check_cutoff(cutoff, now)
        # Counted until the last ledger entry a withdrawal of this key could make has been pruned.
        counted_until = min(MAX_TIME, key.not_after + MAX_TOKEN_LIFETIME + LEDGER_GRACE_S + 1)
        added = await self.store.add_key(
            key,
            holder=holder_id(device.public_key),
            counted_until=counted_until,
            limit=MAX_VEHICLE_HOLDERS,
            now=now,
        )
        if added is KeyAdded.DEVICE_HAS_KEY:  # another request for this device got there first
            raise DeviceHasKey("this device already holds a key for the vehicle")
        if added is KeyAdded.TOO_MANY_HOLDERS:
            raise TooManyHolders(
                f"this vehicle has keys for {MAX_VEHICLE_HOLDERS} phones already, counting phones "
                f"whose keys ended in the last {(MAX_TOKEN_LIFETIME + LEDGER_GRACE_S) // 86_400} "
                "days; revoke a key you no longer need (its place frees once its revocation has "
                "expired)"
            )

    async def revoke_keys(self, vin: str, keys: Iterable[KeyRecord], *, now: int) -> Withdrawn:
        """Revoke ``keys`` of vehicle ``vin`` for good and kill the tokens already issued from them.

        In one atomic store step (``Store.withdraw_keys``) each key not yet revoked becomes REVOKED
        and its device's holder entry ("every token of this device issued before T", T as the
        module docstring says) is merged into the vehicle's ledger, which keeps one entry per
        holder. A key already revoked changes nothing — no entry, no new sequence — and since the
        status and the entry change together, "already revoked" always means "already in the
        ledger": repeating a revocation cannot grow the list a car reads (G7).

        Ownership transfer calls this with every key of the vehicle (``store.keys_of_vehicle``):
        the old owner's keys and those the old owner shared.
        """
        return await self._withdraw(vin, keys, KeyStatus.REVOKED, now=now)

    async def suspend_keys(self, vin: str, keys: Iterable[KeyRecord], *, now: int) -> Withdrawn:
        """Suspend active ``keys`` (a lost phone) and kill their current tokens like
        ``revoke_keys``; revoked or suspended keys stay as they are. Resuming makes a key active
        again: tokens signed after the cutoff work, the ones from before stay dead."""
        return await self._withdraw(vin, keys, KeyStatus.SUSPENDED, now=now)

    async def _withdraw(
        self, vin: str, keys: Iterable[KeyRecord], status: KeyStatus, *, now: int
    ) -> Withdrawn:
        store = self.store
        chosen = list(keys)
        if any(k.vin != vin for k in chosen):
            raise ValueError("every key must belong to the vehicle")
        expected = (KeyStatus.ACTIVE,) if status is KeyStatus.SUSPENDED else tuple(KeyStatus)
        withdrawals = [
            # a key whose window has ended has no live token: it needs no entry
            KeyWithdrawal(
                k.key_id,
                k.device_id,
                await self._holder_id(k.device_id) if k.not_after > now else None,
            )
            for k in chosen
        ]
        # Every key goes to the store, whatever status the caller saw: the store's own atomic step
        # decides (a status noted locally during an outage, say, is not yet the store's).
        cutoff = now + 1
        sequence, changed = await store.withdraw_keys(
            vin, withdrawals, status, expected=expected, before=cutoff,
            until=cutoff + MAX_TOKEN_LIFETIME,
        )  # fmt: skip
        # A refresh reads the clock before the key's status (keyserver.routes.keys.refresh), so a
        # refresh that saw the key live read a time before the write above finished. If the clock
        # has moved on since ``now``, the cutoff moves with it, or such a token could outlive it.
        # (This second read is the point: the request's ``now`` is from before the write.)
        later = self.clock() + 1
        holders = {w.holder for w in withdrawals if w.key_id in changed and w.holder is not None}
        if later > cutoff and holders:
            sequence = await store.append_revocations(
                vin,
                [
                    RevocationEntry(
                        RevocationKind.HOLDER, h, before=later, until=cutoff + MAX_TOKEN_LIFETIME
                    )
                    for h in sorted(holders)
                ],
            )
        if holders:  # a connected car gets the delta now (docs/protocol.md §17)
            self.hub.revoked(vin, sequence)
        await store.prune_revocations(vin, before=cutoff - LEDGER_GRACE_S)
        return Withdrawn(sequence, tuple(changed))

    async def _holder_id(self, device_id: str) -> bytes | None:
        device = await self.store.device(device_id)
        return None if device is None else holder_id(device.public_key)


#: Entries per signed list at most: a holder entry encodes in at most 40 bytes, so a list of
#: this many stays under ``MAX_REVOCATION_BYTES`` with room to spare. The ledger's own bound
#: (``MAX_VEHICLE_HOLDERS``) keeps every list far below it; this is the second wall.
MAX_LIST_ENTRIES = 4_096


class CutList(NamedTuple):
    """A list cut from the ledger: the sequence it brings the car to, the signed document (None
    when there is nothing to send) and whether that is the ledger's head."""

    sequence: int
    document: bytes | None
    complete: bool = True
