"""The steps the key routes share (keys, sharing, revocation): who is asking, with which device,
about which vehicle or key — and whether they may.

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
from typing import TypeVar

from aiohttp import web

from keyserver import auth, fields
from keyserver.bodies import Body, EmptyRequest
from keyserver.errors import StoreUnavailable
from keyserver.grants import key_view
from keyserver.http import ApiError, read_body
from keyserver.models import Device, KeyRecord, Vehicle
from keyserver.resources import SERVICES, Services
from keyserver.store import Store

MAX_SEQUENCE = 2**63 - 1
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
B = TypeVar("B", bound=Body)


async def signed(request: web.Request, model: type[B]) -> tuple[auth.Caller, B, Device]:
    """Session, then the body (read once, bounded), then the device proof over those bytes, then
    the body as ``model`` (``EmptyRequest``: the body may be absent)."""
    services = request.app[SERVICES]
    config, store = services.config, services.store
    caller = await auth.require_session(request, store)
    takes_body = model is not EmptyRequest
    raw = b""
    if takes_body or request.body_exists:
        raw = await read_body(request, config.max_body_bytes)
    device = await auth.require_device_proof(
        request, store, caller, raw, max_skew=config.proof_max_skew_s
    )
    assert device is not None  # not an enrolment
    body = model.parse(raw) if takes_body or raw else model.of({})
    return caller, body, device


async def vehicle_for(request: web.Request, caller: auth.Caller) -> tuple[Vehicle, list[KeyRecord]]:
    """The vehicle in the path and its keys, if the caller owns it or holds a key on it."""
    store = store_of(request)
    vin = fields.path_vin(request)
    vehicle = await store.vehicle(vin)
    keys = [] if vehicle is None else await store.keys_of_vehicle(vin)
    if vehicle is None or (
        vehicle.owner_id != caller.account_id
        and not any(k.account_id == caller.account_id for k in keys)
    ):
        raise ApiError(404, "unknown_vehicle", "no such vehicle among the caller's")
    return vehicle, keys


def require_owner(vehicle: Vehicle, caller: auth.Caller) -> None:
    if vehicle.owner_id != caller.account_id:
        raise ApiError(403, "not_owner", "only the vehicle's owner manages its keys")


async def key_for(request: web.Request, caller: auth.Caller, *, holder_may: bool) -> KeyRecord:
    """The key in the path, if the caller owns its vehicle (or holds it, when ``holder_may``)."""
    store = store_of(request)
    key_id = request.match_info["key_id"]
    key = await store.key(key_id) if ID.fullmatch(key_id) else None
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


async def own_device(request: web.Request, caller: auth.Caller, device_id: str) -> Device:
    device = await store_of(request).device(device_id)
    if device is None or device.account_id != caller.account_id:
        raise ApiError(403, "unknown_device", "no such device on this account")
    return device


async def key_change(
    request: web.Request, key_id: str, sequence: int, *, changed: bool
) -> web.Response:
    key = await store_of(request).key(key_id)
    if key is None:
        raise ApiError(404, "unknown_key", "no such key")
    return web.json_response(
        {"key": key_view(key), "revocation_sequence": sequence, "changed": changed}
    )


async def key_unchanged(request: web.Request, key: KeyRecord) -> web.Response:
    """The key is in the asked state already: 200, ``changed`` false, and nothing written —
    the journal included, so repeating a request during an outage cannot grow it either."""
    return web.json_response(
        {
            "key": key_view(key),
            "revocation_sequence": await sequence_or_none(request, key.vin),
            "changed": False,
        }
    )


async def sequence_or_none(request: web.Request, vin: str) -> int | None:
    """The vehicle's ledger sequence, or None while the store cannot say."""
    try:
        sequence, _ = await store_of(request).revocations(vin, since=MAX_SEQUENCE)
    except StoreUnavailable:
        return None
    return sequence


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def store_of(request: web.Request) -> Store:
    return request.app[SERVICES].store
