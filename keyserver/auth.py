"""Who is asking: bearer sessions and device proofs, for the route handlers.

A bearer session says which account; a device proof (``PK-Device-Proof``, keycore.request_proof)
says which enrolled phone signed this exact request. Changing who can open a car, and commands,
need both, so a stolen session alone can do neither.
A car signs its own requests the same way, with its vehicle key (``require_vehicle_proof``).

``require_key_holder`` makes the same checks as ``require_session`` then ``require_device_proof``,
in the same order with the same refusals, for a request on one key (token refresh, the hot path):
with the device's key already known here (``DeviceKeys``), the proof is checked first and the
session, the device, the key and the nonce's single use take one store round trip.

Each check is written once, here: ``bearer`` (the session's token), ``read_proof`` (the header),
``proof_error`` (signature and freshness over this request) and ``spend_nonce``. The degraded
token refresh (keyserver.routes.keys_degraded) runs the same steps against what this process
knows. Every check uses the request's one ``now`` (keyserver.clock.request_now).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
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
from keyserver.clock import request_now
from keyserver.http import ApiError, read_body
from keyserver.models import Device, KeyRecord, NonceClaim, Session, Vehicle
from keyserver.store import Store

TOKEN_BYTES = 32
DEVICE_KEYS_KEPT = 16_384


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


@dataclass(frozen=True)
class KeyHolder:
    """A request on one key, by a session and signed by one of its account's devices."""

    caller: Caller
    device: Device
    key: KeyRecord | None  # the key asked for, not yet checked against the caller
    body: bytes  # the raw body the proof signed


class DeviceKeys:
    """Public keys of devices whose proofs have verified, by device id: a proof can then be
    checked before the store is asked. Keeping them cannot let anything through: the store still
    confirms, in the operation that spends the nonce, that the device exists, is the caller's and
    has exactly this key (``Store.refresh_context``). The oldest entry goes first when full."""

    def __init__(self, capacity: int = DEVICE_KEYS_KEPT) -> None:
        self.capacity = capacity
        self._keys: dict[str, bytes] = {}

    def get(self, device_id: str) -> bytes | None:
        return self._keys.get(device_id)

    def remember(self, device: Device) -> None:
        if device.device_id not in self._keys and len(self._keys) >= self.capacity:
            del self._keys[next(iter(self._keys))]
        self._keys[device.device_id] = device.public_key

    def forget(self, device_id: str) -> None:
        self._keys.pop(device_id, None)


async def require_session(request: web.Request, store: Store) -> Caller:
    token_hash = bearer(request)
    session = await store.session(token_hash, now=request_now(request))
    if session is None:
        raise unknown_session()
    return Caller(session, token_hash)


def bearer(request: web.Request) -> bytes:
    """The hash of the request's bearer token; 401 without a well-formed one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # a header may carry any bytes (undecodable ones as surrogates); our tokens are ASCII
    if scheme.lower() != "bearer" or not token or len(token) > 256 or not token.isascii():
        raise ApiError(
            401, "unauthorized", "a bearer session is required",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return session_hash(token)


def unknown_session() -> ApiError:
    return ApiError(
        401, "unauthorized", "the session is unknown or has expired",
        headers={"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


async def require_key_holder(
    request: web.Request,
    store: Store,
    device_keys: DeviceKeys,
    *,
    key_id: str | None,
    max_body_bytes: int,
    max_skew: int,
) -> KeyHolder:
    """Session, body, device proof (signature, freshness, the nonce's single use) and the key
    ``key_id``: the checks and refusals of ``require_session``, ``read_body`` and
    ``require_device_proof``, in that order. One store round trip when the device's key is known
    here; otherwise the nonce is spent in a second one, after the proof has been checked with the
    stored key."""
    token_hash = bearer(request)
    proof: RequestProof | None
    try:
        proof, bad_header = read_proof(request), None
    except ApiError as malformed:
        proof, bad_header = None, malformed
    current = request_now(request)
    # The body (bounded) is read first, its refusal kept for its turn after the session's, so
    # that with the device's key known the proof is checked now and its nonce spent in the same
    # store operation; the store confirms the key.
    body, bad_body = b"", None
    if request.body_exists:
        try:
            body = await read_body(request, max_body_bytes)
        except ApiError as refused:
            bad_body = refused
    early: tuple[bytes, ApiError | None] | None = None
    claim = None
    if proof is not None and bad_body is None:
        known = device_keys.get(proof.device_id)
        if known is not None:
            early = (
                known,
                proof_error(request, proof, known, body, now=current, max_skew=max_skew),
            )
            if early[1] is None:
                scope, expiry = device_scope(proof.device_id), nonce_expiry(proof, max_skew)
                claim = NonceClaim(scope, proof.nonce, expiry, known)
    context = await store.refresh_context(
        token_hash,
        device_id=None if proof is None else proof.device_id,
        key_id=key_id,
        now=current,
        claim=claim,
    )
    session = context.session
    if session is None:
        raise unknown_session()
    if bad_body is not None:
        raise bad_body
    if proof is None:
        assert bad_header is not None
        raise bad_header
    device = context.device
    if device is None or device.account_id != session.account_id:
        raise _unknown_device()
    fresh = context.nonce_fresh
    if fresh is None:  # not spent yet: check the proof with the stored key, then spend the nonce
        if early is not None and early[0] == device.public_key:
            refusal = early[1]
        else:
            refusal = proof_error(
                request, proof, device.public_key, body, now=current, max_skew=max_skew
            )
        if refusal is not None:
            raise refusal
        fresh = await store.claim_nonce(
            device_scope(proof.device_id),
            proof.nonce,
            now=current,
            expires_at=nonce_expiry(proof, max_skew),
        )
        device_keys.remember(device)
    if not fresh:
        raise replayed()
    return KeyHolder(Caller(session, token_hash), device, context.key, body)


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
    proof = read_proof(request)
    device: Device | None = None
    if enrolling is not None:
        if proof.device_id != device_id_for(enrolling):
            raise ApiError(401, "bad_device_proof", "the proof is not made by the enrolled key")
        key_xy = enrolling
    else:
        device = await store.device(proof.device_id)
        if device is None or device.account_id != caller.account_id:
            raise _unknown_device()
        key_xy = device.public_key
    await _check_proof(
        request, store, proof, key_xy, body, scope=device_scope(proof.device_id), max_skew=max_skew
    )
    return device


async def require_vehicle_proof(
    request: web.Request, store: Store, vin: str, body: bytes, *, max_skew: int
) -> Vehicle:
    """Check a request signed by a car with its own key, the way a phone signs (device id = the
    VIN); returns the car. An unknown VIN fails like a bad signature."""
    proof = read_proof(request)
    vehicle = await store.vehicle(vin) if proof.device_id == vin else None
    if vehicle is None:
        raise ApiError(401, "bad_device_proof", "the proof is not made by this vehicle's key")
    await _check_proof(
        request, store, proof, vehicle.public_key, body, scope=f"vehicle:{vin}", max_skew=max_skew
    )
    return vehicle


def read_proof(request: web.Request) -> RequestProof:
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
    now = request_now(request)
    error = proof_error(request, proof, key_xy, body, now=now, max_skew=max_skew)
    if error is not None:
        raise error
    await spend_nonce(store.claim_nonce, scope, proof, now, max_skew)


async def spend_nonce(
    claim: Callable[..., Awaitable[bool]], scope: str, proof: RequestProof, now: int, max_skew: int
) -> None:
    """Spend the proof's nonce in ``claim`` (the store's, or this process's own book while the
    store is down): 401 replayed_device_proof if it was spent already."""
    if not await claim(scope, proof.nonce, now=now, expires_at=nonce_expiry(proof, max_skew)):
        raise replayed()


def proof_error(
    request: web.Request,
    proof: RequestProof,
    key_xy: bytes,
    body: bytes,
    *,
    now: int,
    max_skew: int,
) -> ApiError | None:
    """The refusal of a proof that is stale or not signed by ``key_xy`` over this request."""
    try:
        verify_request_proof(
            proof,
            public_key=load_point(key_xy),
            method=request.method,
            path=request.path_qs,
            body=body,
            now=now,
            max_skew=max_skew,
        )
    except InvalidProof as error:
        if error.reason is Reason.STALE:
            return ApiError(401, "stale_device_proof", "the proof's timestamp is too far off")
        return ApiError(401, "bad_device_proof", "the device proof does not verify")
    return None


def device_scope(device_id: str) -> str:
    """Where a device's nonces are single use."""
    return f"proof:{device_id}"


def nonce_expiry(proof: RequestProof, max_skew: int) -> int:
    """After this, the proof is stale anyway: its nonce need not be remembered."""
    return proof.timestamp + max_skew + 1


def _unknown_device() -> ApiError:
    return ApiError(403, "unknown_device", "no such device on this account")


def replayed() -> ApiError:
    return ApiError(401, "replayed_device_proof", "this proof has been used already")
