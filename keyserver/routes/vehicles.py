"""Vehicles: factory provisioning, owner pairing with the car's one-time code, ownership transfer.

Provisioning. ``POST /v1/vehicles`` registers a VIN and the car's P-256 public key. It is the
factory's call, authenticated by ``Authorization: Provisioning <secret>`` compared in constant
time with the ``provisioning_secret`` setting; an empty setting turns provisioning off (403).

Pairing code. The car, not a person, asks for the code it shows on its screen:
``POST /v1/vehicles/{vin}/pairing-code`` signed by the car's own key exactly as a phone signs
(keycore.request_proof, device id = the VIN; nonces single use under ``vehicle:<vin>``). The code
is 8 random digits, single use, valid ``pairing_ttl_s`` and good for ``pairing_attempts`` tries;
a new code replaces the old one, and a car that has an owner gets none (409).

Only a hash of the code is stored: SHA-256 over a context string, the VIN and the code. A secret
salt would not help: 10^8 codes are enumerated in seconds from a stolen store whatever the salt,
so the hash only keeps codes out of plain sight and, through the VIN, makes the same code on two
cars hash differently. What protects the code is the attempt limit (with the default 5 tries, one
chance in 20 million per code shown), its short life, single use, and a per-account limit on
pairing tries (setting ``pairing_attempts_per_minute``).

Owner pairing. ``POST /v1/vehicles/{vin}/owner {code}`` needs a bearer session and the proof of
one of the caller's enrolled devices. The code's format is checked before anything is counted;
each try then counts against the account's rate limit and, if wrong, spends one of the code's
attempts. A car with an owner has no pending code, so it answers like any car without one (404)
and reveals nothing to a guesser.

Ownership transfer. ``POST /v1/vehicles/{vin}/transfer {to_email}`` by the current owner (session
and device proof) moves the owner record with a compare-and-set, so two racing transfers cannot
both win. It changes only that record. Cutting off the previous owner is the keys' service's job
(``keyserver.issuance.Holders.revoke_keys``), not this module's: every live key on the car
revoked, which puts a holder entry ("every token of device X issued before T") in the car's
revocation list for each device, the old owner's and those of the people it shared with, since
the new owner granted none of them. It belongs before the owner record moves: a crash in between
then leaves the old owner able to retry, instead of a sold car that still opens for the seller.

``GET /v1/vehicles/{vin}`` shows the car to its owner; to anyone else it does not exist (404).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import Field

from keyserver import auth, fields, openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.bodies import VIN_PATTERN, Body, Email, PublicKey
from keyserver.bodies import Vin as VinField
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import Conflict
from keyserver.http import ApiError, read_body
from keyserver.models import Pairing, PairingResult, Vehicle
from keyserver.resources import CONFIG, SERVICES, STORE
from keyserver.routing import Route

CODE_DIGITS = 8
_CODE_CONTEXT = b"phonekey/pairing-code/v1\x00"
_PROVISIONING = "provisioning"


class VehicleProvisioning(Body):
    vin: VinField
    public_key: Annotated[
        PublicKey, Field(description="unpadded base64url of the car's P-256 public key, x || y")
    ]


class VehiclePairing(Body):
    code: Annotated[
        str, Field(pattern=f"^[0-9]{{{CODE_DIGITS}}}$", description=f"exactly {CODE_DIGITS} digits")
    ]


class VehicleTransfer(Body):
    to_email: Email


SignedBody = TypeVar("SignedBody", VehiclePairing, VehicleTransfer)


def pairing_hash(vin: str, code: str) -> bytes:
    """What the store keeps of a pairing code (see the module docstring for why a plain hash)."""
    return hashlib.sha256(_CODE_CONTEXT + vin.encode("ascii") + b"\x00" + code.encode()).digest()


async def provision(request: web.Request) -> web.Response:
    """Register a car: its VIN and its public key, on the factory's provisioning credential."""
    config = request.app[CONFIG]
    await ratelimit.check(request)  # before the secret is compared: guesses count too
    if not config.provisioning_secret:
        raise ApiError(403, "provisioning_disabled", "provisioning is not enabled on this server")
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != _PROVISIONING or not hmac.compare_digest(
        secret.strip().encode("utf-8", "replace"),
        config.provisioning_secret.encode("utf-8", "replace"),
    ):
        raise ApiError(
            401, "unauthorized", "a valid provisioning credential is required",
            headers={"WWW-Authenticate": "Provisioning"},
        )  # fmt: skip
    body = VehicleProvisioning.parse(await read_body(request, config.max_body_bytes))
    vehicle = Vehicle(
        vin=body.vin,
        public_key=body.public_key,
        owner_id=None,
        created_at=request_now(request),
    )
    try:
        await request.app[STORE].add_vehicle(vehicle)
    except Conflict:
        raise ApiError(409, "vehicle_exists", "a vehicle with this VIN is registered") from None
    return web.json_response({"vin": vehicle.vin}, status=201)


async def pairing_code(request: web.Request) -> web.Response:
    """A fresh one-time owner pairing code, for the car (signed by its own key) to display."""
    config, store = request.app[CONFIG], request.app[STORE]
    vin = fields.path_vin(request)
    if request.body_exists:
        raise ApiError(400, "unexpected_body", "this request takes no body")
    vehicle = await auth.require_vehicle_proof(
        request, store, vin, b"", max_skew=config.proof_max_skew_s
    )
    await ratelimit.check(request, vehicle=vin)
    if vehicle.owner_id is not None:
        raise ApiError(409, "already_owned", "this vehicle has an owner; transfer it instead")
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    expires_at = request_now(request) + config.pairing_ttl_s
    await store.put_pairing(
        Pairing(vin, pairing_hash(vin, code), expires_at, attempts_left=config.pairing_attempts)
    )
    return web.json_response(
        {"code": code, "expires_at": expires_at},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


_PAIRING_REFUSALS = {
    PairingResult.WRONG: (403, "wrong_code", "the code does not match; one attempt spent"),
    PairingResult.EXPIRED: (410, "code_expired", "the code has expired; ask the car for a new one"),
    PairingResult.EXHAUSTED: (
        429, "too_many_attempts", "no attempts left for this code; ask the car for a new one",
    ),
    PairingResult.NONE: (404, "no_pairing", "no pairing code is pending for this vehicle"),
}  # fmt: skip


async def pair_owner(request: web.Request) -> web.Response:
    """Become the car's first owner with the code it shows (session and device proof)."""
    store = request.app[STORE]
    caller, vin, body = await _signed_body(request, VehiclePairing)
    code = body.code
    await ratelimit.check(request, account=caller.account_id)  # per account, across all cars
    result = await store.try_pairing(vin, pairing_hash(vin, code), now=request_now(request))
    if result is not PairingResult.PAIRED:
        status, error, message = _PAIRING_REFUSALS[result]
        raise ApiError(status, error, message)
    if not await store.set_owner(
        vin, owner_id=caller.account_id, expected=None, now=request_now(request)
    ):
        raise ApiError(409, "already_owned", "this vehicle has an owner")
    return web.json_response({"vin": vin, "owner_id": caller.account_id})


async def transfer(request: web.Request) -> web.Response:
    """Give the car to another account (the current owner, with session and device proof)."""
    store = request.app[STORE]
    caller, vin, body = await _signed_body(request, VehicleTransfer)
    email = body.to_email
    await ratelimit.check(request, account=caller.account_id)
    vehicle = await store.vehicle(vin)
    if vehicle is None or vehicle.owner_id != caller.account_id:
        raise ApiError(403, "not_owner", "only the vehicle's owner can transfer it")
    recipient = await store.account_by_email(email)
    if recipient is None:
        raise ApiError(404, "unknown_account", "no account has this e-mail address")
    if recipient.account_id == caller.account_id:
        raise ApiError(409, "same_owner", "the vehicle is yours already")
    # Every key of the car dies first — the seller's and those the seller shared. In this order a
    # crash in between leaves the seller owner without keys (safe; retry the transfer), never a
    # sold car that still opens for the seller.
    holders, now = request.app[SERVICES].holders, request_now(request)
    await holders.revoke_keys(vin, await store.keys_of_vehicle(vin), now=now)
    moved = await store.set_owner(
        vin, owner_id=recipient.account_id, expected=caller.account_id, now=now
    )
    if not moved:
        raise ApiError(409, "ownership_changed", "the vehicle's owner changed meanwhile")
    return web.json_response({"vin": vin, "owner_id": recipient.account_id})


async def show(request: web.Request) -> web.Response:
    """The car, for its owner; anyone else is told it does not exist."""
    store = request.app[STORE]
    caller = await auth.require_session(request, store)
    vin = fields.path_vin(request)
    vehicle = await store.vehicle(vin)
    if vehicle is None or vehicle.owner_id != caller.account_id:
        raise ApiError(404, "unknown_vehicle", "no such vehicle among yours")
    return web.json_response(
        {"vin": vehicle.vin, "owner_id": vehicle.owner_id, "created_at": vehicle.created_at}
    )


async def _signed_body(
    request: web.Request, model: type[SignedBody]
) -> tuple[auth.Caller, str, SignedBody]:
    """(caller, VIN, the body) of a request with a session and a device proof. The body is
    checked before the proof, so bad input does not even spend a nonce."""
    config, store = request.app[CONFIG], request.app[STORE]
    caller = await auth.require_session(request, store)
    vin = fields.path_vin(request)
    raw = await read_body(request, config.max_body_bytes)
    body = model.parse(raw)
    await auth.require_device_proof(request, store, caller, raw, max_skew=config.proof_max_skew_s)
    return caller, vin, body


# response bodies

_VIN_FIELD = {"type": "string", "pattern": VIN_PATTERN}
_CODE_FIELD = {"type": "string", "pattern": f"^[0-9]{{{CODE_DIGITS}}}$"}
_TIMESTAMP = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
_VIN_PARAMETER = {"name": "vin", "in": "path", "required": True, "schema": _VIN_FIELD}
_SESSION_AND_DEVICE: list[dict[str, list[str]]] = [{"bearer": [], "deviceProof": []}]
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def _with_retry_after(description: str) -> dict[str, Any]:
    return {**openapi.error(description), "headers": _RETRY_AFTER}


_BAD_BODY = "invalid_json, invalid_body, unknown_field, missing_field or invalid_field"
_BODY_ERRORS = {
    "413": openapi.error("body_too_large: the body is over the configured limit"),
    "415": openapi.error("unsupported_media_type: the body must be application/json"),
}
_PROOF_ERRORS = "device_proof_required, bad_device_proof, stale_device_proof, replayed_device_proof"

SCHEMAS: dict[str, Any] = {
    "VehicleProvisioned": openapi.strict_object({"vin": _VIN_FIELD}),
    "VehiclePairingCode": openapi.strict_object({"code": _CODE_FIELD, "expires_at": _TIMESTAMP}),
    "VehicleOwnership": openapi.strict_object(
        {"vin": _VIN_FIELD, "owner_id": {"type": "string", "minLength": 1}}
    ),
    "Vehicle": openapi.strict_object(
        {"vin": _VIN_FIELD, "owner_id": {"type": "string"}, "created_at": _TIMESTAMP}
    ),
}
_S, _C = Criticality.SHEDDABLE, Criticality.CRITICAL
_TAG = "vehicles"

ROUTES = (
    Route(
        "POST", "/v1/vehicles", provision, "provisionVehicle", _TAG,
        "Provision a vehicle (the factory: Authorization: Provisioning <secret>)",
        criticality=_S, degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(address="address_writes_per_minute"),
        body=VehicleProvisioning, security=[{"provisioning": []}],
        responses={
            "201": openapi.json_response("registered", "VehicleProvisioned"),
            "400": openapi.error(_BAD_BODY),
            "401": openapi.error("unauthorized: missing or wrong provisioning credential"),
            "403": openapi.error("provisioning_disabled: no provisioning_secret is set"),
            "409": openapi.error("vehicle_exists"),
            **_BODY_ERRORS,
        },
    ),
    Route(
        "GET", "/v1/vehicles/{vin}", show, "getVehicle", _TAG, "A vehicle, for its owner",
        criticality=_S, degraded=Behaviour.STALE,
        security=[{"bearer": []}], parameters=[_VIN_PARAMETER],
        responses={
            "200": openapi.json_response("the vehicle", "Vehicle"),
            "400": openapi.error("invalid_vin"),
            "401": openapi.error("unauthorized: no bearer session, or an expired one"),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
        },
    ),
    Route(
        "POST", "/v1/vehicles/{vin}/pairing-code", pairing_code, "createPairingCode", _TAG,
        "A one-time owner pairing code for the car to display (signed by the car)",
        description="No body. PK-Device-Proof made with the vehicle's own key, device id "
        "= the VIN. Only a hash of the code is kept.",
        criticality=_C,  # someone at the car; rare, so cheap to keep
        degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(
            vehicle="account_writes_per_minute", address="address_writes_per_minute"
        ),
        security=[{"deviceProof": []}], parameters=[_VIN_PARAMETER],
        responses={
            "201": {
                **openapi.json_response("the code and its expiry", "VehiclePairingCode"),
                "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
            },
            "400": openapi.error("invalid_vin, bad_device_proof (malformed), unexpected_body"),
            "401": openapi.error(f"{_PROOF_ERRORS}: not signed by this vehicle, or stale"),
            "409": openapi.error("already_owned: transfer the vehicle instead"),
        },
    ),
    Route(
        "POST", "/v1/vehicles/{vin}/owner", pair_owner, "pairOwner", _TAG,
        "Become the first owner with the code the car shows",
        criticality=_C, degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(
            account="pairing_attempts_per_minute", address="address_writes_per_minute"
        ),
        body=VehiclePairing, security=_SESSION_AND_DEVICE, parameters=[_VIN_PARAMETER],
        responses={
            "200": openapi.json_response("paired: the caller owns the car", "VehicleOwnership"),
            "400": openapi.error(f"{_BAD_BODY}, invalid_vin, bad_device_proof (malformed)"),
            "401": openapi.error(f"unauthorized, {_PROOF_ERRORS}"),
            "403": openapi.error("wrong_code (one attempt spent), unknown_device"),
            "404": openapi.error("no_pairing: no code pending for this vehicle"),
            "409": openapi.error("already_owned"),
            "410": openapi.error("code_expired: ask the car for a new code"),
            "429": _with_retry_after("too_many_attempts: ask the car for a new code"),
            **_BODY_ERRORS,
        },
    ),
    Route(
        "POST", "/v1/vehicles/{vin}/transfer", transfer, "transferVehicle", _TAG,
        "Give the vehicle to another account (the owner)",
        criticality=_C, degraded=Behaviour.TRY_LATER, rate_limit=ratelimit.WRITES,
        body=VehicleTransfer, security=_SESSION_AND_DEVICE, parameters=[_VIN_PARAMETER],
        responses={
            "200": openapi.json_response("the new owner", "VehicleOwnership"),
            "400": openapi.error(f"{_BAD_BODY}, invalid_vin, bad_device_proof (malformed)"),
            "401": openapi.error(f"unauthorized, {_PROOF_ERRORS}"),
            "403": openapi.error("not_owner, unknown_device"),
            "404": openapi.error("unknown_account: no account has that e-mail address"),
            "409": openapi.error("same_owner, ownership_changed"),
            **_BODY_ERRORS,
        },
    ),
)  # fmt: skip
