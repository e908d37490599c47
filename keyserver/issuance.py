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

from aiohttp import web

from keycore import ROLE_MAX_LIFETIME, RevokedHolder, RevokedToken, issue, sign_revocation_list
from keycore.cose import holder_id, load_point
from keycore.roles import from_mask
from keyserver import auth
from keyserver.app import CONFIG, HUB, KEYRING, METRICS, STORE
from keyserver.grants import load_schedule
from keyserver.http import ApiError
from keyserver.models import Device, KeyRecord, KeyStatus, RevocationEntry, RevocationKind

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
    (a token signed now would be dead on arrival)."""
    if any(k.device_id == device.device_id and k.status in _LIVE for k in keys):
        raise ApiError(409, "device_has_key", "this device already holds a key for the vehicle")
    _, cutoff = await holder_cutoff(app, key.vin, device.device_id)
    check_cutoff(cutoff, auth.now())
    await app[STORE].put_key(key)


def check_cutoff(cutoff: int, now: int) -> None:
    """A token signed before a holder entry's cutoff would be dead on arrival: wait for it."""
    if cutoff > now:
        raise ApiError(
            409, "too_soon", "this device's keys were withdrawn a moment ago; retry shortly",
            headers={"Retry-After": str(cutoff - now)},
        )  # fmt: skip


async def revoke_keys(app: web.Application, vin: str, keys: Iterable[KeyRecord]) -> int:
    """Revoke ``keys`` of vehicle ``vin`` for good and kill the tokens already issued from them.

    Each key becomes REVOKED (from active or suspended); then, for each of their devices, one
    holder entry ("every token of this device issued before T") is appended to the vehicle's
    ledger, T as the module docstring says. Keys already revoked are taken again: a retry after a
    lost answer, or after a crash between the two writes, still leaves the entry in place; but
    such a repeat adds no entry for a device that holds an active key on this vehicle by now (it
    would kill that newer key's tokens). Returns the ledger's sequence afterwards.

    Ownership transfer calls this with every key of the vehicle (``store.keys_of_vehicle``):
    the old owner's keys and those the old owner shared.
    """
    return await _withdraw(app, vin, keys, KeyStatus.REVOKED)


async def suspend_keys(app: web.Application, vin: str, keys: Iterable[KeyRecord]) -> int:
    """Suspend active ``keys`` (a lost phone) and kill their current tokens like ``revoke_keys``;
    revoked keys stay revoked. Resuming makes a key active again: tokens signed after the cutoff
    work, the ones from before stay dead."""
    return await _withdraw(app, vin, keys, KeyStatus.SUSPENDED)


async def _withdraw(
    app: web.Application, vin: str, keys: Iterable[KeyRecord], status: KeyStatus
) -> int:
    store = app[STORE]
    chosen = list(keys)
    if any(k.vin != vin for k in chosen):
        raise ValueError("every key must belong to the vehicle")
    expected = (KeyStatus.ACTIVE,) if status is KeyStatus.SUSPENDED else tuple(KeyStatus)
    for key in chosen:
        await store.set_key_status(key.key_id, status, expected=expected)
    changed = {k.device_id for k in chosen if k.status is not status}
    repeated = {k.device_id for k in chosen} - changed
    if repeated:  # a retry must not kill the tokens of a key the device got since
        live = {
            k.device_id for k in await store.keys_of_vehicle(vin) if k.status is KeyStatus.ACTIVE
        }
        repeated -= live
    cutoff = auth.now() + 1  # read after the status writes: see the module docstring
    entries = []
    for device_id in sorted(changed | repeated):
        hid = await _holder_id(app, device_id)
        if hid is not None:
            entries.append(
                RevocationEntry(
                    RevocationKind.HOLDER, hid, before=cutoff, until=cutoff + MAX_TOKEN_LIFETIME
                )
            )
    sequence = await store.append_revocations(vin, entries)
    if entries:  # a connected car gets the delta now (docs/protocol.md §17)
        app[HUB].revoked(vin, sequence)
    await store.prune_revocations(vin, before=cutoff - LEDGER_GRACE_S)
    return sequence


async def _holder_id(app: web.Application, device_id: str) -> bytes | None:
    device = await app[STORE].device(device_id)
    return None if device is None else holder_id(device.public_key)


async def revocation_list(
    app: web.Application, vin: str, *, since: int, now: int
) -> tuple[int, bytes | None]:
    """(the vehicle's sequence, its signed list): full for ``since`` = 0, else the delta after
    ``since``; None when nothing was ever revoked or nothing is newer than ``since``.

    Signed by the active issuer key. Raises ValueError when ``since`` is ahead of the sequence.
    """
    sequence, entries = await app[STORE].revocations(vin, since=since)
    if since > sequence:
        raise ValueError("since is ahead of the vehicle's sequence")
    if since == sequence:
        return sequence, None
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
    return sequence, document
