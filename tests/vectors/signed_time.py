"""Signed time vectors: answers to the car's nonce, and every refusal."""

from __future__ import annotations

from typing import Any

import cbor2

from keycore import (
    sign_time,
)
from tests.vectors.common import (
    DAY,
    ES384,
    ISSUER_WINDOWS,
    NOW,
    TIME_NONCE,
    TYP_TIME,
    TYP_TOKEN,
    case,
    envelope,
    flip_last,
    sign1,
    signer,
    split,
    too_large,
    trust_context,
)


def signed_time_vectors() -> dict[str, Any]:
    answer = sign_time(signer("issuer"), nonce=TIME_NONCE, now=NOW + 123)

    def body(nonce: Any = TIME_NONCE, when: Any = NOW + 123) -> bytes:
        return cbor2.dumps({1: nonce, 2: when})

    retired_time = ISSUER_WINDOWS["issuer-retired"][1] - DAY
    cases = [
        case("answer", answer, "valid", decoded={"time": NOW + 123}),
        case(
            "answer_by_next_issuer_key",
            sign_time(signer("issuer-next"), nonce=TIME_NONCE, now=NOW + 124),
            "valid",
            decoded={"time": NOW + 124},
        ),
        case(
            "expired_key_time_inside_its_window",
            sign_time(signer("issuer-retired"), nonce=TIME_NONCE, now=retired_time),
            "valid",
            decoded={"time": retired_time},
        ),
        case(
            "answer_to_another_nonce",
            sign_time(signer("issuer"), nonce=bytes(32), now=NOW + 123),
            "nonce_mismatch",
        ),
        case(
            "answer_to_a_prefix_of_the_nonce",
            sign_time(signer("issuer"), nonce=TIME_NONCE[:16], now=NOW + 123),
            "nonce_mismatch",
        ),
        case("signature_bit_flipped", flip_last(answer), "bad_signature"),
        case(
            "time_changed_after_signing",
            envelope(split(answer)[0], body(when=NOW + 10 * DAY), split(answer)[2]),
            "bad_signature",
        ),
        case(
            "signed_by_stranger_under_issuer_kid",
            sign1("stranger", body(), TYP_TIME, named="issuer"),
            "bad_signature",
        ),
        case(
            "signed_by_unknown_key",
            sign_time(signer("stranger"), nonce=TIME_NONCE, now=NOW),
            "unknown_key",
        ),
        case(
            "signed_by_root_key",
            sign_time(signer("root"), nonce=TIME_NONCE, now=NOW),
            "unknown_key",
        ),
        case(
            "time_outside_the_key_window",
            sign_time(signer("issuer-retired"), nonce=TIME_NONCE, now=NOW),
            "unknown_key",
        ),
        case(
            "alg_es384_in_header",
            sign1("issuer", body(), TYP_TIME, alg=ES384),
            "algorithm_mismatch",
        ),
        case(
            "nonce_of_8_bytes", sign1("issuer", body(nonce=TIME_NONCE[:8]), TYP_TIME), "malformed"
        ),
        case(
            "nonce_of_65_bytes",
            sign1("issuer", body(nonce=TIME_NONCE * 3), TYP_TIME),
            "malformed",
        ),
        case("time_negative", sign1("issuer", body(when=-1), TYP_TIME), "malformed"),
        case("time_as_float", sign1("issuer", body(when=float(NOW)), TYP_TIME), "malformed"),
        case(
            "time_missing",
            sign1("issuer", cbor2.dumps({1: TIME_NONCE}), TYP_TIME),
            "malformed",
        ),
        case(
            "extra_field",
            sign1("issuer", cbor2.dumps({1: TIME_NONCE, 2: NOW, 3: 0}), TYP_TIME),
            "malformed",
        ),
        case("typ_is_key_token", sign1("issuer", body(), TYP_TOKEN), "malformed"),
        case("trailing_byte", answer + b"\x00", "malformed"),
        case("truncated", answer[:-1], "malformed"),
        too_large("over_512_bytes", answer, 512),
    ]
    return {
        "description": (
            "Signed time answers. Build the trust store from root_public_key and apply "
            "trust_update; read each input as the answer to nonce. expected is 'valid' "
            "(decoded.time is the signed time) or the reason code of the refusal. A case with "
            "pad_to is its input followed by zero bytes up to pad_to bytes."
        ),
        "context": {**trust_context(), "nonce": TIME_NONCE.hex()},
        "cases": cases,
    }
