"""Revocation-list vectors: full and delta lists applied to a state, and every refusal."""

from __future__ import annotations

from typing import Any

import cbor2

from keycore import (
    RevokedHolder,
    RevokedToken,
    holder_id,
    sign_revocation_list,
)
from tests.vectors.common import (
    DAY,
    ES384,
    HOUR,
    NOW,
    OTHER_VIN,
    TYP_REV,
    TYP_TIME,
    VIN,
    Encoded,
    case,
    envelope,
    flip_last,
    raw_map,
    sign1,
    signer,
    split,
    tid,
    too_large,
    trust_context,
    xy,
)
from tests.vectors.token_claims import OWNER


def revocation_list(
    sequence: int,
    *,
    base: int = 0,
    tokens: tuple[tuple[bytes, int], ...] = (),
    holders: tuple[tuple[str, int, int], ...] = (),
    vin: str = VIN,
    key: str = "issuer",
) -> bytes:
    return sign_revocation_list(
        signer(key),
        vin=vin,
        sequence=sequence,
        now=NOW - HOUR,
        base=base,
        tokens=[RevokedToken(t, e) for t, e in tokens],
        holders=[RevokedHolder(holder_id(xy(h)), b, u) for h, b, u in holders],
    )


def revocation_items() -> list[tuple[int, Any]]:
    """The fields of a small full list: sequence 3, one token entry, no holder entries."""
    return [(1, VIN), (2, 3), (3, NOW - HOUR), (4, 0), (5, [[tid(31), NOW + DAY]]), (6, [])]


def revocation_payload(**changes: Any) -> bytes:
    """A list payload with fields changed: ``k4=3`` sets field 4, ``k6=None`` drops field 6."""
    body = dict(revocation_items())
    for label, value in changes.items():
        key = int(label.removeprefix("k"))
        if value is None:
            del body[key]
        else:
            body[key] = value
    return cbor2.dumps(body)


def revocation_vectors() -> dict[str, Any]:
    t1, t2, t3, t4 = tid(31), tid(32), tid(33), tid(34)
    lists = {
        # t2 has already expired at now: a car prunes it on arrival
        "full_3": revocation_list(
            3,
            tokens=((t1, NOW + DAY), (t2, NOW - HOUR)),
            holders=(("other-phone", NOW - DAY, NOW + 30 * DAY),),
        ),
        "full_5": revocation_list(5, tokens=((t1, NOW + DAY), (t3, NOW + 2 * DAY))),
        "delta_3_to_5": revocation_list(
            5,
            base=3,
            tokens=((t3, NOW + 2 * DAY),),
            holders=(("other-phone", NOW - HOUR, NOW + 10 * DAY), ("phone", NOW - HOUR, NOW + DAY)),
        ),
        "delta_2_to_5": revocation_list(5, base=2, tokens=((t1, NOW + 3 * DAY), (t4, NOW + DAY))),
        "delta_4_to_5": revocation_list(5, base=4, tokens=((t3, NOW + 2 * DAY),)),
        "full_1_empty": revocation_list(1),
    }
    holder, phone_holder = holder_id(xy("other-phone")).hex(), holder_id(xy("phone")).hex()

    def state(sequence: int, tokens: dict[bytes, int], holders: dict[str, list[int]]) -> Any:
        return {
            "sequence": sequence,
            "tokens": {t.hex(): e for t, e in tokens.items()},
            "holders": holders,
        }

    def listed(name: str, expected: str, *, prior: tuple[str, ...] = (), **extra: Any) -> Any:
        return case(name, lists[name.split(":")[0]], expected, prior=list(prior), **extra)

    def made(name: str, data: bytes, expected: str, *, prior: tuple[str, ...] = ()) -> Any:
        return case(name, data, expected, prior=list(prior))

    full_3 = lists["full_3"]
    cases = [
        case(
            "full_list_on_empty_state",
            full_3,
            "valid",
            prior=[],
            decoded=state(3, {t1: NOW + DAY}, {holder: [NOW - DAY, NOW + 30 * DAY]}),
        ),
        case(
            # merged, not swapped: entries leave a car's state only by expiry at its own time
            "full_list_merges_into_state",
            lists["full_5"],
            "valid",
            prior=["full_3"],
            decoded=state(
                5, {t1: NOW + DAY, t3: NOW + 2 * DAY}, {holder: [NOW - DAY, NOW + 30 * DAY]}
            ),
        ),
        case(
            "delta_on_its_base",
            lists["delta_3_to_5"],
            "valid",
            prior=["full_3"],
            decoded=state(
                5,
                {t1: NOW + DAY, t3: NOW + 2 * DAY},
                {
                    holder: [NOW - HOUR, NOW + 30 * DAY],
                    phone_holder: [NOW - HOUR, NOW + DAY],
                },
            ),
        ),
        case(
            "delta_from_behind_the_state",
            lists["delta_2_to_5"],
            "valid",
            prior=["full_3"],
            decoded=state(
                5,
                {t1: NOW + 3 * DAY, t4: NOW + DAY},
                {holder: [NOW - DAY, NOW + 30 * DAY]},
            ),
        ),
        case(
            "empty_full_list",
            lists["full_1_empty"],
            "valid",
            prior=[],
            decoded=state(1, {}, {}),
        ),
        made("same_sequence_again", full_3, "stale", prior=("full_3",)),
        made("older_full_list", full_3, "stale", prior=("full_5",)),
        made("delta_to_sequence_held", lists["delta_3_to_5"], "stale", prior=("full_5",)),
        made("delta_beyond_state", lists["delta_4_to_5"], "gap", prior=("full_3",)),
        made("delta_on_empty_state", lists["delta_3_to_5"], "gap"),
        made("list_of_another_vehicle", revocation_list(7, vin=OTHER_VIN), "wrong_vehicle"),
        made(
            "precedence_wrong_vehicle_before_stale",
            revocation_list(1, vin=OTHER_VIN),
            "wrong_vehicle",
            prior=("full_3",),
        ),
        made(
            "precedence_stale_before_gap",
            lists["delta_4_to_5"],
            "stale",
            prior=("full_5",),
        ),
        made("signature_bit_flipped", flip_last(full_3), "bad_signature"),
        made(
            "entries_changed_after_signing",
            envelope(split(full_3)[0], revocation_payload(), split(full_3)[2]),
            "bad_signature",
        ),
        made(
            "signed_by_stranger_under_issuer_kid",
            sign1("stranger", revocation_payload(), TYP_REV, named="issuer"),
            "bad_signature",
        ),
        made(
            "signed_by_unknown_key", sign1("stranger", revocation_payload(), TYP_REV), "unknown_key"
        ),
        made("signed_by_root_key", sign1("root", revocation_payload(), TYP_REV), "unknown_key"),
        made(
            "issuer_key_expired",
            sign1("issuer-retired", revocation_payload(), TYP_REV),
            "unknown_key",
        ),
        made(
            "alg_es384_in_header",
            sign1("issuer", revocation_payload(), TYP_REV, alg=ES384),
            "algorithm_mismatch",
        ),
        made("truncated", full_3[:-1], "malformed"),
        made("trailing_byte", full_3 + b"\x00", "malformed"),
        made("typ_is_signed_time", sign1("issuer", revocation_payload(), TYP_TIME), "malformed"),
        made("a_key_token", OWNER.issued(), "malformed"),
        made(
            "base_equals_sequence",
            sign1("issuer", revocation_payload(k4=3), TYP_REV),
            "malformed",
        ),
        made("sequence_zero", sign1("issuer", revocation_payload(k2=0), TYP_REV), "malformed"),
        made(
            "token_id_of_15_bytes",
            sign1("issuer", revocation_payload(k5=[[t1[:15], NOW + DAY]]), TYP_REV),
            "malformed",
        ),
        made(
            "holder_id_of_8_bytes",
            sign1("issuer", revocation_payload(k6=[[t1[:8], NOW, NOW + DAY]]), TYP_REV),
            "malformed",
        ),
        made(
            "holder_entry_of_2_items",
            sign1("issuer", revocation_payload(k6=[[t1, NOW]]), TYP_REV),
            "malformed",
        ),
        made(
            "holders_field_missing",
            sign1("issuer", revocation_payload(k6=None), TYP_REV),
            "malformed",
        ),
        made(
            "vin_lowercase",
            sign1("issuer", revocation_payload(k1=VIN.lower()), TYP_REV),
            "malformed",
        ),
        made(
            "duplicate_key",
            sign1(
                "issuer",
                raw_map([*revocation_items(), (2, 4)]),
                TYP_REV,
            ),
            "malformed",
        ),
        made(
            "indefinite_length_entries",
            sign1(
                "issuer",
                raw_map(
                    [
                        *revocation_items()[:4],
                        (5, Encoded(b"\x9f" + cbor2.dumps([t1, NOW + DAY]) + b"\xff")),
                        (6, []),
                    ]
                ),
                TYP_REV,
            ),
            "malformed",
        ),
        {**too_large("over_256_kib", full_3, 256 * 1024), "prior": []},
    ]
    return {
        "description": (
            "Revocation lists. Build the trust store from root_public_key and apply trust_update. "
            "For each case start from an empty revocation state for vin, apply the lists named in "
            "prior (from lists) in order, then apply input, all at now. expected is 'valid' "
            "(decoded is the resulting state: sequence, token ids with their expiry, holder ids "
            "with [before, until]) or the reason code of the refusal. A case with pad_to is its "
            "input followed by zero bytes up to pad_to bytes."
        ),
        "context": {
            **trust_context(),
            "vin": VIN,
            "now": NOW,
            "lists": {name: data.hex() for name, data in lists.items()},
        },
        "cases": cases,
    }
