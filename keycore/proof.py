"""Proof of possession: the car's single-use challenge and the phone's signature over it.

The phone signs ``context ‖ challenge ‖ VIN ‖ action ‖ SHA-256(token)`` with the device key whose
public half is in the token, so a stolen token without the phone's key is useless, and an answer
replayed to another challenge, car, action or token fails.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import cose
from keycore.errors import InvalidProof, Reason
from keycore.roles import Action

CHALLENGE_BYTES = 32
#: Domain separation: the device key also signs API requests, which carry another context.
POP_CONTEXT = b"phonekey/pop/v1\x00"


def proof_message(challenge: bytes, vin: str, action: Action, token: bytes) -> bytes:
    if len(challenge) != CHALLENGE_BYTES:
        raise InvalidProof(Reason.MALFORMED, "challenge must be 32 bytes")
    return (
        POP_CONTEXT
        + challenge
        + vin.encode("ascii")
        + bytes([int(action)])
        + hashlib.sha256(token).digest()
    )


def prove(
    device: cose.Signer, *, challenge: bytes, vin: str, action: Action, token: bytes
) -> bytes:
    """The phone's answer to a challenge: a 64-byte ES256 signature."""
    return device.sign(proof_message(challenge, vin, action, token))


def verify_proof(
    proof: bytes,
    *,
    holder: ec.EllipticCurvePublicKey,
    challenge: bytes,
    vin: str,
    action: Action,
    token: bytes,
) -> None:
    """Raise InvalidProof unless ``proof`` was made by ``holder`` for exactly these inputs."""
    if not isinstance(proof, bytes) or len(proof) != cose.SIGNATURE_BYTES:
        raise InvalidProof(Reason.MALFORMED, "proof must be 64 bytes")
    if not cose.verify_es256(holder, proof, proof_message(challenge, vin, action, token)):
        raise InvalidProof(Reason.BAD_PROOF)


class ChallengeBook:
    """The car's outstanding challenges: each is answered at most once, and only while fresh.

    Sans-IO: the caller passes its monotonic clock reading; randomness is injectable for tests.
    Bounded: when full, the oldest outstanding challenge is forgotten (and so refused).
    """

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        capacity: int = 16,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if ttl <= 0 or capacity <= 0:
            raise ValueError("ttl and capacity must be positive")
        self.ttl = ttl
        self.capacity = capacity
        self._random_bytes = random_bytes
        self._outstanding: OrderedDict[bytes, float] = OrderedDict()

    def issue(self, *, mono: float) -> bytes:
        nonce = self._random_bytes(CHALLENGE_BYTES)
        if len(nonce) != CHALLENGE_BYTES:
            raise ValueError("random source returned the wrong length")
        self._outstanding[nonce] = mono
        while len(self._outstanding) > self.capacity:
            self._outstanding.popitem(last=False)
        return nonce

    def consume(self, challenge: bytes, *, mono: float) -> None:
        """Spend ``challenge``: unknown or used is ``replayed``, too old ``challenge_expired``."""
        issued = self._outstanding.pop(challenge, None)
        if issued is None:
            raise InvalidProof(Reason.REPLAYED)
        if not issued <= mono <= issued + self.ttl:
            raise InvalidProof(Reason.CHALLENGE_EXPIRED)

    def __len__(self) -> int:
        return len(self._outstanding)
