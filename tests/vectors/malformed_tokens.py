"""Malformed key tokens: a broken envelope, or broken claims under a valid signature."""

from __future__ import annotations

from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import ES256
from tests.vectors.common import (
    AUD,
    CNF,
    CTI,
    ENTITLEMENTS,
    EXP,
    IAT,
    NBF,
    ROLE,
    SCHEDULE,
    TYP_REV,
    TYP_TOKEN,
    VIN,
    case,
    envelope,
    kid,
    raw_map,
    sign1,
    signer,
    split,
    tid,
    to_be_signed,
)
from tests.vectors.token_claims import OWNER, token_with


def malformed_token_cases() -> list[dict[str, Any]]:
    owner = OWNER.issued()
    protected, payload, signature = split(owner)

    def claims(label: int, value: Any) -> bytes:
        return token_with({label: value})

    cose_key = OWNER.map()[CNF][1]
    bad_point = {**cose_key, -3: bytes(32)}
    schedule = [60, [[0b0011111, 9 * 60, 17 * 60]]]
    deep: Any = 0
    for _ in range(17):
        deep = [deep]

    return [
        # malformed envelope
        case("empty", b"", "malformed"),
        case("truncated_by_one_byte", owner[:-1], "malformed"),
        case("truncated_to_half", owner[: len(owner) // 2], "malformed"),
        case("trailing_byte", owner + b"\x00", "malformed"),
        case("padded_to_exactly_1024_bytes", owner + bytes(1024 - len(owner)), "malformed"),
        case("tag_17_cose_mac0", b"\xd1" + owner[1:], "malformed"),
        case("untagged", owner[1:], "malformed"),
        case("tag_18_in_two_byte_head", b"\xd8\x12" + owner[1:], "malformed"),
        case(
            "indefinite_length_array",
            b"\xd2\x9f" + owner[2:] + b"\xff",
            "malformed",
        ),
        case(
            "indefinite_length_payload",
            b"\xd2\x84"
            + cbor2.dumps(protected)
            + b"\xa0"
            + b"\x5f"
            + cbor2.dumps(payload[:10])
            + cbor2.dumps(payload[10:])
            + b"\xff"
            + cbor2.dumps(signature),
            "malformed",
        ),
        case(
            "unprotected_header_not_empty",
            envelope(protected, payload, signature, unprotected=cbor2.dumps({4: kid("issuer")})),
            "malformed",
        ),
        case(
            "protected_length_not_preferred",
            b"\xd2\x84\x58" + bytes([len(protected)]) + protected + owner[2 + 1 + len(protected) :],
            "malformed",
        ),
        case(
            "protected_duplicate_label",
            sign1(
                "issuer",
                payload,
                TYP_TOKEN,
                protected=raw_map([(1, ES256), (4, kid("issuer")), (16, TYP_TOKEN), (1, ES256)]),
            ),
            "malformed",
        ),
        case(
            "protected_without_typ",
            sign1(
                "issuer", payload, TYP_TOKEN, protected=cbor2.dumps({1: ES256, 4: kid("issuer")})
            ),
            "malformed",
        ),
        case(
            "protected_extra_label",
            sign1(
                "issuer",
                payload,
                TYP_TOKEN,
                protected=cbor2.dumps({1: ES256, 3: 61, 4: kid("issuer"), 16: TYP_TOKEN}),
            ),
            "malformed",
        ),
        case("typ_is_revocation_list", sign1("issuer", payload, TYP_REV), "malformed"),
        case("typ_61_as_text", sign1("issuer", payload, "61"), "malformed"),
        case(
            "kid_of_7_bytes",
            sign1(
                "issuer",
                payload,
                TYP_TOKEN,
                protected=cbor2.dumps({1: ES256, 4: kid("issuer")[:7], 16: TYP_TOKEN}),
            ),
            "malformed",
        ),
        case("signature_of_63_bytes", envelope(protected, payload, signature[:63]), "malformed"),
        case(
            "signature_der_encoded",
            envelope(
                protected,
                payload,
                signer("issuer").private_key.sign(
                    to_be_signed(protected, payload),
                    ec.ECDSA(hashes.SHA256(), deterministic_signing=True),
                ),
            ),
            "malformed",
        ),
        # malformed claims, validly signed
        case(
            "claims_duplicate_key",
            sign1("issuer", raw_map([*OWNER.map().items(), (ROLE, 2)]), TYP_TOKEN),
            "malformed",
        ),
        case(
            "claims_indefinite_length_map",
            sign1("issuer", raw_map(list(OWNER.map().items()), indefinite=True), TYP_TOKEN),
            "malformed",
        ),
        case("claims_trailing_byte", sign1("issuer", payload + b"\x00", TYP_TOKEN), "malformed"),
        case("claims_not_a_map", sign1("issuer", cbor2.dumps([1, 2]), TYP_TOKEN), "malformed"),
        case("claim_unknown_iss", claims(1, "issuer.example"), "malformed"),
        case("claim_role_missing", claims(ROLE, None), "malformed"),
        case("claim_iat_missing", claims(IAT, None), "malformed"),
        case("aud_lowercase", claims(AUD, VIN.lower()), "malformed"),
        case("aud_with_letter_o", claims(AUD, VIN[:-1] + "O"), "malformed"),
        case("aud_16_characters", claims(AUD, VIN[:-1]), "malformed"),
        case("cti_of_15_bytes", claims(CTI, tid(1)[:15]), "malformed"),
        case("cti_as_text", claims(CTI, "0123456789abcdef"), "malformed"),
        case("entitlements_zero", claims(ENTITLEMENTS, 0), "malformed"),
        case("entitlements_unknown_bit", claims(ENTITLEMENTS, 64), "malformed"),
        case("role_5", claims(ROLE, 5), "malformed"),
        case("role_negative", claims(ROLE, -1), "malformed"),
        case("exp_equals_nbf", claims(EXP, OWNER.not_before), "malformed"),
        case("exp_as_float", claims(EXP, float(OWNER.expires)), "malformed"),
        case("nbf_negative", claims(NBF, -1), "malformed"),
        case("exp_beyond_2_pow_40", claims(EXP, 2**40 + 1), "malformed"),
        case("cnf_key_with_kid", claims(CNF, {1: {**cose_key, 2: kid("phone")}}), "malformed"),
        case("cnf_key_kty_okp", claims(CNF, {1: {**cose_key, 1: 1}}), "malformed"),
        case(
            "cnf_key_x_of_31_bytes",
            claims(CNF, {1: {**cose_key, -2: cose_key[-2][1:]}}),
            "malformed",
        ),
        case("holder_not_on_p256", claims(CNF, {1: bad_point}), "malformed"),
        case("schedule_end_before_start", claims(SCHEDULE, [60, [[31, 600, 540]]]), "malformed"),
        case("schedule_end_after_midnight", claims(SCHEDULE, [60, [[31, 0, 1441]]]), "malformed"),
        case("schedule_no_days", claims(SCHEDULE, [60, [[0, 540, 600]]]), "malformed"),
        case("schedule_offset_15_hours", claims(SCHEDULE, [900, schedule[1]]), "malformed"),
        case("schedule_no_windows", claims(SCHEDULE, [60, []]), "malformed"),
        case("schedule_17_windows", claims(SCHEDULE, [60, schedule[1] * 17]), "malformed"),
        case("nesting_deeper_than_16", claims(SCHEDULE, deep), "malformed"),
    ]
