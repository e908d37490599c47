"""Token verification: the car's whole trust decision about a key token, with time as an input.

``verify`` returns a grant or raises one opaque InvalidToken whose ``reason`` is, in order of
precedence: too_large, malformed, unknown_key (key id not trusted), algorithm_mismatch,
bad_signature, malformed (claims), unknown_key (issuer key not valid at max(now, iat), or iat
outside its window), malformed (holder key off the curve), wrong_vehicle, not_entitled (validity
window longer than the role's maximum), revoked, not_yet_valid, expired, outside_schedule,
not_entitled (action).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import cose
from keycore.errors import InvalidToken, Reason
from keycore.revocation import RevocationState
from keycore.roles import ROLE_MAX_LIFETIME, Action, allows
from keycore.token import MAX_TOKEN_BYTES, TYP_KEY_TOKEN, KeyToken, decode_claims
from keycore.trust import TrustStore, open_signed


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """A verified token's permission for one action, with the holder key to check proofs against."""

    token: KeyToken
    action: Action
    holder_key: ec.EllipticCurvePublicKey


def authenticate(
    token: bytes, *, now: float, trust: TrustStore
) -> tuple[KeyToken, ec.EllipticCurvePublicKey]:
    """Check envelope, issuer key and signature; decode the claims. No authorisation yet.

    The issuer key must be valid at ``max(now, iat)``: once the signature verifies, the token's
    iat is a signed lower bound on the time, so a car whose clock lags is not locked out by it.
    """
    # Validity is checked below, at max(now, iat): the signed iat is not known before this.
    msg, key = open_signed(
        token, typ=TYP_KEY_TOKEN, max_size=MAX_TOKEN_BYTES, error=InvalidToken, lookup=trust.lookup
    )
    claims = decode_claims(msg.payload, msg.kid)
    if not key.valid_at(max(now, claims.issued_at)) or not key.valid_at(claims.issued_at):
        raise InvalidToken(Reason.UNKNOWN_KEY, "issuer key not valid at this time")
    try:
        holder_key = cose.load_point(claims.holder)
    except ValueError:
        raise InvalidToken(Reason.MALFORMED, "holder key is not on P-256") from None
    return claims, holder_key


def authorize(
    claims: KeyToken, *, vin: str, action: Action, now: float, revocations: RevocationState
) -> None:
    """Raise InvalidToken unless authenticated ``claims`` allow ``action`` on ``vin`` at ``now``."""
    if claims.vin != vin:
        raise InvalidToken(Reason.WRONG_VEHICLE)
    if revocations.vin != vin:
        raise ValueError("revocation state belongs to another vehicle")
    # Short lifetimes are what bound revocation on an offline car (G4): never honour a longer one.
    if claims.expires - min(claims.issued_at, claims.not_before) > ROLE_MAX_LIFETIME[claims.role]:
        raise InvalidToken(Reason.NOT_ENTITLED, "validity window longer than the role allows")
    if revocations.is_revoked(claims):
        raise InvalidToken(Reason.REVOKED)
    if now < claims.not_before:
        raise InvalidToken(Reason.NOT_YET_VALID)
    if now >= claims.expires:
        raise InvalidToken(Reason.EXPIRED)
    if claims.schedule is not None and not claims.schedule.allows(now):
        raise InvalidToken(Reason.OUTSIDE_SCHEDULE)
    if not allows(claims.role, claims.entitlements, Action(action)):
        raise InvalidToken(Reason.NOT_ENTITLED)


def verify(
    token: bytes,
    *,
    vin: str,
    action: Action,
    now: float,
    trust: TrustStore,
    revocations: RevocationState,
) -> KeyGrant:
    """Verify ``token`` for ``action`` on ``vin`` at trusted time ``now``; raises InvalidToken."""
    claims, holder_key = authenticate(token, now=now, trust=trust)
    authorize(claims, vin=vin, action=action, now=now, revocations=revocations)
    return KeyGrant(claims, Action(action), holder_key)
