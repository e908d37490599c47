"""Proof-of-possession vectors: one valid proof, and proofs made over the wrong inputs."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import (
    Action,
    SoftwareSigner,
    prove,
)
from tests.vectors.common import (
    CHALLENGE,
    OTHER_CHALLENGE,
    OTHER_VIN,
    VIN,
    case,
    flip_last,
    signer,
    xy,
)
from tests.vectors.token_claims import GUEST, OWNER


def proof_vectors() -> dict[str, Any]:
    token = OWNER.issued()
    other_token = GUEST.issued()
    phone, other_phone = signer("phone"), signer("other-phone")
    action = Action.UNLOCK
    message = (
        b"phonekey/pop/v1\x00"
        + CHALLENGE
        + VIN.encode("ascii")
        + bytes([action])
        + hashlib.sha256(token).digest()
    )

    def proof(device: SoftwareSigner = phone, **changes: Any) -> bytes:
        args: dict[str, Any] = {
            "challenge": CHALLENGE,
            "vin": VIN,
            "action": action,
            "token": token,
            **changes,
        }
        return prove(device, **args)

    valid = proof()
    assert valid == phone.sign(message)
    cases = [
        case("valid", valid, "valid", decoded={"message": message.hex()}),
        case(
            "valid_for_lock",
            proof(action=Action.LOCK),
            "valid",
            action=int(Action.LOCK),
            decoded={"message": (message[:-33] + b"\x01" + message[-32:]).hex()},
        ),
        case("signed_by_another_key", proof(other_phone), "bad_proof"),
        case("made_for_another_action", proof(action=Action.LOCK), "bad_proof"),
        case("made_for_another_vehicle", proof(vin=OTHER_VIN), "bad_proof"),
        case("made_for_another_token", proof(token=other_token), "bad_proof"),
        case("made_for_another_challenge", proof(challenge=OTHER_CHALLENGE), "bad_proof"),
        case("signed_without_context", phone.sign(message[16:]), "bad_proof"),
        case("signed_over_token_not_its_hash", phone.sign(message[:-32] + token), "bad_proof"),
        case("bit_flipped", flip_last(valid), "bad_proof"),
        case("all_zero", bytes(64), "bad_proof"),
        case("of_63_bytes", valid[:63], "malformed"),
        case(
            "der_encoded",
            phone.private_key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)),
            "malformed",
        ),
        case("empty", b"", "malformed"),
    ]
    return {
        "description": (
            "Proofs of possession. Verify each input as the proof for token (whose cnf key is the "
            "holder key), challenge, vin and action (or the case's action). expected is 'valid' "
            "(decoded.message is the signed message) or the reason code of the refusal."
        ),
        "context": {
            "token": token.hex(),
            "holder_public_key": xy("phone").hex(),
            "challenge": CHALLENGE.hex(),
            "vin": VIN,
            "action": int(action),
        },
        "cases": cases,
    }
