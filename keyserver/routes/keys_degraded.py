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
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keycore import InvalidProof, InvalidToken, RevocationState, issue
from keycore.encoding import b64url_decode, b64url_encode
from keycore.request_proof import HEADER, parse_request_proof, verify_request_proof
from keycore.token import KeyToken
from keycore.verifier import authenticate
from keyserver import auth, degraded, fields
from keyserver.app import CONFIG, KEYRING, METRICS
from keyserver.http import ApiError, parse_json_object, read_body
from keyserver.issuance import IssuedToken, refresh_after, token_window
from keyserver.models import KeyRecord, KeyStatus, RevocationEntry, RevocationKind, Session
from keyserver.outage import LAST_KNOWN

MAX_TOKEN_CHARS = 2048


async def refresh_without_store(request: web.Request, key_id: str) -> web.Response:
    """The degraded refresh (module docstring); the normal refusal codes otherwise."""
    app = request.app
    config, known = app[CONFIG], app[LAST_KNOWN]
    now = auth.now()
    # the bearer check of keyserver.auth (401 without one), then the session as last known here
    token_hash = auth._bearer(request)
    session = _known(known.cache.get(("session", token_hash), now=now))
    if not isinstance(session, Session) or session.expires_at <= now:
        return _unknown("the session")
    header = request.headers.get(HEADER)
    if header is None:
        raise ApiError(401, "device_proof_required", f"this operation needs a {HEADER} header")
    try:
        proof = parse_request_proof(header)
    except InvalidProof:
        raise ApiError(400, "bad_device_proof", f"the {HEADER} header is malformed") from None
    body = await read_body(request, config.max_body_bytes) if request.body_exists else b""
    presented = token_field(parse_json_object(body) if body else {})
    key = _known(known.cache.get(("key", key_id), now=now))
    if not isinstance(key, KeyRecord):
        return _unknown("this key")
    if presented is None:
        return _unknown("the current token (send it in the body's 'token' field)")
    if key.account_id != session.account_id:
        raise ApiError(404, "unknown_key", "no such key among the caller's")
    try:
        claims, holder_key = authenticate(presented, now=now, trust=app[KEYRING].trust_store())
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
    try:
        verify_request_proof(
            proof, public_key=holder_key, method=request.method, path=request.path_qs,
            body=body, now=now, max_skew=config.proof_max_skew_s,
        )  # fmt: skip
    except InvalidProof as error:
        stale = error.reason.value == "stale"
        code = "stale_device_proof" if stale else "bad_device_proof"
        raise ApiError(401, code, "the device proof does not verify") from None
    expiry = proof.timestamp + config.proof_max_skew_s + 1
    if not known.nonces.claim(f"proof:{proof.device_id}", proof.nonce, now=now, expires_at=expiry):
        raise ApiError(401, "replayed_device_proof", "this proof has been used already")
    if key.status is KeyStatus.SUSPENDED:
        raise ApiError(403, "key_suspended", "the key is suspended; ask the owner to resume it")
    if key.status is KeyStatus.REVOKED or _revoked(known.ledger(key.vin), claims):
        raise ApiError(403, "key_revoked", "the key is revoked")
    if now >= claims.expires:
        raise ApiError(403, "key_not_valid_now", "the token presented has expired")
    lifetime = min(config.lifetime(key.role), config.degraded_token_lifetime_s)
    window = token_window(key, now=now, lifetime=lifetime)
    if window is None:
        raise ApiError(403, "key_not_valid_now", "the key's validity window excludes now")
    not_before, expires = window
    token = issue(
        signer=app[KEYRING].ring.active.signer, vin=key.vin, holder=holder_key, role=claims.role,
        now=now, expires=expires, not_before=not_before, entitlements=claims.entitlements,
        schedule=claims.schedule,
    )  # fmt: skip
    app[METRICS].tokens_issued.labels(key.role.name.lower()).inc()
    issued = IssuedToken(
        token, not_before, expires,
        refresh_after(not_before, expires, now=now, ahead=config.refresh_ahead_s),
    )  # fmt: skip
    return degraded.degraded_json(
        token_view(key, issued),
        reason=degraded.STORE_UNAVAILABLE,
        detail=f"signed without the state store: valid until {expires}, refresh again after"
        f" {issued.refresh_after}",
    )


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


def token_field(body: dict[str, Any]) -> bytes | None:
    """The optional ``token`` of a refresh body, decoded; 400 if it is there but malformed."""
    for name in body:
        if name != "token":
            raise ApiError(400, "unknown_field", f"unknown field {name[:64]!r}")
    text = body.get("token")
    if text is None:
        return None
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS:
        raise fields.invalid("token", "the current token, unpadded base64url")
    try:
        return b64url_decode(text)
    except ValueError:
        raise fields.invalid("token", "the current token, unpadded base64url") from None


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
