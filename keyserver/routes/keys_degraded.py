"""Token refresh while the state store is down: a fresh token from the key ring, on the strength of
the token the phone holds now (G1, G2).

The phone sends its current token in the refresh body (``{"token": "<base64url>"}``; the normal
path ignores it). Without the store, a fresh token is signed only when every check below passes,
each against what this process knows (fail closed: an unknown session or key is 429 "try later",
never a guess):

- the bearer session is known here (last known, unexpired), and so is the key in the path, and
  both belong to the same account;
- the token is ours (verifies against the key ring's trust store), unexpired, for the key's car,
  role and device (its cnf key is the key's device key), and not revoked: the key's last known
  status is active (a revocation journaled here changes it at once) and, if this process knows
  the car's ledger, no entry in it revokes the token;
- the device proof is signed by the token's cnf key over this request, fresh, and its nonce is
  unused here.

The new token has the same holder, role, entitlements and schedule as the one presented, starts
now and lives at most ``min(role lifetime, degraded_token_lifetime_s)``, never past the key's end.
It is signed by the one token-issuing path, ``Issuer.issue_token``, after the checks of
keyserver.auth (bearer, proof header, proof, nonce) run against what this process knows.

Also here: the 202 accepted_pending answers of writes journaled during an outage
(``journaled``, ``pending_acceptance``; keyserver.outage).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BeforeValidator, Field, WithJsonSchema

from keycore import InvalidToken, RevocationState
from keycore.encoding import b64url_decode, b64url_encode
from keycore.token import KeyToken
from keycore.verifier import authenticate
from keyserver import acceptance, auth, degraded
from keyserver.bodies import Body
from keyserver.clock import request_now
from keyserver.http import ApiError, read_body
from keyserver.issuance import IssuedToken
from keyserver.journal import Operation
from keyserver.models import (
    Invitation,
    KeyRecord,
    KeyStatus,
    RevocationEntry,
    RevocationKind,
    Session,
)
from keyserver.resources import SERVICES, Services

MAX_TOKEN_CHARS = 2048
PENDING_RETRY_AFTER_S = 30  # a store outage's usual length is not known: ask again soon


def _token(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_CHARS:
        raise ValueError("not a token")
    return b64url_decode(value)  # a ValueError when it is not base64url


class RefreshRequest(Body):
    """token: the phone's current token for this key. Ignored while the state store answers;
    while it is down, a fresh token (lifetime at most degraded_token_lifetime_s) is signed on its
    strength (keyserver.routes.keys_degraded)."""

    token: Annotated[
        bytes | None,
        BeforeValidator(_token),
        WithJsonSchema(
            {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": MAX_TOKEN_CHARS}
        ),
        Field(description="the current token, unpadded base64url"),
    ] = None

    @classmethod
    def of_body(cls, raw: bytes) -> RefreshRequest:
        """The refresh's body: absent, or the token."""
        return cls.parse(raw) if raw else _NO_TOKEN


_NO_TOKEN = RefreshRequest()


async def refresh_without_store(request: web.Request, key_id: str) -> web.Response:
    """The degraded refresh (module docstring); the normal refusal codes otherwise. The checks
    are keyserver.auth's, against what this process knows; the token comes from the one
    ``Issuer.issue_token``."""
    services = request.app[SERVICES]
    config, known = services.config, services.last_known
    now = request_now(request)
    # the bearer check of keyserver.auth (401 without one), then the session as last known here
    token_hash = auth.bearer(request)
    session = _known(known.cache.get(("session", token_hash), now=now))
    if not isinstance(session, Session) or session.expires_at <= now:
        return _unknown("the session")
    proof = auth.read_proof(request)
    body = await read_body(request, config.max_body_bytes) if request.body_exists else b""
    presented = RefreshRequest.of_body(body).token
    key = _known(known.cache.get(("key", key_id), now=now))
    if not isinstance(key, KeyRecord):
        return _unknown("this key")
    if presented is None:
        return _unknown("the current token (send it in the body's 'token' field)")
    if key.account_id != session.account_id:
        raise ApiError(404, "unknown_key", "no such key among the caller's")
    try:
        claims, holder_key = authenticate(presented, now=now, trust=services.keyring.trust_store())
    except InvalidToken:
        raise ApiError(
            403, "invalid_token", "the token presented is not a valid key token"
        ) from None
    if (
        claims.vin != key.vin
        or claims.role is not key.role
        or auth.device_id_for(claims.holder) != key.device_id
    ):
        raise ApiError(404, "unknown_key", "the token presented is not this key's")
    if proof.device_id != key.device_id:
        raise ApiError(403, "wrong_device", "only the key's own device can refresh its token")
    skew = config.proof_max_skew_s
    refusal = auth.proof_error(request, proof, claims.holder, body, now=now, max_skew=skew)
    if refusal is not None:
        raise refusal
    scope, expiry = auth.device_scope(proof.device_id), auth.nonce_expiry(proof, skew)
    if not known.nonces.claim(scope, proof.nonce, now=now, expires_at=expiry):
        raise auth.replayed()
    if key.status is KeyStatus.SUSPENDED:
        raise ApiError(403, "key_suspended", "the key is suspended; ask the owner to resume it")
    if key.status is KeyStatus.REVOKED or _revoked(known.ledger(key.vin), claims):
        raise ApiError(403, "key_revoked", "the key is revoked")
    if now >= claims.expires:
        raise ApiError(403, "key_not_valid_now", "the token presented has expired")
    issued = services.issuer.issue_token(
        key,
        holder_key,
        now=now,
        max_lifetime=config.degraded_token_lifetime_s,
        presented=claims,
    )
    if issued is None:
        raise ApiError(403, "key_not_valid_now", "the key's validity window excludes now")
    return degraded.degraded_json(
        token_view(key, issued),
        reason=degraded.STORE_UNAVAILABLE,
        detail=f"signed without the state store: valid until {issued.expires}, refresh again"
        f" after {issued.refresh_after}",
    )


def pending_answer(operation: Operation, *, key_id: str | None = None) -> web.Response:
    """202 accepted_pending, with the marker (and the id of the key it will create, if any)."""
    body: dict[str, Any] = {
        "status": "accepted_pending",
        "operation_id": operation.op_id,
        "accepted_at": operation.accepted_at,
    }
    detail = (
        "the state store is unavailable: this change is recorded and will be applied as soon as"
        " it is back; connected cars have been told already"
    )
    if key_id is not None:
        body["key_id"] = key_id
        detail = (
            "the state store is unavailable: the acceptance is recorded and will be checked and"
            " applied as soon as it is back; then this key's token comes from its refresh"
        )
    return degraded.degraded_json(
        body, reason=degraded.STORE_UNAVAILABLE, detail=detail, status=202
    )


async def pending_acceptance(
    services: Services, accepted: acceptance.Acceptance, taken: Invitation | None, *, now: int
) -> web.Response:
    """Journal the acceptance (202), bounded per account: the same invitation again is answered
    with the waiting operation; past ``MAX_PENDING_ACCEPTANCES`` others, 429 too_many_pending.
    An acceptance already holding its taken invitation is always journaled (never lost)."""
    waiting = services.outage.pending_acceptances(accepted.account_id)
    if taken is None:
        for operation in waiting:
            if operation.payload["invitation_id"] == accepted.invitation_id:
                return pending_answer(operation, key_id=operation.payload["key_id"])
        if len(waiting) >= acceptance.MAX_PENDING_ACCEPTANCES:
            raise ApiError(
                429, "too_many_pending",
                "the state store is unavailable and this account has acceptances waiting "
                "already; retry once they are applied",
                headers={"Retry-After": str(PENDING_RETRY_AFTER_S)},
            )  # fmt: skip
    operation = await services.outage.accept_share(accepted, taken, now=now)
    return pending_answer(operation, key_id=accepted.key_id)


async def journaled(
    services: Services, now: int, vin: str, keys: list[KeyRecord], status: KeyStatus
) -> web.Response:
    """The store failed during a revocation or suspension: 202 accepted_pending (outage)."""
    operation = await services.outage.accept_withdrawal(vin, keys, status, now=now)
    return pending_answer(operation)


def token_view(key: KeyRecord, issued: IssuedToken) -> dict[str, Any]:
    """The one JSON shape of a key and its freshly signed token."""
    return {
        "key_id": key.key_id,
        "role": key.role.name.lower(),
        "token": b64url_encode(issued.token),
        "token_not_before": issued.not_before,
        "token_expires_at": issued.expires,
        "refresh_after": issued.refresh_after,
    }


def _known(hit: tuple[Any, int] | None) -> Any:
    if hit is None:
        return None
    degraded.note_stale(hit[1])
    return hit[0]


def _unknown(what: str) -> web.Response:
    return degraded.try_later(
        f"the state store is unavailable and {what} is not known here; try again later"
    )


def _revoked(ledger: tuple[int, list[RevocationEntry]] | None, claims: KeyToken) -> bool:
    """Whether the car's last known ledger (if known here) revokes the token."""
    if ledger is None:
        return False
    _, entries = ledger
    tokens: dict[bytes, int] = {}
    holders: dict[bytes, tuple[int, int]] = {}
    for e in entries:
        if e.kind is RevocationKind.TOKEN:
            tokens[e.subject] = max(e.until, tokens.get(e.subject, 0))
        else:
            before, until = holders.get(e.subject, (0, 0))
            holders[e.subject] = (max(before, e.before), max(until, e.until))
    return RevocationState(claims.vin, tokens=tokens, holders=holders).is_revoked(claims)
