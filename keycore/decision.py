"""The unlock decision: challenge, token and proof of possession, decided with local state only.

This is what a car runs for every request, with no network: it never raises for bad input and
always returns an UnlockDecision carrying a reason code for audit and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from keycore.errors import KeycoreError, Reason
from keycore.proof import ChallengeBook, verify_proof
from keycore.revocation import RevocationState
from keycore.roles import Action, Role
from keycore.timekeeping import TrustedClock
from keycore.token import KeyToken
from keycore.trust import TrustStore
from keycore.verifier import KeyGrant, authenticate, authorize


@dataclass(frozen=True, slots=True)
class UnlockRequest:
    token: bytes
    action: Action
    challenge: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class UnlockDecision:
    """Allowed with a grant, or denied with a ``reason``; ``at`` is the trusted time used.

    ``action`` is None only when the request named no known action. ``token`` holds the claims of
    an authenticated token even when it was refused later (revoked, expired …), for the audit trail.
    """

    action: Action | None
    at: float
    reason: Reason | None = None
    grant: KeyGrant | None = None
    token: KeyToken | None = None

    @property
    def allowed(self) -> bool:
        return self.grant is not None

    @property
    def code(self) -> str:
        return "granted" if self.reason is None else self.reason.value


def decide(
    request: UnlockRequest,
    *,
    vin: str,
    trust: TrustStore,
    revocations: RevocationState,
    clock: TrustedClock,
    challenges: ChallengeBook,
    mono: float,
) -> UnlockDecision:
    """Decide one request at monotonic time ``mono``. Fails closed on any doubt.

    Order: the challenge is spent first (a refused answer cannot be retried), then the token is
    authenticated, then the proof of possession checked, and only then the token authorised.
    Trusted time is at least the token's verified iat. After a clock reset, only owner keys are
    honoured until fresh signed time arrives (the caller raises its clock with
    ``grant.token.issued_at``). Raises ValueError only for a misconfigured car (revocation state
    of another VIN); bad input never raises.
    """
    if revocations.vin != vin:
        raise ValueError("revocation state belongs to another vehicle: the car is misconfigured")
    now = clock.now(mono)
    try:
        if isinstance(request.action, bool):  # True == 1 in Python, but it is no action
            raise TypeError("action must be an integer")
        action = Action(request.action)
    except (TypeError, ValueError):
        return UnlockDecision(None, now, Reason.MALFORMED)
    claims: KeyToken | None = None
    try:
        if type(request.challenge) is not bytes or type(request.token) is not bytes:
            raise TypeError("challenge and token must be bytes")
        challenges.consume(request.challenge, mono=mono)
        claims, holder_key = authenticate(request.token, now=now, trust=trust)
        # The proof comes before any other verdict: someone holding a copied token but not the
        # phone's key learns nothing about it (revoked, expired, schedule …) but bad_proof.
        verify_proof(
            request.proof,
            holder=holder_key,
            challenge=request.challenge,
            vin=vin,
            action=action,
            token=request.token,
        )
        now = max(now, claims.issued_at)
        authorize(claims, vin=vin, action=action, now=now, revocations=revocations)
        if clock.reset and claims.role is not Role.OWNER:
            return UnlockDecision(action, now, Reason.UNTRUSTED_TIME, token=claims)
    except KeycoreError as error:
        return UnlockDecision(action, now, error.reason, token=claims)
    except (TypeError, ValueError):
        return UnlockDecision(action, now, Reason.MALFORMED, token=claims)
    return UnlockDecision(action, now, grant=KeyGrant(claims, action, holder_key), token=claims)
