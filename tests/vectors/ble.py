"""BLE protocol vectors: every message type, the malformed variants a car or phone must refuse,
and frames cut into chunks at the smallest and a typical MTU.

Valid messages are built with ble_fallback's own encoder from the fixed keys of common.py; the
refusals are written byte by byte with cbor2 so each fails for exactly one stated reason. Each
refusal also says how a car answers it when a phone sends it (``car_answer``): a ``malformed``
Result for one CBOR map naming a phone message's type, else a protocol error that ends the session.
"""

from __future__ import annotations

from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ble_fallback.framing import chunk_size_for, split_frame
from ble_fallback.messages import (
    MAX_MESSAGE_BYTES,
    Busy,
    CarStatus,
    Challenge,
    Message,
    MessageType,
    Result,
    RevocationList,
    TimeAnswer,
    TrustUpdate,
    UnlockRequest,
    encode,
    message_type,
)
from keycore import Action, RevokedToken, prove, sign_revocation_list, sign_time
from keycore.encoding import loads_strict
from keycore.errors import KeycoreError
from tests.vectors.common import (
    BASE_TRUST_UPDATE,
    CHALLENGE,
    DAY,
    NOW,
    OTHER_CHALLENGE,
    TIME_NONCE,
    VIN,
    Encoded,
    case,
    raw_map,
    signer,
    tid,
    too_large,
)
from tests.vectors.token_claims import OWNER

BLE_TIME_NONCE = TIME_NONCE[:16]
NEXT_TIME_NONCE = TIME_NONCE[16:]
STATUS = CarStatus(trusted_time=NOW, revocation_sequence=3, trust_sequence=1, clock_reset=False)


def fields(message: Message) -> dict[str, Any]:
    """A message as JSON: byte strings in hex, enums by name."""
    out: dict[str, Any] = {"type": message_type(message).name.lower()}
    for name in message.__slots__:  # type: ignore[union-attr]
        value = getattr(message, name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, CarStatus):
            value = {n: getattr(value, n) for n in value.__slots__}
        elif isinstance(value, Action | MessageType):
            value = value.name.lower()
        out[name] = value
    return out


def messages() -> dict[str, Message]:
    token = OWNER.issued()
    proof = prove(signer("phone"), challenge=CHALLENGE, vin=VIN, action=Action.UNLOCK, token=token)
    revocation = sign_revocation_list(
        signer("issuer"), vin=VIN, sequence=4, now=NOW, tokens=[RevokedToken(tid(2), NOW + DAY)]
    )
    later = CarStatus(NOW + 1, 4, 1, False)
    unlock = MessageType.UNLOCK_REQUEST
    return {
        "challenge": Challenge(CHALLENGE, BLE_TIME_NONCE, STATUS),
        "challenge_clock_reset": Challenge(CHALLENGE, BLE_TIME_NONCE, CarStatus(0, 0, 0, True)),
        "unlock_request": UnlockRequest(token, Action.UNLOCK, proof),
        "result_granted": Result(
            unlock, "granted", Action.UNLOCK, OTHER_CHALLENGE, BLE_TIME_NONCE, STATUS
        ),
        "result_revoked": Result(
            unlock, "revoked", Action.LOCK, OTHER_CHALLENGE, BLE_TIME_NONCE, STATUS
        ),
        "result_late": Result(
            unlock, "late", Action.UNLOCK, OTHER_CHALLENGE, BLE_TIME_NONCE, STATUS
        ),
        "result_malformed_unlock_request": Result(
            unlock, "malformed", None, OTHER_CHALLENGE, BLE_TIME_NONCE, STATUS
        ),
        "result_revocation_applied": Result(
            MessageType.REVOCATION_LIST, "applied", None, OTHER_CHALLENGE, BLE_TIME_NONCE, later
        ),
        "result_trust_update_stale": Result(
            MessageType.TRUST_UPDATE, "stale", None, OTHER_CHALLENGE, BLE_TIME_NONCE, STATUS
        ),
        "result_time_applied": Result(
            MessageType.TIME_ANSWER, "applied", None, OTHER_CHALLENGE, NEXT_TIME_NONCE, later
        ),
        "busy": Busy(1500),
        "revocation_list": RevocationList(revocation),
        "trust_update": TrustUpdate(BASE_TRUST_UPDATE),
        "time_answer": TimeAnswer(sign_time(signer("issuer"), nonce=BLE_TIME_NONCE, now=NOW + 5)),
    }


DROP = object()  # a key left out


def challenge_body(changes: dict[Any, Any] | None = None) -> list[tuple[Any, Any]]:
    body: dict[Any, Any] = {1: 1, 2: CHALLENGE, 3: BLE_TIME_NONCE, 4: NOW, 5: 3, 6: 1, 7: False}
    body.update(changes or {})
    return [(k, v) for k, v in body.items() if v is not DROP]


def result_body(changes: dict[Any, Any] | None = None) -> list[tuple[Any, Any]]:
    body: dict[Any, Any] = dict(challenge_body({1: 3, 2: OTHER_CHALLENGE}))
    body.update({8: 2, 9: "granted", 10: 0})
    body.update(changes or {})
    return [(k, v) for k, v in body.items() if v is not DROP]


def refusals(valid: dict[str, Message]) -> list[dict[str, Any]]:
    request = valid["unlock_request"]
    assert isinstance(request, UnlockRequest)
    req = {1: 2, 2: request.token, 3: 0, 4: request.proof}

    def m(pairs: list[tuple[Any, Any]]) -> bytes:
        return raw_map(pairs)

    malformed = [
        ("not_a_map", cbor2.dumps([1, CHALLENGE])),
        ("no_message_type", cbor2.dumps({2: CHALLENGE})),
        ("unknown_message_type", cbor2.dumps({1: 8, 2: b"x"})),
        ("message_type_zero", cbor2.dumps({1: 0, 2: b"x"})),
        ("message_type_as_text", cbor2.dumps({1: "busy", 2: 0})),
        ("challenge_extra_key", m([*challenge_body(), (11, 0)])),
        ("challenge_missing_time_nonce", m(challenge_body({3: DROP}))),
        ("challenge_nonce_31_bytes", m(challenge_body({2: CHALLENGE[:31]}))),
        ("challenge_time_nonce_17_bytes", m(challenge_body({3: TIME_NONCE[:17]}))),
        ("challenge_clock_reset_as_integer", m(challenge_body({7: 0}))),
        ("challenge_negative_time", m(challenge_body({4: -1}))),
        ("challenge_key_as_float", m([(1.0, 1), *challenge_body()[1:]])),
        ("challenge_duplicate_key", m([*challenge_body(), (2, CHALLENGE)])),
        ("challenge_over_long_head", m(challenge_body({5: Encoded(b"\x1a\x00\x00\x00\x03")}))),
        ("challenge_trailing_byte", encode(valid["challenge"]) + b"\x00"),
        ("challenge_indefinite_map", raw_map(challenge_body(), indefinite=True)),
        ("unlock_request_unknown_action", cbor2.dumps({**req, 3: 6})),
        ("unlock_request_action_as_boolean", cbor2.dumps({**req, 3: False})),
        ("unlock_request_proof_63_bytes", cbor2.dumps({**req, 4: request.proof[:63]})),
        ("unlock_request_der_proof", cbor2.dumps({**req, 4: der(request.proof)})),
        ("unlock_request_token_as_text", cbor2.dumps({**req, 2: request.token.hex()})),
        ("unlock_request_empty_token", cbor2.dumps({**req, 2: b""})),
        ("unlock_request_token_over_1024_bytes", cbor2.dumps({**req, 2: bytes(1025)})),
        ("unlock_request_with_a_challenge", cbor2.dumps({**req, 5: CHALLENGE})),
        ("result_unknown_code", m(result_body({9: "maybe"}))),
        ("result_applied_to_an_unlock", m(result_body({9: "applied"}))),
        ("result_granted_to_a_courier", m(result_body({8: 5, 9: "granted", 10: DROP}))),
        ("result_late_to_a_courier", m(result_body({8: 5, 9: "late", 10: DROP}))),
        ("result_unlock_without_action", m(result_body({10: DROP}))),
        ("result_courier_with_action", m(result_body({8: 6, 9: "applied"}))),
        ("result_answers_a_challenge", m(result_body({8: 1}))),
        ("busy_retry_after_over_ten_minutes", cbor2.dumps({1: 4, 2: 600_001})),
        ("busy_negative_retry_after", cbor2.dumps({1: 4, 2: -1})),
        ("revocation_list_empty_document", cbor2.dumps({1: 5, 2: b""})),
        ("time_answer_over_512_bytes", cbor2.dumps({1: 7, 2: bytes(513)})),
        ("time_answer_as_text", cbor2.dumps({1: 7, 2: "d284"})),
    ]
    cases = [case(name, data, "malformed", car_answer=car_answer(data)) for name, data in malformed]
    over_cap = too_large("over_the_message_cap", encode(valid["busy"]), MAX_MESSAGE_BYTES)
    cases.append({**over_cap, "car_answer": "protocol_error"})  # refused by the frame's cap
    return cases


def der(proof: bytes) -> bytes:
    """The proof's r ‖ s as the DER SEQUENCE that iOS and Android signing APIs return."""
    r, s = int.from_bytes(proof[:32]), int.from_bytes(proof[32:])
    return encode_dss_signature(r, s)


class _NotAMap(KeycoreError):
    pass


def car_answer(data: bytes) -> str:
    """A car answers ``malformed`` when it can tell which phone message it could not read: one
    CBOR map (§3 rules) whose key 1 is 2, 5, 6 or 7. Anything else ends the session."""
    try:
        value = loads_strict(data, _NotAMap, max_size=MAX_MESSAGE_BYTES)
    except _NotAMap:
        return "protocol_error"
    kind = value.get(1) if isinstance(value, dict) else None
    phone = type(kind) is int and kind in (2, 5, 6, 7)
    return "malformed_result" if phone else "protocol_error"


def frames(valid: dict[str, Message]) -> list[dict[str, Any]]:
    out = []
    for name, seq in (("challenge", 0), ("unlock_request", 1)):
        message = encode(valid[name])
        for mtu in (23, 185):
            size = chunk_size_for(mtu)
            out.append(
                {
                    "name": f"{name}_mtu_{mtu}",
                    "message": message.hex(),
                    "seq": seq,
                    "mtu": mtu,
                    "chunk_size": size,
                    "chunks": [c.hex() for c in split_frame(seq, message, size)],
                }
            )
    return out


def ble_vectors() -> dict[str, Any]:
    valid = messages()
    cases = [
        case(name, encode(message), "valid", decoded=fields(message))
        for name, message in valid.items()
    ]
    return {
        "description": (
            "BLE protocol messages and frames (docs/protocol.md, BLE protocol). Decode each "
            "case's input as one message: expected is 'valid' (decoded holds its fields; "
            "encoding them again gives input) or the BLE reason code of the refusal; a "
            "refusal's car_answer says whether a car answers it, sent by a phone, with a Result "
            "coded malformed (malformed_result) or ends the session (protocol_error). Each frame "
            "is message cut into chunks for seq at the MTU's chunk size; reassembling the "
            "chunks gives message."
        ),
        "context": {"vin": VIN, "max_message_bytes": MAX_MESSAGE_BYTES},
        "cases": cases + refusals(valid),
        "frames": frames(valid),
    }
