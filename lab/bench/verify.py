"""``phonekey bench``: speed of the unlock decision against a ceiling measured in the same run.

The decision (challenge, token verify, proof of possession, revocation lookup, time and entitlement
checks) is timed interleaved with two raw ES256 verifies by ``cryptography`` on the same messages,
so drift on a busy machine hits both alike. Reported: medians, p99s and the ratio of medians.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import (
    Action,
    ChallengeBook,
    IssuerKeyRing,
    RevocationLedger,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    UnlockRequest,
    cose,
    decide,
    issue,
    prove,
)
from keycore.errors import InvalidToken
from keycore.proof import proof_message
from keycore.token import TYP_KEY_TOKEN, decode_claims
from lab.stats import percentile

VIN = "5YJ3E1EA7KF000001"
NOW = 1_800_000_000
REVOKED_ENTRIES = 1_000


@dataclass(frozen=True)
class VerifyBench:
    iterations: int
    token_bytes: int
    revocation_entries: int
    decision_us_median: float
    decision_us_p99: float
    raw_us_median: float
    raw_us_p99: float
    ratio: float
    cold_decision_us_median: float
    cold_ratio: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def _p99(samples: list[float]) -> float:
    return percentile(samples, 0.99)


def bench_verify(iterations: int = 2000) -> VerifyBench:
    """Time ``iterations`` unlock decisions and as many pairs of raw ES256 verifies."""
    root = SoftwareSigner.generate()
    ring = IssuerKeyRing.create(now=NOW - 3600)
    trust = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=NOW))
    issuer = ring.active.signer
    ledger = RevocationLedger(VIN)
    for _ in range(REVOKED_ENTRIES):  # a realistic list: the lookup must not be free by emptiness
        ledger.revoke_token(os.urandom(16), NOW + 86_400)
    revocations = RevocationState(VIN).apply(ledger.document(issuer, now=NOW), trust=trust, now=NOW)
    clock = TrustedClock.provisioned(now=NOW, mono=0.0, boot_id="bench")
    phone = SoftwareSigner.generate()
    token = issue(
        signer=issuer,
        vin=VIN,
        holder=phone.public_key,
        role=Role.OWNER,
        now=NOW,
        expires=NOW + 86_400,
    )
    nonces: Iterator[bytes] = iter([os.urandom(32) for _ in range(2 * iterations)])
    book = ChallengeBook(capacity=2 * iterations, random_bytes=lambda n: next(nonces))

    def request() -> UnlockRequest:
        challenge = book.issue(mono=1.0)
        proof = prove(phone, challenge=challenge, vin=VIN, action=Action.UNLOCK, token=token)
        return UnlockRequest(token, Action.UNLOCK, challenge, proof)

    requests = [request() for _ in range(iterations)]

    # The ceiling: the two signature checks an unlock cannot avoid, on the very same messages.
    msg = cose.parse_sign1(token, typ=TYP_KEY_TOKEN, max_size=1024, error=InvalidToken)
    issuer_key = trust.lookup(msg.kid)
    assert issuer_key is not None
    token_sig = cose.signature_to_der(msg.signature)
    token_tbs = msg.to_be_signed()
    pop_sig = cose.signature_to_der(requests[0].proof)
    pop_msg = proof_message(requests[0].challenge, VIN, Action.UNLOCK, token)
    ecdsa = ec.ECDSA(hashes.SHA256())

    def raw_pair() -> None:
        issuer_key.public_key.verify(token_sig, token_tbs, ecdsa)
        phone.public_key.verify(pop_sig, pop_msg, ecdsa)

    def decision(req: UnlockRequest) -> Callable[[], None]:
        def run() -> None:
            result = decide(
                req,
                vin=VIN,
                trust=trust,
                revocations=revocations,
                clock=clock,
                challenges=book,
                mono=2.0,
            )
            if not result.allowed:
                raise RuntimeError(f"benchmark decision denied: {result.code}")

        return run

    # A cold decision empties keycore's caches first, as for a phone the car has not seen.
    cold_requests = [request() for _ in range(iterations)]
    warm: list[float] = []
    cold: list[float] = []
    raw: list[float] = []
    gc.disable()
    try:
        for req, cold_req in zip(requests, cold_requests, strict=True):
            warm.append(_time_once(decision(req)))
            raw.append(_time_once(raw_pair))
            cose.clear_caches()
            decode_claims.cache_clear()
            cold.append(_time_once(decision(cold_req)))
    finally:
        gc.enable()
    decision_median = statistics.median(warm)
    raw_median = statistics.median(raw)
    return VerifyBench(
        iterations=iterations,
        token_bytes=len(token),
        revocation_entries=len(revocations),
        decision_us_median=round(decision_median, 2),
        decision_us_p99=round(_p99(warm), 2),
        raw_us_median=round(raw_median, 2),
        raw_us_p99=round(_p99(raw), 2),
        ratio=round(decision_median / raw_median, 3),
        cold_decision_us_median=round(statistics.median(cold), 2),
        cold_ratio=round(statistics.median(cold) / raw_median, 3),
    )


def _time_once(fn: Callable[[], None]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000
