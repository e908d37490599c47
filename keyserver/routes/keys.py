"""Keys: the owner's own keys, the key list, token refresh, and the signed revocation lists that
phones carry to cars. Sharing is in keyserver.routes.sharing, withdrawing keys in
keyserver.routes.revocation; who may do what is in keyserver.routes.key_access.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from keycore import ROLE_ENTITLEMENTS, Role
from keycore.request_proof import HEADER
from keycore.roles import to_mask
from keyserver import auth, fields, openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.bodies import Body, Id
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import StoreUnavailable
from keyserver.grants import OPEN_END, key_view
from keyserver.http import CBOR, ApiError
from keyserver.issuance import MAX_TOKEN_LIFETIME, new_key_id
from keyserver.models import KeyRecord, KeyStatus
from keyserver.resources import SERVICES
from keyserver.routes import keys_degraded
from keyserver.routes.key_access import (
    ID,
    MAX_SEQUENCE,
    own_device,
    require_owner,
    signed,
    store_of,
    vehicle_for,
)
from keyserver.routes.keys_degraded import RefreshRequest
from keyserver.routes.keys_openapi import (
    BAD_BODY,
    BEARER,
    COMMON,
    KEY_PARAM,
    READ,
    SEQUENCE_HEADERS,
    SIGNED,
    TOO_MANY,
    TOO_SOON,
    VIN_PARAM,
    conflict,
)
from keyserver.routes.keys_openapi import SCHEMAS as SCHEMAS
from keyserver.routing import Route

SEQUENCE_HEADER = "PK-Revocation-Sequence"
_SEQUENCE = re.compile(r"[0-9]{1,19}")


class KeyIssueRequest(Body):
    device_id: Annotated[Id, Field(description="a device id")]


async def issue_owner_key(request: web.Request) -> web.Response:
    """The owner gives one of its own devices an owner key, and its first token."""
    caller, body, _ = await signed(request, KeyIssueRequest)
    await ratelimit.check(request, account=caller.account_id)
    vehicle, keys = await vehicle_for(request, caller)
    require_owner(vehicle, caller)
    device = await own_device(request, caller, body.device_id)
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


async def list_keys(request: web.Request) -> web.Response:
    """Every key of the vehicle for its owner; a holder sees its own keys only."""
    caller = await auth.require_session(request, store_of(request))
    vehicle, keys = await vehicle_for(request, caller)
    if vehicle.owner_id != caller.account_id:
        keys = [k for k in keys if k.account_id == caller.account_id]
    return web.json_response({"vin": vehicle.vin, "keys": [key_view(k) for k in keys]})


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
            key_id=key_id if ID.fullmatch(key_id) else None,
            max_body_bytes=config.max_body_bytes,
            max_skew=config.proof_max_skew_s,
        )
    except StoreUnavailable:  # a fresh token from the key ring, on the token presented
        return await keys_degraded.refresh_without_store(request, key_id)
    # the current token, which the phone sends for the degraded path, is checked, not needed
    RefreshRequest.of_body(holder.body)
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
    if not _SEQUENCE.fullmatch(raw_since) or int(raw_since) > MAX_SEQUENCE:
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


_TAG = "keys"
_REVOCATIONS_DESCRIPTION = (
    "since=0 (default): the full list; since=N: the delta after N. "
    f"Holder entries last {MAX_TOKEN_LIFETIME} s. For the owner and for holders of an "
    "active key, who carry lists to cars; and for the car itself, with a vehicle proof "
    "(PK-Device-Proof, device id = the VIN) instead of a bearer session."
)
_SINCE: dict[str, Any] = {
    "name": "since",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE},
}

ROUTES = (
    Route(  # first: the busiest route
        "POST", "/v1/keys/{key_id}/token", refresh, "refreshToken", _TAG,
        "Refresh: a fresh token for the key's own device (refresh-ahead)",
        criticality=Criticality.CRITICAL,  # G1's offline days
        degraded=Behaviour.TOKEN_FROM_RING,
        rate_limit="the hot path (G1): it signs a token and spends a nonce that expires within"
        " the proof skew, grows nothing, and is protected by admission control"
        " (keyserver.admission)",
        body=RefreshRequest, body_required=False, security=SIGNED, parameters=KEY_PARAM,
        responses={
            "200": openapi.json_response("the token", "KeyToken"),
            "400": openapi.error(f"bad_device_proof (malformed), {BAD_BODY}"),
            "403": openapi.error(
                "wrong_device, key_suspended, key_revoked, key_not_valid_now, unknown_device;"
                " invalid_token (store down: the token presented is not ours)"
            ),
            "404": openapi.error("unknown_key: no such key among the caller's"),
            **COMMON,
        },
    ),
    Route(
        "POST", "/v1/vehicles/{vin}/keys", issue_owner_key, "issueOwnerKey", _TAG,
        "The owner issues an owner key to one of its own devices",
        criticality=Criticality.CRITICAL,  # a key handed over now
        degraded=Behaviour.TRY_LATER, rate_limit=ratelimit.WRITES,
        body=KeyIssueRequest, security=SIGNED, parameters=VIN_PARAM,
        responses={
            "201": openapi.json_response("the key and its first token", "KeyToken"),
            "400": openapi.error(f"invalid_vin, bad_device_proof (malformed), {BAD_BODY}"),
            "403": openapi.error("not_owner, unknown_device"),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            "409": conflict(f"device_has_key, {TOO_SOON}, {TOO_MANY}"),
            **COMMON,
        },
    ),
    Route(
        "GET", "/v1/vehicles/{vin}/keys", list_keys, "listKeys", _TAG,
        "The vehicle's keys: all for the owner, its own for a holder",
        criticality=Criticality.SHEDDABLE, degraded=Behaviour.STALE,
        security=BEARER, parameters=VIN_PARAM,
        responses={
            "200": openapi.json_response("the keys, oldest first", "VehicleKeys"),
            "400": openapi.error("invalid_vin"),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            **READ,
        },
    ),
    Route(
        "GET", "/v1/vehicles/{vin}/revocations", revocations, "getRevocationList", _TAG,
        "The vehicle's signed revocation list (docs/protocol.md §12)",
        description=_REVOCATIONS_DESCRIPTION,
        criticality=Criticality.CRITICAL,  # what phones carry to cars
        degraded=Behaviour.STALE,
        security=[*BEARER, {"deviceProof": []}], parameters=[*VIN_PARAM, _SINCE],
        responses={
            "200": {
                "description": "the signed list (COSE_Sign1, typ pk.rev)",
                "headers": SEQUENCE_HEADERS,
                "content": {CBOR: {"schema": {"type": "string", "format": "binary"}}},
            },
            "204": {
                "description": "nothing ever revoked (sequence 0), or nothing after since",
                "headers": SEQUENCE_HEADERS,
            },
            "400": openapi.error(
                "invalid_vin, invalid_since, since_ahead, bad_device_proof (malformed)"
            ),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            **READ,
            "401": openapi.error(
                "unauthorized (no bearer session, or an expired one); for a car:"
                " bad_device_proof, stale_device_proof, replayed_device_proof"
            ),
        },
    ),
)  # fmt: skip
