"""Who is asking: bearer sessions, device proofs, and rate limits, for the route handlers.

A bearer session says which account; a device proof (``PK-Device-Proof``, keycore.request_proof)
says which enrolled phone signed this exact request. Changing who can open a car, and commands,
need both, so a stolen session alone can do neither.
A car signs its own requests the same way, with its vehicle key (``require_vehicle_proof``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from keycore import InvalidProof, Reason
from keycore.cose import holder_id, load_point
from keycore.request_proof import (
    HEADER,
    RequestProof,
    parse_request_proof,
    verify_request_proof,
)
from keyserver.http import ApiError
from keyserver.models import Device, Session, Vehicle
from keyserver.store import Store

TOKEN_BYTES = 32


def now() -> int:
    return int(time.time())


def new_session_token() -> tuple[str, bytes]:
    """A bearer token for the client and the hash the store keeps instead of it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, session_hash(token)


def session_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def device_id_for(public_key_xy: bytes) -> str:
    """A device's id is derived from its key: the hex holder id (docs/protocol.md §2)."""
    return holder_id(public_key_xy).hex()


@dataclass(frozen=True)
class Caller:
    session: Session
    token_hash: bytes

    @property
    def account_id(self) -> str:
        return self.session.account_id


async def require_session(request: web.Request, store: Store) -> Caller:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # a header may carry any bytes (undecodable ones as surrogates); our tokens are ASCII
    if scheme.lower() != "bearer" or not token or len(token) > 256 or not token.isascii():
        raise ApiError(
            401, "unauthorized", "a bearer session is required",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    token_hash = session_hash(token)
    session = await store.session(token_hash, now=now())
    if session is None:
        raise ApiError(
            401, "unauthorized", "the session is unknown or has expired",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return Caller(session, token_hash)


async def require_device_proof(
    request: web.Request,
    store: Store,
    caller: Caller,
    body: bytes,
    *,
    max_skew: int,
    enrolling: bytes | None = None,
) -> Device | None:
    """Check the request's device proof; returns the caller's device that signed it.

    ``enrolling``: the public key being enrolled, which must sign its own enrolment (the device
    is not in the store yet; None is returned).
    """
    proof = _read_proof(request)
    device: Device | None = None
    if enrolling is not None:
        if proof.device_id != device_id_for(enrolling):
            raise ApiError(401, "bad_device_proof", "the proof is not made by the enrolled key")
        key_xy = enrolling
    else:
        device = await store.device(proof.device_id)
        if device is None or device.account_id != caller.account_id:
            raise ApiError(403, "unknown_device", "no such device on this account")
        key_xy = device.public_key
    await _check_proof(
        request, store, proof, key_xy, body, scope=f"proof:{proof.device_id}", max_skew=max_skew
    )
    return device


async def require_vehicle_proof(
    request: web.Request, store: Store, vin: str, body: bytes, *, max_skew: int
) -> Vehicle:
    """Check a request signed by a car with its own key, the way a phone signs (device id = the
    VIN); returns the car. An unknown VIN fails like a bad signature."""
    proof = _read_proof(request)
    vehicle = await store.vehicle(vin) if proof.device_id == vin else None
    if vehicle is None:
        raise ApiError(401, "bad_device_proof", "the proof is not made by this vehicle's key")
    await _check_proof(
        request, store, proof, vehicle.public_key, body, scope=f"vehicle:{vin}", max_skew=max_skew
    )
    return vehicle


def _read_proof(request: web.Request) -> RequestProof:
    header = request.headers.get(HEADER)
    if header is None:
        raise ApiError(401, "device_proof_required", f"this operation needs a {HEADER} header")
    try:
        return parse_request_proof(header)
    except InvalidProof:
        raise ApiError(400, "bad_device_proof", f"the {HEADER} header is malformed") from None


async def _check_proof(
    request: web.Request,
    store: Store,
    proof: RequestProof,
    key_xy: bytes,
    body: bytes,
    *,
    scope: str,
    max_skew: int,
) -> None:
    """Signature and freshness, then the nonce's single use within ``scope``."""
    try:
        verify_request_proof(
            proof,
            public_key=load_point(key_xy),
            method=request.method,
            path=request.path_qs,
            body=body,
            now=now(),
            max_skew=max_skew,
        )
    except InvalidProof as error:
        if error.reason is Reason.STALE:
            raise ApiError(
                401, "stale_device_proof", "the proof's timestamp is too far off"
            ) from None
        raise ApiError(401, "bad_device_proof", "the device proof does not verify") from None
    fresh = await store.claim_nonce(
        scope, proof.nonce, now=now(), expires_at=proof.timestamp + max_skew + 1
    )
    if not fresh:
        raise ApiError(401, "replayed_device_proof", "this proof has been used already")


async def rate_limit(store: Store, key: str, *, limit: int, window: int) -> None:
    """Count one attempt under ``key``; 429 with Retry-After once over ``limit`` per window."""
    current = now()
    if not await store.hit(key, now=current, window=window, limit=limit):
        retry_after = window - current % window
        raise ApiError(
            429, "rate_limited", "too many attempts; try again later",
            headers={"Retry-After": str(retry_after)},
        )  # fmt: skip
