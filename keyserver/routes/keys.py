"""Keys: the owner's own keys, sharing by invitation, suspend/resume/revoke, token refresh, and
the signed revocation lists that phones carry to cars.

Every call needs a bearer session; every call that changes who can open a car or signs a token
also needs a device proof (PK-Device-Proof) by one of the caller's enrolled devices. Who may do
what, for the vehicle's owner, a holder of a key on it, and anyone else:

    operation                              owner         holder            anyone else
    issue an owner key to an own device    yes           403 not_owner     404
    share (invitation)                     yes           403 not_owner     404
    accept an invitation                   no (own)      yes               yes
    list keys                              all keys      its own keys      404
    suspend / resume a key                 yes           403 not_owner     404
    revoke a key                           yes           its own only      404
    revoke a device's / account's keys     yes           403 not_owner     404
    refresh a token                        from the key's own device only, while active and in
                                           its window
    read the revocation list               yes           with an active key, else 404

A device holds at most one live (active or suspended) key per vehicle, so a holder entry in the
revocation list ("every token of this device issued before T") is exactly that key's revocation.
Token times are whole seconds, so a device whose keys were withdrawn this very second gets no new
key or resumed key until the next one (409 too_soon with Retry-After; keyserver.issuance).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from keycore import ROLE_ENTITLEMENTS, Role
from keycore.request_proof import HEADER
from keycore.roles import to_mask
from keyserver import acceptance, auth, fields, ratelimit
from keyserver.clock import request_now
from keyserver.errors import InvitationNotFound, Refused, StoreUnavailable
from keyserver.grants import OPEN_END, key_view, parse_grant
from keyserver.http import CBOR, ApiError, parse_json_object, read_body
from keyserver.issuance import check_cutoff, first_refresh, new_key_id
from keyserver.models import Device, Invitation, KeyRecord, KeyStatus, Vehicle
from keyserver.resources import SERVICES, Services
from keyserver.routes import keys_degraded, keys_openapi
from keyserver.store import Store

PATHS = keys_openapi.PATHS
SCHEMAS = keys_openapi.SCHEMAS

DAY = 86_400
DEFAULT_INVITATION_TTL_S = 3 * DAY
MIN_INVITATION_TTL_S, MAX_INVITATION_TTL_S = 60, 7 * DAY
INVITATION_FIELDS = (
    "role", "entitlements", "not_before", "not_after", "schedule", "invitation_ttl_s",
)  # fmt: skip
SEQUENCE_HEADER = "PK-Revocation-Sequence"
MAX_SEQUENCE = 2**63 - 1
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SINCE = re.compile(r"[0-9]{1,19}")


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/keys/{key_id}/token", refresh)  # first: the busiest route
    app.router.add_post("/v1/vehicles/{vin}/keys", issue_owner_key)
    app.router.add_get("/v1/vehicles/{vin}/keys", list_keys)
    app.router.add_post("/v1/vehicles/{vin}/invitations", invite)
    app.router.add_post("/v1/invitations/{invitation_id}/accept", accept)
    app.router.add_post("/v1/keys/{key_id}/suspend", suspend)
    app.router.add_post("/v1/keys/{key_id}/resume", resume)
    app.router.add_post("/v1/keys/{key_id}/revoke", revoke)
    app.router.add_post("/v1/vehicles/{vin}/revocations", revoke_holder)
    app.router.add_get("/v1/vehicles/{vin}/revocations", revocations)


@ratelimit.limited(ratelimit.WRITES)
async def issue_owner_key(request: web.Request) -> web.Response:
    """The owner gives one of its own devices an owner key, and its first token."""
    caller, body, _ = await _signed(request, takes_body=True)
    await ratelimit.check(request, account=caller.account_id)
    device_id = _device_id(fields.exact(body, ("device_id",)))
    vehicle, keys = await _vehicle_for(request, caller)
    _require_owner(vehicle, caller)
    device = await _own_device(request, caller, device_id)
    services, now = request.app[SERVICES], request_now(request)
    key = KeyRecord(
        key_id=new_key_id(),
        vin=vehicle.vin,
        account_id=caller.account_id,
        device_id=device.device_id,
        role=Role.OWNER,
        entitlements=to_mask(ROLE_ENTITLEMENTS[Role.OWNER]),
        not_before=now,
        not_after=OPEN_END,
        schedule=None,
        status=KeyStatus.ACTIVE,
        created_at=now,
    )
    await services.holders.create_key(key, device, keys, now=now)
    # the cutoff check passed at ``now``: a token signed at ``now`` is not before it
    issued = services.issuer.issue_token(key, device.public_key, now=now)
    assert issued is not None  # an owner key's window starts now and has no end
    return web.json_response(keys_degraded.token_view(key, issued), status=201)


@ratelimit.limited(ratelimit.WRITES)
async def invite(request: web.Request) -> web.Response:
    """The owner offers a key (role, actions, window, schedule) that another account accepts."""
    caller, body, _ = await _signed(request, takes_body=True)
    await ratelimit.check(request, account=caller.account_id)
    _known_fields(body, INVITATION_FIELDS)
    vehicle, _ = await _vehicle_for(request, caller)
    _require_owner(vehicle, caller)
    now = request_now(request)
    grant = parse_grant(body, now=now)
    ttl = body.get("invitation_ttl_s", DEFAULT_INVITATION_TTL_S)
    if type(ttl) is not int or not MIN_INVITATION_TTL_S <= ttl <= MAX_INVITATION_TTL_S:
        raise fields.invalid(
            "invitation_ttl_s", f"seconds, {MIN_INVITATION_TTL_S}…{MAX_INVITATION_TTL_S}"
        )
    invitation = Invitation(
        invitation_id=secrets.token_urlsafe(16),
        vin=vehicle.vin,
        inviter_id=caller.account_id,
        role=grant.role,
        entitlements=grant.entitlements,
        not_before=grant.not_before,
        not_after=grant.not_after,
        schedule=grant.schedule,
        expires_at=min(now + ttl, grant.not_after),  # no use accepting a key that has ended
    )
    await _store(request).put_invitation(invitation)
    return web.json_response(
        {"invitation_id": invitation.invitation_id, "expires_at": invitation.expires_at},
        status=201,
    )


@ratelimit.limited(ratelimit.WRITES)
async def accept(request: web.Request) -> web.Response:
    """The recipient takes an invitation (once) for one of its devices and gets the key.
    With the store down the acceptance is journaled (keyserver.acceptance)."""
    services, now = request.app[SERVICES], request_now(request)
    store = services.store
    caller, body, _ = await _signed(request, takes_body=True)
    await ratelimit.check(request, account=caller.account_id)
    device = await _own_device(request, caller, _device_id(fields.exact(body, ("device_id",))))
    invitation_id = request.match_info["invitation_id"]
    if not _ID.fullmatch(invitation_id):
        raise InvitationNotFound(acceptance.NOT_FOUND_MESSAGE)
    accepted = acceptance.Acceptance(
        invitation_id, caller.account_id, device.device_id, new_key_id()
    )
    try:
        taken = await store.take_invitation(invitation_id, now=now)
    except StoreUnavailable:  # must not be lost: journaled, decided when the store is back
        return await keys_degraded.pending_acceptance(services, accepted, None, now=now)
    if taken is None:
        raise InvitationNotFound(acceptance.NOT_FOUND_MESSAGE)
    try:
        key = await services.acceptor.grant(taken, accepted, device, now=now)
    except Refused as refused:
        if not isinstance(refused, InvitationNotFound):  # refused before use: may try again
            await store.put_invitation(taken)
        raise
    except StoreUnavailable:  # taken already: the journal keeps the invitation itself
        return await keys_degraded.pending_acceptance(services, accepted, taken, now=now)
    # the cutoff check passed at ``now``, as for an owner key
    issued = services.issuer.issue_token(key, device.public_key, now=now)
    if issued is None:  # the key starts too far ahead for any token yet
        lifetime = services.config.lifetime(key.role)
        view: dict[str, Any] = {
            "key_id": key.key_id,
            "role": key.role.name.lower(),
            "token": None,
            "token_not_before": None,
            "token_expires_at": None,
            "refresh_after": first_refresh(key, now=now, lifetime=lifetime),
        }
    else:
        view = keys_degraded.token_view(key, issued)
    return web.json_response(view, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """Every key of the vehicle for its owner; a holder sees its own keys only."""
    caller = await auth.require_session(request, _store(request))
    vehicle, keys = await _vehicle_for(request, caller)
    if vehicle.owner_id != caller.account_id:
        keys = [k for k in keys if k.account_id == caller.account_id]
    return web.json_response({"vin": vehicle.vin, "keys": [key_view(k) for k in keys]})


@ratelimit.limited(ratelimit.WITHDRAWALS)
async def suspend(request: web.Request) -> web.Response:
    """The owner suspends a key (a lost phone): its tokens die on cars that get the list."""
    caller, _, _ = await _signed(request, takes_body=False)
    await ratelimit.check(request, account=caller.account_id)
    key = await _key_for(request, caller, holder_may=False)
    if key.status is KeyStatus.REVOKED:
        raise ApiError(409, "key_revoked", "the key is revoked for good")
    if key.status is KeyStatus.SUSPENDED:  # a repeat changes nothing, not even the journal
        return await _key_unchanged(request, key)
    try:
        done = await _services(request).holders.suspend_keys(
            key.vin, [key], now=request_now(request)
        )
    except StoreUnavailable:  # must not be lost: journaled, and connected cars are told now
        return await keys_degraded.journaled(
            _services(request), request_now(request), key.vin, [key], KeyStatus.SUSPENDED
        )
    return await _key_change(request, key.key_id, done.sequence, changed=bool(done.changed))


@ratelimit.limited(ratelimit.WRITES)
async def resume(request: web.Request) -> web.Response:
    """The owner makes a suspended key active again; tokens signed from now on work."""
    services = request.app[SERVICES]
    store = services.store
    caller, _, _ = await _signed(request, takes_body=False)
    await ratelimit.check(request, account=caller.account_id)
    key = await _key_for(request, caller, holder_may=False)
    if key.status is KeyStatus.REVOKED:
        raise ApiError(409, "key_revoked", "the key is revoked for good")
    sequence, cutoff = await services.holders.holder_cutoff(key.vin, key.device_id)
    changed = False
    if key.status is KeyStatus.SUSPENDED:
        check_cutoff(cutoff, request_now(request))
        expected = (KeyStatus.SUSPENDED,)
        changed = await store.set_key_status(key.key_id, KeyStatus.ACTIVE, expected=expected)
        if not changed:
            current = await store.key(key.key_id)
            if current is None or current.status is KeyStatus.REVOKED:
                raise ApiError(409, "key_revoked", "the key is revoked for good")
    return await _key_change(request, key.key_id, sequence, changed=changed)


@ratelimit.limited(ratelimit.WITHDRAWALS)
async def revoke(request: web.Request) -> web.Response:
    """Revoke a key for good: the owner any key, a holder its own."""
    caller, _, _ = await _signed(request, takes_body=False)
    await ratelimit.check(request, account=caller.account_id)
    key = await _key_for(request, caller, holder_may=True)
    if key.status is KeyStatus.REVOKED:  # a repeat changes nothing, not even the journal
        return await _key_unchanged(request, key)
    try:
        done = await _services(request).holders.revoke_keys(
            key.vin, [key], now=request_now(request)
        )
    except StoreUnavailable:
        return await keys_degraded.journaled(
            _services(request), request_now(request), key.vin, [key], KeyStatus.REVOKED
        )
    return await _key_change(request, key.key_id, done.sequence, changed=bool(done.changed))


@ratelimit.limited(ratelimit.WITHDRAWALS)
async def revoke_holder(request: web.Request) -> web.Response:
    """The owner revokes every key of one device, or of one account, on the vehicle."""
    caller, body, _ = await _signed(request, takes_body=True)
    await ratelimit.check(request, account=caller.account_id)
    _known_fields(body, ("device_id", "account_id"))
    if len(body) != 1:
        raise ApiError(400, "missing_field", "give exactly one of 'device_id' and 'account_id'")
    vehicle, keys = await _vehicle_for(request, caller)
    _require_owner(vehicle, caller)
    if "device_id" in body:
        device_id = _device_id(body)
        chosen = [k for k in keys if k.device_id == device_id]
    else:
        account_id = fields.string(body, "account_id")
        chosen = [k for k in keys if k.account_id == account_id]
    if not chosen:
        raise ApiError(404, "unknown_key", "no keys of this holder on this vehicle")
    if all(k.status is KeyStatus.REVOKED for k in chosen):  # a repeat changes nothing
        return web.json_response(
            {
                "revoked": [k.key_id for k in chosen],
                "revocation_sequence": await _sequence_or_none(request, vehicle.vin),
                "changed": False,
            }
        )
    try:
        done = await _services(request).holders.revoke_keys(
            vehicle.vin, chosen, now=request_now(request)
        )
    except StoreUnavailable:
        return await keys_degraded.journaled(
            _services(request), request_now(request), vehicle.vin, chosen, KeyStatus.REVOKED
        )
    return web.json_response(
        {
            "revoked": [k.key_id for k in chosen],
            "revocation_sequence": done.sequence,
            "changed": bool(done.changed),
        }
    )


@ratelimit.exempt(
    "the hot path (G1): it signs a token and spends a nonce that expires within the proof skew,"
    " grows nothing, and is protected by admission control (keyserver.admission)"
)
async def refresh(request: web.Request) -> web.Response:
    """A fresh token for the key's own device, while the key is active and within its window.

    The hot path: session, device proof and key come from one store operation (auth)."""
    services = request.app[SERVICES]
    config = services.config
    key_id = request.match_info["key_id"]
    # The token's time is read before the key's status: a revocation that lands after the read
    # takes its cutoff from a later clock, so this token is always before it
    # (keyserver.issuance.Holders._withdraw; tests/keyserver/test_revoke_race.py).
    now = request_now(request)
    try:
        holder = await auth.require_key_holder(
            request,
            services.store,
            services.device_keys,
            key_id=key_id if _ID.fullmatch(key_id) else None,
            max_body_bytes=config.max_body_bytes,
            max_skew=config.proof_max_skew_s,
        )
    except StoreUnavailable:  # a fresh token from the key ring, on the token presented
        return await keys_degraded.refresh_without_store(request, key_id)
    # the current token, which the phone sends for the degraded path, is not needed here
    keys_degraded.token_field(parse_json_object(holder.body) if holder.body else {})
    caller, device, key = holder.caller, holder.device, holder.key
    if key is None or key.account_id != caller.account_id:
        raise ApiError(404, "unknown_key", "no such key among the caller's")
    if device.device_id != key.device_id:
        raise ApiError(403, "wrong_device", "only the key's own device can refresh its token")
    if key.status is KeyStatus.SUSPENDED:
        raise ApiError(403, "key_suspended", "the key is suspended; ask the owner to resume it")
    if key.status is KeyStatus.REVOKED:
        raise ApiError(403, "key_revoked", "the key is revoked")
    issued = services.issuer.issue_token(key, device.public_key, now=now)
    if issued is None:
        raise ApiError(403, "key_not_valid_now", "the key's validity window excludes now")
    return web.json_response(keys_degraded.token_view(key, issued))


async def revocations(request: web.Request) -> web.Response:
    """The vehicle's signed revocation list (CBOR): full, or the delta after ``since``.

    Readable by the owner, by holders of an active key (phones carry lists to cars), and by the
    car itself (a vehicle proof, device id = the VIN, and no bearer session)."""
    services = request.app[SERVICES]
    store = services.store
    vin = fields.path_vin(request)
    raw_since = request.query.get("since", "0")
    if not _SINCE.fullmatch(raw_since) or int(raw_since) > MAX_SEQUENCE:
        raise ApiError(400, "invalid_since", "since must be a sequence number, 0 for a full list")
    since = int(raw_since)
    if "Authorization" not in request.headers and HEADER in request.headers:
        skew = services.config.proof_max_skew_s
        await auth.require_vehicle_proof(request, store, vin, b"", max_skew=skew)
    else:
        caller = await auth.require_session(request, store)
        vehicle = await store.vehicle(vin)
        if vehicle is None or (
            vehicle.owner_id != caller.account_id
            and not any(
                k.account_id == caller.account_id and k.status is KeyStatus.ACTIVE
                for k in await store.keys_of_vehicle(vin)
            )
        ):
            raise ApiError(404, "unknown_vehicle", "no such vehicle among the caller's")
    now = request_now(request)
    sequence, document, _ = await services.issuer.revocation_list(vin, since=since, now=now)
    headers = {SEQUENCE_HEADER: str(sequence)}
    if document is None:  # nothing ever revoked, or nothing newer than since
        return web.Response(status=204, headers=headers)
    return web.Response(body=document, content_type=CBOR, headers=headers)


# shared steps


async def _signed(
    request: web.Request, *, takes_body: bool
) -> tuple[auth.Caller, dict[str, Any], Device]:
    """Session, then the body (read once, bounded), then the device proof over those bytes."""
    services = request.app[SERVICES]
    config, store = services.config, services.store
    caller = await auth.require_session(request, store)
    raw = b""
    if takes_body or request.body_exists:
        raw = await read_body(request, config.max_body_bytes)
    device = await auth.require_device_proof(
        request, store, caller, raw, max_skew=config.proof_max_skew_s
    )
    assert device is not None  # not an enrolment
    body = parse_json_object(raw) if takes_body or raw else {}
    if not takes_body:
        _known_fields(body, ())
    return caller, body, device


async def _vehicle_for(
    request: web.Request, caller: auth.Caller
) -> tuple[Vehicle, list[KeyRecord]]:
    """The vehicle in the path and its keys, if the caller owns it or holds a key on it."""
    store = _store(request)
    vin = fields.path_vin(request)
    vehicle = await store.vehicle(vin)
    keys = [] if vehicle is None else await store.keys_of_vehicle(vin)
    if vehicle is None or (
        vehicle.owner_id != caller.account_id
        and not any(k.account_id == caller.account_id for k in keys)
    ):
        raise ApiError(404, "unknown_vehicle", "no such vehicle among the caller's")
    return vehicle, keys


def _require_owner(vehicle: Vehicle, caller: auth.Caller) -> None:
    if vehicle.owner_id != caller.account_id:
        raise ApiError(403, "not_owner", "only the vehicle's owner manages its keys")


async def _key_for(request: web.Request, caller: auth.Caller, *, holder_may: bool) -> KeyRecord:
    """The key in the path, if the caller owns its vehicle (or holds it, when ``holder_may``)."""
    store = _store(request)
    key_id = request.match_info["key_id"]
    key = await store.key(key_id) if _ID.fullmatch(key_id) else None
    if key is None:
        raise ApiError(404, "unknown_key", "no such key")
    vehicle = await store.vehicle(key.vin)
    if vehicle is not None and vehicle.owner_id == caller.account_id:
        return key
    if holder_may and key.account_id == caller.account_id:
        return key
    if any(k.account_id == caller.account_id for k in await store.keys_of_vehicle(key.vin)):
        raise ApiError(403, "not_owner", "only the vehicle's owner manages this key")
    raise ApiError(404, "unknown_key", "no such key")


async def _own_device(request: web.Request, caller: auth.Caller, device_id: str) -> Device:
    device = await _store(request).device(device_id)
    if device is None or device.account_id != caller.account_id:
        raise ApiError(403, "unknown_device", "no such device on this account")
    return device


async def _key_change(
    request: web.Request, key_id: str, sequence: int, *, changed: bool
) -> web.Response:
    key = await _store(request).key(key_id)
    if key is None:
        raise ApiError(404, "unknown_key", "no such key")
    return web.json_response(
        {"key": key_view(key), "revocation_sequence": sequence, "changed": changed}
    )


async def _key_unchanged(request: web.Request, key: KeyRecord) -> web.Response:
    """The key is in the asked state already: 200, ``changed`` false, and nothing written —
    the journal included, so repeating a request during an outage cannot grow it either."""
    return web.json_response(
        {
            "key": key_view(key),
            "revocation_sequence": await _sequence_or_none(request, key.vin),
            "changed": False,
        }
    )


async def _sequence_or_none(request: web.Request, vin: str) -> int | None:
    """The vehicle's ledger sequence, or None while the store cannot say."""
    try:
        sequence, _ = await _store(request).revocations(vin, since=MAX_SEQUENCE)
    except StoreUnavailable:
        return None
    return sequence


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _store(request: web.Request) -> Store:
    return request.app[SERVICES].store


def _known_fields(body: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for name in body:
        if name not in names:
            raise ApiError(400, "unknown_field", f"unknown field {name[:64]!r}")


def _device_id(body: Mapping[str, Any]) -> str:
    device_id = fields.string(body, "device_id")
    if not _ID.fullmatch(device_id):
        raise fields.invalid("device_id", "a device id")
    return device_id
