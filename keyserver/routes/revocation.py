"""Withdrawing keys: suspend, resume and revoke one key, and revoke every key of one device or
one account on a vehicle. Each withdrawal is journaled and answered 202 while the state store is
down (keyserver.outage); a repeat changes nothing, not even the journal. Who may do what:
keyserver.routes.key_access."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from keyserver import openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.bodies import ID_PATTERN, Body, EmptyRequest, Id, refuse
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import StoreUnavailable
from keyserver.http import ApiError
from keyserver.issuance import check_cutoff
from keyserver.models import KeyStatus
from keyserver.resources import SERVICES
from keyserver.routes import keys_degraded
from keyserver.routes.key_access import (
    key_change,
    key_for,
    key_unchanged,
    require_owner,
    sequence_or_none,
    services_of,
    signed,
    vehicle_for,
)
from keyserver.routes.keys_openapi import (
    BAD_BODY,
    COMMON,
    KEY_PARAM,
    SIGNED,
    TOO_SOON,
    VIN_PARAM,
    conflict,
    key_change_responses,
)
from keyserver.routing import Route

MAX_ACCOUNT_ID_CHARS = 64
_ONE_OF = "give exactly one of 'device_id' and 'account_id'"


class HolderRevocationRequest(Body):
    """Exactly one of device_id (that device's keys) and account_id (that account's keys)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    device_id: Annotated[
        Id | None,
        WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
        Field(description="a device id"),
    ] = None
    account_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=MAX_ACCOUNT_ID_CHARS)] | None,
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ACCOUNT_ID_CHARS}),
        Field(description=f"an account id: 1 to {MAX_ACCOUNT_ID_CHARS} characters"),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) <= {"device_id", "account_id"} and len(data) != 1:
            raise refuse("missing_field", _ONE_OF)
        return data

    @field_validator("device_id", "account_id", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:  # absent is fine (the default); null is not a holder
            raise ValueError("null")
        return value


async def suspend(request: web.Request) -> web.Response:
    """The owner suspends a key (a lost phone): its tokens die on cars that get the list."""
    caller, _, _ = await signed(request, EmptyRequest)
    await ratelimit.check(request, account=caller.account_id)
    key = await key_for(request, caller, holder_may=False)
    if key.status is KeyStatus.REVOKED:
        raise ApiError(409, "key_revoked", "the key is revoked for good")
    if key.status is KeyStatus.SUSPENDED:  # a repeat changes nothing, not even the journal
        return await key_unchanged(request, key)
    try:
        done = await services_of(request).holders.suspend_keys(
            key.vin, [key], now=request_now(request)
        )
    except StoreUnavailable:  # must not be lost: journaled, and connected cars are told now
        return await keys_degraded.journaled(
            services_of(request), request_now(request), key.vin, [key], KeyStatus.SUSPENDED
        )
    return await key_change(request, key.key_id, done.sequence, changed=bool(done.changed))


async def resume(request: web.Request) -> web.Response:
    """The owner makes a suspended key active again; tokens signed from now on work."""
    services = request.app[SERVICES]
    store = services.store
    caller, _, _ = await signed(request, EmptyRequest)
    await ratelimit.check(request, account=caller.account_id)
    key = await key_for(request, caller, holder_may=False)
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
    return await key_change(request, key.key_id, sequence, changed=changed)


async def revoke(request: web.Request) -> web.Response:
    """Revoke a key for good: the owner any key, a holder its own."""
    caller, _, _ = await signed(request, EmptyRequest)
    await ratelimit.check(request, account=caller.account_id)
    key = await key_for(request, caller, holder_may=True)
    if key.status is KeyStatus.REVOKED:  # a repeat changes nothing, not even the journal
        return await key_unchanged(request, key)
    try:
        done = await services_of(request).holders.revoke_keys(
            key.vin, [key], now=request_now(request)
        )
    except StoreUnavailable:
        return await keys_degraded.journaled(
            services_of(request), request_now(request), key.vin, [key], KeyStatus.REVOKED
        )
    return await key_change(request, key.key_id, done.sequence, changed=bool(done.changed))


async def revoke_holder(request: web.Request) -> web.Response:
    """The owner revokes every key of one device, or of one account, on the vehicle."""
    caller, body, _ = await signed(request, HolderRevocationRequest)
    await ratelimit.check(request, account=caller.account_id)
    vehicle, keys = await vehicle_for(request, caller)
    require_owner(vehicle, caller)
    if body.device_id is not None:
        chosen = [k for k in keys if k.device_id == body.device_id]
    else:
        chosen = [k for k in keys if k.account_id == body.account_id]
    if not chosen:
        raise ApiError(404, "unknown_key", "no keys of this holder on this vehicle")
    if all(k.status is KeyStatus.REVOKED for k in chosen):  # a repeat changes nothing
        return web.json_response(
            {
                "revoked": [k.key_id for k in chosen],
                "revocation_sequence": await sequence_or_none(request, vehicle.vin),
                "changed": False,
            }
        )
    try:
        done = await services_of(request).holders.revoke_keys(
            vehicle.vin, chosen, now=request_now(request)
        )
    except StoreUnavailable:
        return await keys_degraded.journaled(
            services_of(request), request_now(request), vehicle.vin, chosen, KeyStatus.REVOKED
        )
    return web.json_response(
        {
            "revoked": [k.key_id for k in chosen],
            "revocation_sequence": done.sequence,
            "changed": bool(done.changed),
        }
    )


_TAG = "revocation"
_P = Criticality.CRITICAL_PLUS  # revocation (G4): never crowded out; a suspension is one too

ROUTES = (
    Route(
        "POST", "/v1/keys/{key_id}/suspend", suspend, "suspendKey", _TAG,
        "The owner suspends a key (lost phone): its current tokens die on cars",
        criticality=_P, degraded=Behaviour.JOURNALED, rate_limit=ratelimit.WITHDRAWALS,
        body=EmptyRequest, body_required=False, security=SIGNED, parameters=KEY_PARAM,
        responses=key_change_responses(
            {
                "403": openapi.error("not_owner, unknown_device"),
                "409": openapi.error("key_revoked"),
            }
        ),
    ),
    Route(
        "POST", "/v1/keys/{key_id}/resume", resume, "resumeKey", _TAG,
        "The owner resumes a suspended key; tokens signed from now on work",
        criticality=Criticality.CRITICAL,  # a key handed back now
        degraded=Behaviour.TRY_LATER, rate_limit=ratelimit.WRITES,
        body=EmptyRequest, body_required=False, security=SIGNED, parameters=KEY_PARAM,
        responses=key_change_responses(
            {
                "403": openapi.error("not_owner, unknown_device"),
                "409": conflict(f"key_revoked, {TOO_SOON}"),
            }
        ),
    ),
    Route(
        "POST", "/v1/keys/{key_id}/revoke", revoke, "revokeKey", _TAG,
        "Revoke a key for good: the owner any key, a holder its own",
        criticality=_P, degraded=Behaviour.JOURNALED, rate_limit=ratelimit.WITHDRAWALS,
        body=EmptyRequest, body_required=False, security=SIGNED, parameters=KEY_PARAM,
        responses=key_change_responses({"403": openapi.error("not_owner, unknown_device")}),
    ),
    Route(
        "POST", "/v1/vehicles/{vin}/revocations", revoke_holder, "revokeHolder", _TAG,
        "The owner revokes every key of one device or of one account",
        criticality=_P, degraded=Behaviour.JOURNALED, rate_limit=ratelimit.WITHDRAWALS,
        body=HolderRevocationRequest, security=SIGNED, parameters=VIN_PARAM,
        responses={
            "200": openapi.json_response("the keys revoked", "HolderRevocation"),
            "400": openapi.error(f"invalid_vin, bad_device_proof (malformed), {BAD_BODY}"),
            "403": openapi.error("not_owner, unknown_device"),
            "404": openapi.error("unknown_vehicle, unknown_key: the holder has no keys here"),
            **COMMON,
        },
    ),
)  # fmt: skip
