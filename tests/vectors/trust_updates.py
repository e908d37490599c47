"""Trust-store update vectors: root-signed key sets, sequence rules, and every refusal."""

from __future__ import annotations

from typing import Any

import cbor2

from keycore import (
    ES256,
)
from tests.vectors.common import (
    DAY,
    ES384,
    ISSUER_WINDOWS,
    NOW,
    TYP_REV,
    TYP_TRUST,
    case,
    envelope,
    flip_last,
    kid,
    sign1,
    split,
    too_large,
    trust_update,
    xy,
)


def key_entry(
    name: str,
    *,
    key_id: bytes | None = None,
    alg: int = ES256,
    point: bytes | None = None,
    window: tuple[int, int] | None = None,
    with_kid: bool = True,
) -> dict[int, Any]:
    point = xy(name) if point is None else point
    cose_key: dict[int, Any] = {1: 2}
    if with_kid:
        cose_key[2] = kid(name) if key_id is None else key_id
        cose_key[3] = alg
    cose_key.update({-1: 1, -2: point[:32], -3: point[32:]})
    nbf, exp = ISSUER_WINDOWS.get(name, (NOW, NOW + DAY)) if window is None else window
    return {1: cose_key, 2: nbf, 3: exp}


def trust_payload(sequence: int, entries: list[dict[int, Any]]) -> bytes:
    return cbor2.dumps({1: sequence, 2: NOW - DAY, 3: entries})


def trust_vectors() -> dict[str, Any]:
    updates = {
        "seq_1": trust_update(1, ("issuer", "issuer-retired")),
        "seq_2": trust_update(2, ("issuer", "issuer-next")),
    }
    good = [key_entry("issuer")]

    def keys_of(*names: str) -> list[dict[str, Any]]:
        return [
            {
                "kid": kid(n).hex(),
                "public_key": xy(n).hex(),
                "not_before": ISSUER_WINDOWS[n][0],
                "not_after": ISSUER_WINDOWS[n][1],
            }
            for n in names
        ]

    def made(name: str, data: bytes, expected: str, *, prior: tuple[str, ...] = ()) -> Any:
        return case(name, data, expected, prior=list(prior))

    def root_signed(entries: list[dict[int, Any]], sequence: int = 3) -> bytes:
        return sign1("root", trust_payload(sequence, entries), TYP_TRUST)

    retired = ISSUER_WINDOWS["issuer-retired"]
    cases = [
        case(
            "first_update",
            updates["seq_1"],
            "valid",
            prior=[],
            decoded={"sequence": 1, "keys": keys_of("issuer", "issuer-retired")},
        ),
        case(
            "rotation_replaces_the_set",
            updates["seq_2"],
            "valid",
            prior=["seq_1"],
            decoded={"sequence": 2, "keys": keys_of("issuer", "issuer-next")},
        ),
        case(
            "sequence_may_jump",
            trust_update(9, ("issuer-next",)),
            "valid",
            prior=["seq_1", "seq_2"],
            decoded={"sequence": 9, "keys": keys_of("issuer-next")},
        ),
        case(
            "empty_key_set",
            trust_update(3, ()),
            "valid",
            prior=["seq_2"],
            decoded={"sequence": 3, "keys": []},
        ),
        made("same_sequence_again", updates["seq_2"], "stale", prior=("seq_1", "seq_2")),
        made("older_sequence", updates["seq_1"], "stale", prior=("seq_2",)),
        made(
            "precedence_malformed_before_stale",
            root_signed([key_entry("issuer", key_id=kid("issuer-next"))], sequence=1),
            "malformed",
            prior=("seq_2",),
        ),
        made("signature_bit_flipped", flip_last(updates["seq_2"]), "bad_signature"),
        made(
            "keys_changed_after_signing",
            envelope(
                split(updates["seq_1"])[0],
                trust_payload(1, [key_entry("stranger")]),
                split(updates["seq_1"])[2],
            ),
            "bad_signature",
        ),
        made(
            "signed_by_stranger_under_root_kid",
            sign1("stranger", trust_payload(3, good), TYP_TRUST, named="root"),
            "bad_signature",
        ),
        made(
            "signed_by_issuer_key",
            sign1("issuer", trust_payload(3, good), TYP_TRUST),
            "unknown_key",
        ),
        made(
            "signed_by_unknown_key",
            sign1("stranger", trust_payload(3, good), TYP_TRUST),
            "unknown_key",
        ),
        made(
            "alg_es384_in_header",
            sign1("root", trust_payload(3, good), TYP_TRUST, alg=ES384),
            "algorithm_mismatch",
        ),
        made(
            "issuer_key_for_es384",
            root_signed([key_entry("issuer", alg=ES384)]),
            "algorithm_mismatch",
        ),
        made(
            "kid_not_matching_key",
            root_signed([key_entry("issuer", key_id=kid("issuer-next"))]),
            "malformed",
        ),
        made(
            "duplicate_kid",
            root_signed([key_entry("issuer"), key_entry("issuer", window=retired)]),
            "malformed",
        ),
        made(
            "key_not_on_p256",
            root_signed([key_entry("issuer", point=xy("issuer")[:32] + bytes(32))]),
            "malformed",
        ),
        made(
            "key_entry_without_kid",
            root_signed([key_entry("issuer", with_kid=False)]),
            "malformed",
        ),
        made(
            "not_after_before_not_before",
            root_signed([key_entry("issuer", window=(NOW, NOW - 1))]),
            "malformed",
        ),
        made("sequence_zero", root_signed(good, sequence=0), "malformed"),
        made(
            "keys_field_missing",
            sign1("root", cbor2.dumps({1: 3, 2: NOW}), TYP_TRUST),
            "malformed",
        ),
        made(
            "typ_is_revocation_list",
            sign1("root", trust_payload(3, good), TYP_REV),
            "malformed",
        ),
        made("truncated", updates["seq_2"][:-1], "malformed"),
        made("trailing_byte", updates["seq_2"] + b"\x00", "malformed"),
        {**too_large("over_16_kib", updates["seq_2"], 16 * 1024), "prior": []},
    ]
    return {
        "description": (
            "Trust-store updates. For each case start from a trust store holding only "
            "root_public_key, apply the updates named in prior (from updates) in order, then "
            "apply input. expected is 'valid' (decoded is the new store: sequence and the trusted "
            "issuer keys in document order) or the reason code of the refusal. A case with pad_to "
            "is its input followed by zero bytes up to pad_to bytes."
        ),
        "context": {
            "root_public_key": xy("root").hex(),
            "root_kid": kid("root").hex(),
            "updates": {name: data.hex() for name, data in updates.items()},
        },
        "cases": cases,
    }
