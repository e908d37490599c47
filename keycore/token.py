"""The key token: a COSE_Sign1 CWT (RFC 8392) with ES256, bound to its holder's key (RFC 8747).

Claims use integer keys: the registered CWT claims for audience (the VIN), times, token id and
confirmation key, and three private-use claims for role, entitlements and the weekly schedule.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import cose
from keycore.encoding import as_bytes, as_int, as_map, dumps, loads_strict
from keycore.errors import InvalidToken, IssueError, Reason
from keycore.roles import (
    ALL_ACTIONS_MASK,
    ROLE_ENTITLEMENTS,
    ROLE_MAX_LIFETIME,
    ROLES,
    Action,
    Role,
    from_mask,
    to_mask,
)
from keycore.schedule import WeeklySchedule

#: typ header: CoAP Content-Format 61, application/cwt (RFC 8392 §9.3, RFC 9596).
TYP_KEY_TOKEN = 61
MAX_TOKEN_BYTES = 1024
TOKEN_ID_BYTES = 16
MAX_TIME = 2**40  # NumericDate bound: far beyond any real expiry, small enough to stay exact

CLAIM_AUD, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT, CLAIM_CTI, CLAIM_CNF = 3, 4, 5, 6, 7, 8
CLAIM_ROLE, CLAIM_ENTITLEMENTS, CLAIM_SCHEDULE = -65537, -65538, -65539
CNF_COSE_KEY = 1

_CLAIMS = {CLAIM_AUD, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT, CLAIM_CTI, CLAIM_CNF}
_ALL_CLAIMS = _CLAIMS | {CLAIM_ROLE, CLAIM_ENTITLEMENTS, CLAIM_SCHEDULE}
_REQUIRED_CLAIMS = _CLAIMS | {CLAIM_ROLE, CLAIM_ENTITLEMENTS}

# ISO 3779: 17 characters, digits and capitals without I, O and Q.
_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")


def check_vin(vin: str) -> str:
    if not isinstance(vin, str) or not _VIN.fullmatch(vin):
        raise ValueError("a VIN is 17 characters: digits and capitals except I, O, Q")
    return vin


@dataclass(frozen=True, slots=True)
class KeyToken:
    """The claims of a key token, plus the issuer key id from its protected header."""

    token_id: bytes
    vin: str
    holder: bytes  # holder's P-256 public key, x || y
    role: Role
    entitlements: frozenset[Action]
    not_before: int
    expires: int
    issued_at: int
    schedule: WeeklySchedule | None
    kid: bytes

    @property
    def holder_id(self) -> bytes:
        return cose.holder_id(self.holder)

    def claims(self) -> dict[int, Any]:
        claims: dict[int, Any] = {
            CLAIM_AUD: self.vin,
            CLAIM_EXP: self.expires,
            CLAIM_NBF: self.not_before,
            CLAIM_IAT: self.issued_at,
            CLAIM_CTI: self.token_id,
            CLAIM_CNF: {
                CNF_COSE_KEY: {
                    cose.KEY_KTY: cose.KTY_EC2,
                    cose.KEY_CRV: cose.CRV_P256,
                    cose.KEY_X: self.holder[:32],
                    cose.KEY_Y: self.holder[32:],
                }
            },
            CLAIM_ROLE: int(self.role),
            CLAIM_ENTITLEMENTS: to_mask(self.entitlements),
        }
        if self.schedule is not None:
            claims[CLAIM_SCHEDULE] = self.schedule.encode()
        return claims


def issue(
    *,
    signer: cose.Signer,
    vin: str,
    holder: ec.EllipticCurvePublicKey,
    role: Role,
    now: int,
    expires: int,
    not_before: int | None = None,
    entitlements: frozenset[Action] | None = None,
    schedule: WeeklySchedule | None = None,
    token_id: bytes | None = None,
) -> bytes:
    """Sign a key token. ``entitlements`` default to everything the role may do.

    Raises IssueError when the request breaks policy: a bad VIN, role or action, entitlements
    beyond the role, an empty window, or one longer than the role allows — measured from the
    earlier of ``now`` and ``not_before``, because a retired issuer key stays trusted for
    ``max_token_lifetime`` after it last signed.
    """
    try:
        check_vin(vin)
        role = Role(role)
        granted = (
            ROLE_ENTITLEMENTS[role]
            if entitlements is None
            else frozenset(Action(a) for a in entitlements)
        )
    except ValueError as error:
        raise IssueError(str(error)) from None
    if not granted:
        raise IssueError("a key must grant at least one action")
    if not granted <= ROLE_ENTITLEMENTS[role]:
        extra = sorted(a.name.lower() for a in granted - ROLE_ENTITLEMENTS[role])
        raise IssueError(f"role {role.name.lower()} cannot be granted {', '.join(extra)}")
    nbf = now if not_before is None else not_before
    if not 0 <= nbf < expires <= MAX_TIME or not 0 <= now < expires:
        raise IssueError("validity window must be non-empty, end after now, and fit NumericDate")
    if expires - min(now, nbf) > ROLE_MAX_LIFETIME[role]:
        raise IssueError(f"a {role.name.lower()} key lives at most {ROLE_MAX_LIFETIME[role]} s")
    tid = secrets.token_bytes(TOKEN_ID_BYTES) if token_id is None else token_id
    if len(tid) != TOKEN_ID_BYTES:
        raise IssueError("token id must be 16 bytes")
    token = KeyToken(
        token_id=tid,
        vin=vin,
        holder=cose.point_bytes(holder),
        role=role,
        entitlements=granted,
        not_before=nbf,
        expires=expires,
        issued_at=now,
        schedule=schedule,
        kid=signer.kid,
    )
    return cose.sign1(dumps(token.claims()), typ=TYP_KEY_TOKEN, signer=signer)


@functools.lru_cache(maxsize=256)
def decode_claims(payload: bytes, kid: bytes) -> KeyToken:
    """Decode the claims of a token whose signature has already been verified.

    Cached (a pure function of its arguments; failures are not cached): a car sees the same
    tokens again and again. The signature is still checked on every use.
    """
    claims = as_map(
        loads_strict(payload, InvalidToken, max_size=MAX_TOKEN_BYTES),
        InvalidToken,
        _ALL_CLAIMS,
        _REQUIRED_CLAIMS,
    )
    vin = claims[CLAIM_AUD]
    if type(vin) is not str or not _VIN.fullmatch(vin):
        raise InvalidToken(Reason.MALFORMED, "aud is not a VIN")
    cnf = as_map(claims[CLAIM_CNF], InvalidToken, {CNF_COSE_KEY}, {CNF_COSE_KEY})
    holder, _ = cose.parse_cose_key(cnf[CNF_COSE_KEY], InvalidToken, with_kid=False)
    nbf = as_int(claims[CLAIM_NBF], InvalidToken, 0, MAX_TIME)
    exp = as_int(claims[CLAIM_EXP], InvalidToken, nbf + 1, MAX_TIME)
    schedule = None
    if CLAIM_SCHEDULE in claims:
        schedule = WeeklySchedule.decode(claims[CLAIM_SCHEDULE], InvalidToken)
    return KeyToken(
        token_id=as_bytes(claims[CLAIM_CTI], InvalidToken, TOKEN_ID_BYTES, TOKEN_ID_BYTES),
        vin=vin,
        holder=holder,
        role=ROLES[as_int(claims[CLAIM_ROLE], InvalidToken, 0, len(ROLES) - 1)],
        entitlements=from_mask(
            as_int(claims[CLAIM_ENTITLEMENTS], InvalidToken, 1, ALL_ACTIONS_MASK)
        ),
        not_before=nbf,
        expires=exp,
        # iat raises the car's clock, so it may not lie beyond the token's own life.
        issued_at=as_int(claims[CLAIM_IAT], InvalidToken, 0, exp - 1),
        schedule=schedule,
        kid=kid,
    )
