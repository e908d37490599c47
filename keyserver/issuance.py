"""Signing key tokens and withdrawing keys: what the key routes and the vehicle routes share.

Every token the keyserver signs comes from ``issue_token`` (the active issuer key, counted by
role). Every suspension and revocation goes through ``suspend_keys`` / ``revoke_keys``, which put
holder entries into the vehicle's revocation ledger and tell the channel hub (so a connected car
gets the delta at once), and every list is cut by ``revocation_list``.

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

from aiohttp import web

from keycore import ROLE_MAX_LIFETIME, RevokedHolder, RevokedToken, issue, sign_revocation_list
from keycore.cose import holder_id, load_point
from keycore.revocation import MAX_REVOCATION_BYTES, MAX_VEHICLE_HOLDERS
from keycore.roles import from_mask
from keycore.token import MAX_TIME
from keyserver import auth
from keyserver.app import CONFIG, HUB, KEYRING, METRICS, STORE
from keyserver.grants import load_schedule
from keyserver.http import ApiError
from keyserver.models import (
    Device,
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    RevocationEntry,
    RevocationKind,
)

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


def issue_token(
    app: web.Application, key: KeyRecord, holder_xy: bytes, *, now: int
) -> IssuedToken | None:
    """A fresh token for ``key``, bound to the device key ``holder_xy``; None outside the key's
    window. The caller checks the key is active and the device is the key's."""
    config = app[CONFIG]
    lifetime = config.lifetime(key.role)
    window = token_window(key, now=now, lifetime=lifetime)
    if window is None:
        return None
    not_before, expires = window
    token = issue(
        signer=app[KEYRING].ring.active.signer,
        vin=key.vin,
        holder=load_point(holder_xy),
        role=key.role,
        now=now,
        expires=expires,
        not_before=not_before,
        entitlements=from_mask(key.entitlements),
        schedule=load_schedule(key.schedule),
    )
    app[METRICS].tokens_issued.labels(key.role.name.lower()).inc()
    return IssuedToken(
        token,
        not_before,
        expires,
        refresh_after(not_before, expires, now=now, ahead=config.refresh_ahead_s),
    )


async def holder_cutoff(app: web.Application, vin: str, device_id: str) -> tuple[int, int]:
    """(the vehicle's ledger sequence, the latest holder-entry cutoff on ``device_id`` or 0):
    tokens signed for the device before the cutoff are dead on arrival. Reads the whole ledger,
    so it is for the rare calls (new keys, resume), never for refresh."""
    sequence, entries = await app[STORE].revocations(vin)
    hid = await _holder_id(app, device_id)
    cutoff = max(
        (e.before for e in entries if e.kind is RevocationKind.HOLDER and e.subject == hid),
        default=0,
    )
    return sequence, cutoff


async def create_key(
    app: web.Application, key: KeyRecord, device: Device, keys: Iterable[KeyRecord]
) -> None:
    """Store the new ``key`` for ``device``, given the vehicle's ``keys``: 409 device_has_key if
    the device holds a live key on the vehicle, 409 too_soon until its latest cutoff has passed
    (a token signed now would be dead on arrival), 409 too_many_holders if the vehicle has
    ``MAX_VEHICLE_HOLDERS`` holders already (the bound on its revocation list, docs/protocol.md
    §12.1). Every key is created here: this is the one place a vehicle gains a holder."""
    if any(k.device_id == device.device_id and k.status in _LIVE for k in keys):
        raise ApiError(409, "device_has_key", "this device already holds a key for the vehicle")
    _, cutoff = await holder_cutoff(app, key.vin, device.device_id)
    now = auth.now()
    check_cutoff(cutoff, now)
    # Counted until the last ledger entry a withdrawal of this key could make has been pruned.
    counted_until = min(MAX_TIME, key.not_after + MAX_TOKEN_LIFETIME + LEDGER_GRACE_S + 1)
    added = await app[STORE].add_key(
        key,
        holder=holder_id(device.public_key),
        counted_until=counted_until,
        limit=MAX_VEHICLE_HOLDERS,
        now=now,
    )
    if added is KeyAdded.DEVICE_HAS_KEY:  # another request for this device got there first
        raise ApiError(409, "device_has_key", "this device already holds a key for the vehicle")
    if added is KeyAdded.TOO_MANY_HOLDERS:
        raise ApiError(
            409, "too_many_holders",
            f"this vehicle has keys for {MAX_VEHICLE_HOLDERS} phones already, counting phones "
            f"whose keys ended in the last {(MAX_TOKEN_LIFETIME + LEDGER_GRACE_S) // 86_400} "
            "days; revoke a key you no longer need (its place frees once its revocation has "
            "expired)",
        )  # fmt: skip


def check_cutoff(cutoff: int, now: int) -> None:
    """A token signed before a holder entry's cutoff would be dead on arrival: wait for it."""
    if cutoff > now:
        raise ApiError(
            409, "too_soon", "this device's keys were withdrawn a moment ago; retry shortly",
            headers={"Retry-After": str(cutoff - now)},
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What a suspension or revocation did: the ledger's sequence afterwards and the keys whose
    status changed (none for a repeat, which changes nothing at all)."""

    sequence: int
    changed: tuple[str, ...]


async def revoke_keys(app: web.Application, vin: str, keys: Iterable[KeyRecord]) -> Withdrawn:
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
    return await _withdraw(app, vin, keys, KeyStatus.REVOKED)


async def suspend_keys(app: web.Application, vin: str, keys: Iterable[KeyRecord]) -> Withdrawn:
    """Suspend active ``keys`` (a lost phone) and kill their current tokens like ``revoke_keys``;
    revoked or suspended keys stay as they are. Resuming makes a key active again: tokens
    signed after the cutoff work, the ones from before stay dead."""
    return await _withdraw(app, vin, keys, KeyStatus.SUSPENDED)


async def _withdraw(
    app: web.Application, vin: str, keys: Iterable[KeyRecord], status: KeyStatus
) -> Withdrawn:
    store = app[STORE]
    chosen = list(keys)
    if any(k.vin != vin for k in chosen):
        raise ValueError("every key must belong to the vehicle")
    expected = (KeyStatus.ACTIVE,) if status is KeyStatus.SUSPENDED else tuple(KeyStatus)
    now = auth.now()
    withdrawals = [
        # a key whose window has ended has no live token: it needs no entry
        KeyWithdrawal(
            k.key_id,
            k.device_id,
            await _holder_id(app, k.device_id) if k.not_after > now else None,
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
    later = auth.now() + 1
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
        app[HUB].revoked(vin, sequence)
    await store.prune_revocations(vin, before=cutoff - LEDGER_GRACE_S)
    return Withdrawn(sequence, tuple(changed))


async def _holder_id(app: web.Application, device_id: str) -> bytes | None:
    device = await app[STORE].device(device_id)
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


async def revocation_list(app: web.Application, vin: str, *, since: int, now: int) -> CutList:
    """The vehicle's signed list: full for ``since`` = 0, else the delta after ``since``; no
    document when nothing was ever revoked or nothing is newer than ``since``.

    Never a document the car would refuse: past ``MAX_LIST_ENTRIES`` entries the list stops at
    the last entry that fits, with that entry's sequence (``complete`` false: the next delta
    carries the rest). Signed by the active issuer key. Raises ValueError when ``since`` is
    ahead of the sequence.
    """
    sequence, entries = await app[STORE].revocations(vin, since=since)
    if since > sequence:
        raise ValueError("since is ahead of the vehicle's sequence")
    if since == sequence:
        return CutList(sequence, None)
    complete = len(entries) <= MAX_LIST_ENTRIES
    if not complete:
        entries = entries[:MAX_LIST_ENTRIES]
        sequence = entries[-1].sequence
    document = sign_revocation_list(
        app[KEYRING].ring.active.signer,
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
    if len(document) > MAX_REVOCATION_BYTES:  # cannot happen with the bounds above: fail loudly
        raise RuntimeError(f"a revocation list of {len(document)} bytes for {vin}")
    return CutList(sequence, document, complete)
