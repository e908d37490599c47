"""Key-token vectors: valid tokens, and at least one refusal for every reason code."""

from __future__ import annotations

from typing import Any

import cbor2

from keycore import Action, Role, WeeklySchedule, Window
from tests.vectors.common import (
    DAY,
    EDDSA,
    ENTITLEMENTS,
    ES384,
    EXP,
    HOUR,
    IAT,
    NOW,
    OTHER_VIN,
    ROLE,
    TYP_TOKEN,
    VIN,
    Encoded,
    case,
    envelope,
    flip_last,
    raw_map,
    sign1,
    split,
    tid,
    too_large,
    trust_context,
)
from tests.vectors.malformed_tokens import malformed_token_cases
from tests.vectors.token_claims import (
    GUEST,
    OWNER,
    REVOKED_TOKEN_ID,
    TOKEN_CONTEXT_REVOCATIONS,
    Claims,
    token_with,
)


def token_cases() -> list[dict[str, Any]]:
    owner = OWNER.issued()
    guest = GUEST.issued()
    protected, payload, _ = split(owner)
    valid = "valid"

    night = Claims(
        tid(3),
        role=Role.GUEST,
        expires=NOW + DAY,
        # 22:00-24:00 Thursday and 00:00-06:00 Friday at UTC-5: one night across midnight
        schedule=WeeklySchedule(
            -300, (Window(0b0001000, 22 * 60, 1440), Window(0b0010000, 0, 360))
        ),
    )
    driver = Claims(tid(4), role=Role.DRIVER, entitlements=frozenset({Action.LOCK}))
    from_now = Claims(tid(5), not_before=NOW, issued_at=NOW, expires=NOW + DAY)
    last_second = Claims(tid(6), not_before=NOW - DAY, issued_at=NOW - DAY, expires=NOW + 1)
    other_phone = Claims(tid(7), holder="other-phone")  # issued after its holder's revocation
    next_issuer = Claims(tid(8))
    # The car's clock lags a month, before the issuer key's window; the key is judged at
    # max(now, iat), and iat is inside its window.
    lagging = Claims(
        tid(9), not_before=NOW - 31 * DAY - HOUR, issued_at=NOW - 29 * DAY, expires=NOW - 2 * DAY
    )
    # issued inside the retired key's window, verified after the window ended
    retired_key_token = Claims(
        tid(21), not_before=NOW - 2 * DAY, issued_at=NOW - 2 * DAY, expires=NOW + DAY
    )
    # the guest token's claims with the role raised to owner, under the guest token's signature
    promoted = Claims(
        GUEST.token_id,
        role=Role.OWNER,
        entitlements=GUEST.entitlements,
        expires=GUEST.expires,
        schedule=GUEST.schedule,
    )
    reordered = dict(reversed(list(OWNER.map().items())))
    # exp with an 8-byte integer head (0x1b) where 4 bytes would do
    long_exp = Encoded(b"\x1b" + OWNER.expires.to_bytes(8, "big"))
    long_ints = raw_map([(k, long_exp if k == EXP else v) for k, v in OWNER.map().items()])
    # exp as a bignum (tag 2 over its 4 bytes): the same number, another encoding
    bignum_exp = Encoded(b"\xc2\x44" + OWNER.expires.to_bytes(4, "big"))
    bignum_ints = raw_map([(k, bignum_exp if k == EXP else v) for k, v in OWNER.map().items()])

    cases = [
        case("owner", owner, valid, decoded=OWNER.decoded()),
        case(
            "owner_manage_keys",
            owner,
            valid,
            action=int(Action.MANAGE_KEYS),
            decoded=OWNER.decoded(),
        ),
        case("guest_schedule_first_minute", guest, valid, decoded=GUEST.decoded()),
        case(
            "guest_window_across_midnight_utc_minus_5",
            night.issued(),
            valid,
            decoded=night.decoded(),
        ),
        case(
            "driver_narrowed_to_lock",
            driver.issued(),
            valid,
            action=int(Action.LOCK),
            decoded=driver.decoded(),
        ),
        case("not_before_is_now", from_now.issued(), valid, decoded=from_now.decoded()),
        case(
            "last_second_before_expiry", last_second.issued(), valid, decoded=last_second.decoded()
        ),
        case(
            "holder_revoked_before_issue",
            other_phone.issued(),
            valid,
            decoded=other_phone.decoded(),
        ),
        case(
            "signed_by_next_issuer_key",
            next_issuer.issued("issuer-next"),
            valid,
            decoded=next_issuer.decoded("issuer-next"),
        ),
        case(
            "clock_lagging_behind_issuer_key",
            lagging.issued(),
            valid,
            now=NOW - 31 * DAY,
            decoded=lagging.decoded(),
        ),
        case(
            "claims_in_another_order",
            sign1("issuer", cbor2.dumps(reordered), TYP_TOKEN),
            valid,
            decoded=OWNER.decoded(),
        ),
        # One number, one encoding: over-long heads and bignums are refused even when signed.
        case("integer_with_over_long_head", sign1("issuer", long_ints, TYP_TOKEN), "malformed"),
        case("integer_as_bignum", sign1("issuer", bignum_ints, TYP_TOKEN), "malformed"),
        *malformed_token_cases(),
        # size
        too_large("over_1024_bytes", owner, 1024),
        # issuer key
        case("signed_by_unknown_key", sign1("stranger", payload, TYP_TOKEN), "unknown_key"),
        case("signed_by_root_key", sign1("root", payload, TYP_TOKEN), "unknown_key"),
        case(
            "issuer_key_ended_before_now",
            retired_key_token.issued("issuer-retired"),
            "unknown_key",
        ),
        case(
            "issued_before_issuer_key_validity",
            token_with({IAT: NOW - 31 * DAY}),
            "unknown_key",
        ),
        case(
            "alg_es384_in_header",
            sign1("issuer", payload, TYP_TOKEN, alg=ES384),
            "algorithm_mismatch",
        ),
        case(
            "alg_eddsa_in_header",
            sign1("issuer", payload, TYP_TOKEN, alg=EDDSA),
            "algorithm_mismatch",
        ),
        # signature
        case("signature_bit_flipped", flip_last(owner), "bad_signature"),
        case(
            "claims_changed_after_signing",
            envelope(split(guest)[0], promoted.payload(), split(guest)[2]),
            "bad_signature",
        ),
        case(
            "signed_by_stranger_under_issuer_kid",
            sign1("stranger", payload, TYP_TOKEN, named="issuer"),
            "bad_signature",
        ),
        case("signature_all_zero", envelope(protected, payload, bytes(64)), "bad_signature"),
        case(
            "signed_with_context_signature",
            sign1("issuer", payload, TYP_TOKEN, context="Signature"),
            "bad_signature",
        ),
        # authorisation
        case("other_vehicle", Claims(tid(10), vin=OTHER_VIN).issued(), "wrong_vehicle"),
        case(
            "not_before_one_second_ahead",
            Claims(tid(11), not_before=NOW + 1, issued_at=NOW - HOUR, expires=NOW + DAY).issued(),
            "not_yet_valid",
        ),
        case(
            "expires_now",
            Claims(tid(12), not_before=NOW - DAY, issued_at=NOW - DAY, expires=NOW).issued(),
            "expired",
        ),
        case(
            "expired_yesterday",
            Claims(
                tid(13), not_before=NOW - 8 * DAY, issued_at=NOW - 8 * DAY, expires=NOW - DAY
            ).issued(),
            "expired",
        ),
        case(
            "schedule_window_just_ended",
            Claims(
                tid(14),
                role=Role.GUEST,
                expires=NOW + DAY,
                schedule=WeeklySchedule(60, (Window(0b0011111, 8 * 60, 9 * 60),)),
            ).issued(),
            "outside_schedule",
        ),
        case(
            "schedule_weekends_only",
            Claims(
                tid(15),
                role=Role.GUEST,
                expires=NOW + DAY,
                schedule=WeeklySchedule(0, (Window(0b1100000, 0, 1440),)),
            ).issued(),
            "outside_schedule",
        ),
        case(
            "mask_without_unlock",
            Claims(tid(16), entitlements=frozenset({Action.LOCK})).issued(),
            "not_entitled",
        ),
        case("guest_manage_keys", guest, "not_entitled", action=int(Action.MANAGE_KEYS)),
        case(
            "valet_mask_with_trunk",
            token_with({ROLE: int(Role.VALET), ENTITLEMENTS: 0b1111}, base=Claims(tid(17))),
            "not_entitled",
            action=int(Action.TRUNK),
        ),
        case(
            # issue() refuses this; a verifier must too (short lifetimes bound revocation, G4)
            "guest_window_longer_than_role_allows",
            token_with(
                {ROLE: int(Role.GUEST), ENTITLEMENTS: 0b11, EXP: NOW - HOUR + 7 * DAY + 1},
                base=Claims(tid(22)),
            ),
            "not_entitled",
        ),
        case(
            "iat_at_or_after_exp",
            token_with({IAT: NOW - HOUR + 7 * DAY}, base=Claims(tid(23))),
            "malformed",
        ),
        case("revoked_token_id", Claims(REVOKED_TOKEN_ID).issued(), "revoked"),
        case(
            "revoked_holder",
            Claims(
                tid(18),
                holder="other-phone",
                not_before=NOW - 2 * DAY,
                issued_at=NOW - 2 * DAY,
                expires=NOW + 5 * DAY,
            ).issued(),
            "revoked",
        ),
        # precedence: the first failing check names the reason
        case(
            "precedence_unknown_key_before_bad_claims",
            token_with({ROLE: 9}, key="stranger"),
            "unknown_key",
        ),
        case(
            "precedence_bad_claims_before_issuer_key_window",
            token_with({ROLE: 9}, key="issuer-retired"),
            "malformed",
        ),
        case(
            "precedence_bad_signature_before_bad_claims",
            flip_last(token_with({ROLE: 9})),
            "bad_signature",
        ),
        case(
            "precedence_wrong_vehicle_before_expired",
            Claims(
                tid(19),
                vin=OTHER_VIN,
                not_before=NOW - 2 * DAY,
                issued_at=NOW - 2 * DAY,
                expires=NOW - DAY,
            ).issued(),
            "wrong_vehicle",
        ),
        case(
            "precedence_revoked_before_not_yet_valid",
            Claims(REVOKED_TOKEN_ID, not_before=NOW + HOUR, expires=NOW + 2 * DAY).issued(),
            "revoked",
        ),
        case(
            "precedence_expired_before_not_entitled",
            Claims(
                tid(20),
                entitlements=frozenset({Action.LOCK}),
                not_before=NOW - 2 * DAY,
                issued_at=NOW - 2 * DAY,
                expires=NOW - DAY,
            ).issued(),
            "expired",
        ),
    ]
    return cases


def token_vectors() -> dict[str, Any]:
    return {
        "description": (
            "Key tokens. Build the trust store from root_public_key and apply trust_update; "
            "apply revocation_list (if any) to an empty revocation state for vin at now; then "
            "verify each input for vin at now (or the case's now) for action (or the case's "
            "action). expected is 'valid' (compare decoded) or the reason code of the refusal. "
            "A case with pad_to is its input followed by zero bytes up to pad_to bytes."
        ),
        "context": {
            **trust_context(),
            "vin": VIN,
            "now": NOW,
            "action": int(Action.UNLOCK),
            "revocation_list": TOKEN_CONTEXT_REVOCATIONS.hex(),
        },
        "cases": token_cases(),
    }
