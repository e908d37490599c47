"""verify(): each reason code, in its documented order, and what a grant carries."""

from __future__ import annotations

import cbor2
import pytest

from keycore import (
    Action,
    InvalidToken,
    Reason,
    RevocationLedger,
    Role,
    SoftwareSigner,
    TrustStore,
    WeeklySchedule,
    Window,
    cose,
    verify,
)
from keycore.cose import holder_id, point_bytes
from keycore.token import TYP_KEY_TOKEN
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World


def reason_of(world: World, token: bytes, **kwargs: object) -> Reason:
    args: dict[str, object] = {
        "vin": VIN,
        "action": Action.UNLOCK,
        "now": NOW + 60,
        "trust": world.trust,
        "revocations": world.revocations,
    }
    args.update(kwargs)
    with pytest.raises(InvalidToken) as caught:
        verify(token, **args)  # type: ignore[arg-type]
    assert str(caught.value) == "invalid key token"  # opaque to callers
    return caught.value.reason


def test_owner_token_grants_every_action(world: World) -> None:
    token = world.token()
    for action in Action:
        grant = verify(
            token,
            vin=VIN,
            action=action,
            now=NOW + 1,
            trust=world.trust,
            revocations=world.revocations,
        )
        assert grant.action is action
        assert grant.token.role is Role.OWNER
        assert grant.token.vin == VIN
        assert grant.token.kid == world.issuer.kid


def test_typical_token_is_at_most_256_bytes(world: World) -> None:
    schedule = WeeklySchedule(60, (Window(0b11111, 8 * 60, 18 * 60),))
    assert len(world.token()) <= 256
    assert len(world.token(Role.GUEST, schedule=schedule)) <= 256


def test_wrong_vehicle(world: World) -> None:
    assert reason_of(world, world.token(), vin=OTHER_VIN) is Reason.WRONG_VEHICLE


def test_not_yet_valid_and_expired_boundaries(world: World) -> None:
    token = world.token(not_before=NOW + 100, expires=NOW + 200)
    assert reason_of(world, token, now=NOW + 99) is Reason.NOT_YET_VALID
    verify(
        token,
        vin=VIN,
        action=Action.UNLOCK,
        now=NOW + 100,
        trust=world.trust,
        revocations=world.revocations,
    )
    verify(
        token,
        vin=VIN,
        action=Action.UNLOCK,
        now=NOW + 199,
        trust=world.trust,
        revocations=world.revocations,
    )
    assert reason_of(world, token, now=NOW + 200) is Reason.EXPIRED


def test_only_owner_manages_keys(world: World) -> None:
    for role in (Role.DRIVER, Role.GUEST, Role.VALET, Role.SERVICE):
        token = world.token(role)
        assert reason_of(world, token, action=Action.MANAGE_KEYS) is Reason.NOT_ENTITLED


def test_valet_cannot_open_trunk(world: World) -> None:
    assert reason_of(world, world.token(Role.VALET), action=Action.TRUNK) is Reason.NOT_ENTITLED


def test_narrowed_entitlements(world: World) -> None:
    token = world.token(Role.DRIVER, entitlements=frozenset({Action.UNLOCK, Action.LOCK}))
    assert reason_of(world, token, action=Action.START) is Reason.NOT_ENTITLED


def test_schedule(world: World) -> None:
    # NOW is Friday 08:00 UTC; the window is weekdays 09:00-17:00 at UTC+1 (08:00-16:00 UTC).
    schedule = WeeklySchedule(60, (Window(0b0011111, 9 * 60, 17 * 60),))
    token = world.token(Role.GUEST, schedule=schedule, not_before=NOW - DAY, expires=NOW + 2 * DAY)
    verify(
        token,
        vin=VIN,
        action=Action.UNLOCK,
        now=NOW,
        trust=world.trust,
        revocations=world.revocations,
    )
    assert reason_of(world, token, now=NOW - 1) is Reason.OUTSIDE_SCHEDULE
    assert reason_of(world, token, now=NOW + 8 * 3600) is Reason.OUTSIDE_SCHEDULE
    assert reason_of(world, token, now=NOW + DAY) is Reason.OUTSIDE_SCHEDULE  # Saturday


def test_unknown_issuer_key(world: World) -> None:
    stranger = SoftwareSigner.generate()
    assert reason_of(world, world.token(signer=stranger)) is Reason.UNKNOWN_KEY


def test_issuer_key_outside_validity(world: World) -> None:
    key = world.trust.lookup(world.issuer.kid)
    assert key is not None
    assert reason_of(world, world.token(), now=key.not_after + 1) is Reason.UNKNOWN_KEY


def test_revoked_by_token_id_and_by_holder(world: World) -> None:
    token = world.token(token_id=b"\x01" * 16)
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x01" * 16, NOW + DAY)
    state = world.revocations.apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert reason_of(world, token, revocations=state) is Reason.REVOKED

    # "every token of this holder issued before NOW + 10": older tokens die, newer ones live.
    ledger.revoke_holder(
        holder_id(point_bytes(world.phone.public_key)), before=NOW + 10, until=NOW + 31 * DAY
    )
    state = state.apply(ledger.document(world.issuer, now=NOW, since=1), trust=world.trust, now=NOW)
    assert reason_of(world, world.token(), revocations=state) is Reason.REVOKED
    newer = world.token(now=NOW + 10, expires=NOW + DAY)
    verify(newer, vin=VIN, action=Action.UNLOCK, now=NOW + 60, trust=world.trust, revocations=state)


def test_algorithm_is_pinned_by_the_trust_store(world: World) -> None:
    # Re-sign the same claims under a header claiming another algorithm (ES384 = -35).
    msg = cose.parse_sign1(world.token(), typ=TYP_KEY_TOKEN, max_size=1024, error=InvalidToken)
    protected = cbor2.dumps({1: -35, 4: world.issuer.kid, 16: TYP_KEY_TOKEN})
    signature = world.issuer.sign(cose._sig_structure(protected, msg.payload))
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, msg.payload, signature]))
    assert reason_of(world, forged) is Reason.ALGORITHM_MISMATCH


def test_bad_signature(world: World) -> None:
    token = bytearray(world.token())
    token[-1] ^= 1
    assert reason_of(world, bytes(token)) is Reason.BAD_SIGNATURE


def test_too_large_is_refused_before_parsing(world: World) -> None:
    assert reason_of(world, b"\xd2" + b"\x00" * 2000) is Reason.TOO_LARGE


def test_trust_store_is_required_for_the_root(world: World) -> None:
    other_root = TrustStore(SoftwareSigner.generate().public_key)
    assert reason_of(world, world.token(), trust=other_root) is Reason.UNKNOWN_KEY
