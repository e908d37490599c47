"""Revocation lists: full and delta, sequence rules, holder entries, pruning, size bounds."""

from __future__ import annotations

import cbor2
import pytest

from keycore import (
    Action,
    InvalidRevocationList,
    InvalidToken,
    RevocationLedger,
    RevocationState,
    RevokedToken,
    Role,
    SoftwareSigner,
    cose,
    holder_id,
    read_revocation_list,
    sign_revocation_list,
    verify,
)
from keycore.cose import point_bytes
from keycore.revocation import MAX_ENTRIES, MAX_REVOCATION_BYTES, TYP_REVOCATION_LIST
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def hid(n: int) -> bytes:
    return (0xFF00 + n).to_bytes(16, "big")


def refusal(state: RevocationState, data: object, world: World, *, now: float = NOW) -> str:
    with pytest.raises(InvalidRevocationList) as caught:
        state.apply(data, trust=world.trust, now=now)  # type: ignore[arg-type]
    assert str(caught.value) == "invalid revocation list"
    return caught.value.reason.value


def token_reason(world: World, token: bytes, state: RevocationState) -> str | None:
    try:
        verify(
            token,
            vin=VIN,
            action=Action.UNLOCK,
            now=NOW + 60,
            trust=world.trust,
            revocations=state,
        )
    except InvalidToken as error:
        return error.reason.value
    return None


# ---------------------------------------------------------------------------------------------
# Full lists and deltas


def test_full_list_then_delta(world: World) -> None:
    ledger = RevocationLedger(VIN)
    assert ledger.revoke_token(tid(1), NOW + DAY) == 1
    assert ledger.revoke_token(tid(2), NOW + DAY) == 2
    full = ledger.document(world.issuer, now=NOW)
    state = RevocationState(VIN).apply(full, trust=world.trust, now=NOW)
    assert state.sequence == 2
    assert set(state.tokens) == {tid(1), tid(2)}

    assert ledger.revoke_token(tid(3), NOW + DAY) == 3
    delta = ledger.document(world.issuer, now=NOW, since=2)
    doc = read_revocation_list(delta, trust=world.trust, now=NOW)
    assert doc.is_delta
    assert (doc.base, doc.sequence) == (2, 3)
    assert [t.token_id for t in doc.tokens] == [tid(3)]  # a delta carries only additions
    state = state.apply(delta, trust=world.trust, now=NOW)
    assert state.sequence == 3
    assert set(state.tokens) == {tid(1), tid(2), tid(3)}
    assert len(state) == 3


def test_full_list_is_merged_and_entries_leave_only_by_expiry(world: World) -> None:
    # The issuer prunes its ledger a day after entries end; a car whose clock lags behind must
    # keep what it still needs, so a full list adds to the state rather than replacing it.
    state = RevocationState(VIN).apply(
        sign_revocation_list(
            world.issuer, vin=VIN, sequence=1, now=NOW, tokens=[RevokedToken(tid(1), NOW + DAY)]
        ),
        trust=world.trust,
        now=NOW,
    )
    full = sign_revocation_list(
        world.issuer, vin=VIN, sequence=2, now=NOW, tokens=[RevokedToken(tid(2), NOW + DAY)]
    )
    assert set(state.apply(full, trust=world.trust, now=NOW).tokens) == {tid(1), tid(2)}
    assert set(state.apply(full, trust=world.trust, now=NOW + DAY + 1).tokens) == set()


def test_overlapping_delta_from_behind_is_safe(world: World) -> None:
    ledger = RevocationLedger(VIN)
    for n in range(1, 5):
        ledger.revoke_token(tid(n), NOW + n * DAY)
    at_3 = RevocationState(VIN).apply(
        RevocationLedger(VIN, 3, ledger.entries[:3]).document(world.issuer, now=NOW),
        trust=world.trust,
        now=NOW,
    )
    # The car holds 3; a delta from 1 repeats entries 2 and 3 and adds 4.
    state = at_3.apply(ledger.document(world.issuer, now=NOW, since=1), trust=world.trust, now=NOW)
    assert state.sequence == 4
    assert dict(state.tokens) == {tid(n): NOW + n * DAY for n in range(1, 5)}


def test_repeated_entries_keep_the_longest_life(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW + 5 * DAY)
    ledger.revoke_token(tid(1), NOW + 2 * DAY)
    ledger.revoke_holder(hid(1), before=NOW, until=NOW + 9 * DAY)
    ledger.revoke_holder(hid(1), before=NOW - DAY, until=NOW + 20 * DAY)
    state = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert dict(state.tokens) == {tid(1): NOW + 5 * DAY}
    assert dict(state.holders) == {hid(1): (NOW, NOW + 20 * DAY)}


def test_apply_does_not_change_the_old_state(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW + DAY)
    empty = RevocationState(VIN)
    state = empty.apply(ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW)
    assert (empty.sequence, len(empty)) == (0, 0)
    assert state is not empty
    with pytest.raises(TypeError):
        state.tokens[tid(2)] = NOW  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Sequence rules and vehicle binding


def test_stale(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW + DAY)
    first = ledger.document(world.issuer, now=NOW)
    ledger.revoke_token(tid(2), NOW + DAY)
    second = ledger.document(world.issuer, now=NOW)
    state = RevocationState(VIN).apply(second, trust=world.trust, now=NOW)
    assert refusal(state, second, world) == "stale"  # equal
    assert refusal(state, first, world) == "stale"  # older: cannot undo a newer revocation
    assert refusal(state, ledger.document(world.issuer, now=NOW, since=1), world) == "stale"
    assert tid(2) in state.tokens


def test_gap(world: World) -> None:
    ledger = RevocationLedger(VIN)
    for n in range(1, 4):
        ledger.revoke_token(tid(n), NOW + DAY)
    delta_from_2 = ledger.document(world.issuer, now=NOW, since=2)
    # A fresh car has nothing to add a delta to.
    assert refusal(RevocationState(VIN), delta_from_2, world) == "gap"
    at_1 = RevocationState(VIN).apply(
        RevocationLedger(VIN, 1, ledger.entries[:1]).document(world.issuer, now=NOW),
        trust=world.trust,
        now=NOW,
    )
    assert refusal(at_1, delta_from_2, world) == "gap"
    # The base at exactly what the car holds applies.
    at_1.apply(ledger.document(world.issuer, now=NOW, since=1), trust=world.trust, now=NOW)


def test_wrong_vehicle(world: World) -> None:
    ledger = RevocationLedger(OTHER_VIN)
    ledger.revoke_token(tid(1), NOW + DAY)
    assert refusal(RevocationState(VIN), ledger.document(world.issuer, now=NOW), world) == (
        "wrong_vehicle"
    )


def test_signer_must_be_a_trusted_issuer_key(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW + DAY)
    for signer in (SoftwareSigner.generate(), world.root):  # the root only signs trust updates
        assert refusal(RevocationState(VIN), ledger.document(signer, now=NOW), world) == (
            "unknown_key"
        )
    key = world.trust.lookup(world.issuer.kid)
    assert key is not None
    doc = ledger.document(world.issuer, now=NOW)
    assert refusal(RevocationState(VIN), doc, world, now=key.not_after + 1) == "unknown_key"
    tampered = bytearray(doc)
    tampered[-1] ^= 1
    assert refusal(RevocationState(VIN), bytes(tampered), world) == "bad_signature"


def test_body_is_checked(world: World) -> None:
    def signed(body: dict[int, object]) -> bytes:
        return cose.sign1(cbor2.dumps(body), typ=TYP_REVOCATION_LIST, signer=world.issuer)

    good = {1: VIN, 2: 2, 3: NOW, 4: 0, 5: [[tid(1), NOW + DAY]], 6: [[hid(1), NOW, NOW + DAY]]}
    assert RevocationState(VIN).apply(signed(good), trust=world.trust, now=NOW).sequence == 2
    bad = [
        {**good, 1: "not a vin"},
        {**good, 2: 0},
        {**good, 4: 2},  # base must be below sequence
        {**good, 5: [[tid(1)[:15], NOW]]},
        {**good, 5: [[tid(1), -1]]},
        {**good, 6: [[hid(1), NOW]]},
        {k: v for k, v in good.items() if k != 6},
        {**good, 7: 0},
    ]
    for body in bad:
        assert refusal(RevocationState(VIN), signed(body), world) == "malformed"


# ---------------------------------------------------------------------------------------------
# Holder entries and pruning


def test_holder_entry_revokes_tokens_issued_before(world: World) -> None:
    holder = holder_id(point_bytes(world.phone.public_key))
    older = world.token(now=NOW - 10, expires=NOW + DAY)
    at_cutoff = world.token(now=NOW, expires=NOW + DAY)
    other_phone = world.token(holder=SoftwareSigner.generate().public_key, now=NOW - 10)
    ledger = RevocationLedger(VIN)
    ledger.revoke_holder(holder, before=NOW, until=NOW + 30 * DAY)
    state = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert token_reason(world, older, state) == "revoked"
    assert token_reason(world, at_cutoff, state) is None  # issued at T, not before T
    assert token_reason(world, other_phone, state) is None
    assert token_reason(world, world.token(Role.GUEST, now=NOW - 1), state) == "revoked"


def test_token_entry_revokes_only_that_token(world: World) -> None:
    revoked = world.token(token_id=tid(7))
    sibling = world.token(token_id=tid(8))
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(7), NOW + DAY)
    state = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert token_reason(world, revoked, state) == "revoked"
    assert token_reason(world, sibling, state) is None


def test_entries_are_pruned_at_expiry(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW + 10)
    ledger.revoke_holder(hid(1), before=NOW, until=NOW + 20)
    ledger.revoke_token(tid(2), NOW + DAY)
    doc = ledger.document(world.issuer, now=NOW)
    state = RevocationState(VIN).apply(doc, trust=world.trust, now=NOW)
    assert len(state) == 3
    # An entry stays while a token it matches could still be alive (expiry inclusive).
    assert set(state.pruned(NOW + 10).tokens) == {tid(1), tid(2)}
    assert set(state.pruned(NOW + 11).tokens) == {tid(2)}
    assert set(state.pruned(NOW + 20).holders) == {hid(1)}
    assert not state.pruned(NOW + 21).holders
    assert state.pruned(NOW + 21).sequence == state.sequence
    # Applying a list prunes as it goes.
    late = RevocationState(VIN).apply(doc, trust=world.trust, now=NOW + 100)
    assert dict(late.tokens) == {tid(2): NOW + DAY}
    assert not late.holders
    assert late.sequence == 3


def test_dead_holder_entry_does_not_widen_a_live_one(world: World) -> None:
    # Entry 1 ended before NOW; entry 2 for the same holder is live with an earlier cut-off.
    ledger = RevocationLedger(VIN)
    ledger.revoke_holder(hid(1), before=NOW - 10 * DAY, until=NOW - 1)
    ledger.revoke_holder(hid(1), before=NOW - 40 * DAY, until=NOW + DAY)
    # A car that synced entry 1 (since pruned) and then the delta holds only entry 2 ...
    at_1 = RevocationState(VIN).apply(
        RevocationLedger(VIN, 1, ledger.entries[:1]).document(world.issuer, now=NOW),
        trust=world.trust,
        now=NOW,
    )
    assert len(at_1) == 0
    by_delta = at_1.apply(
        ledger.document(world.issuer, now=NOW, since=1), trust=world.trust, now=NOW
    )
    assert dict(by_delta.holders) == {hid(1): (NOW - 40 * DAY, NOW + DAY)}
    # ... and a car given the full list at the same moment must hold the same: a dead entry has
    # no effect, so the revocation verdict cannot depend on how the car synced.
    full = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert dict(full.holders) == dict(by_delta.holders)


def test_ledger_prune_keeps_a_grace_period(world: World) -> None:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(tid(1), NOW)
    ledger.revoke_holder(hid(1), before=NOW, until=NOW + 100)
    ledger.revoke_token(tid(2), NOW + 30 * DAY)
    ledger.prune(NOW + DAY)  # exactly at expiry + grace: kept
    assert len(ledger.entries) == 3
    ledger.prune(NOW + DAY + 1)
    assert [s for s, _ in ledger.entries] == [2, 3]
    ledger.prune(NOW + 100 + 3600, grace=3600)
    assert [s for s, _ in ledger.entries] == [2, 3]
    ledger.prune(NOW + 100 + 3601, grace=3600)
    assert [s for s, _ in ledger.entries] == [3]
    # Sequence numbers never go back, and lists cut from a pruned ledger still apply.
    assert ledger.sequence == 3
    assert ledger.revoke_token(tid(3), NOW + DAY) == 4
    state = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    assert set(state.tokens) == {tid(2), tid(3)}


def test_ledger_document_bounds(world: World) -> None:
    ledger = RevocationLedger(VIN)
    with pytest.raises(ValueError, match="nothing revoked"):
        ledger.document(world.issuer, now=NOW)
    ledger.revoke_token(tid(1), NOW + DAY)
    with pytest.raises(ValueError, match="since"):
        ledger.document(world.issuer, now=NOW, since=1)
    with pytest.raises(ValueError, match="base"):
        sign_revocation_list(world.issuer, vin=VIN, sequence=2, now=NOW, base=2)
    with pytest.raises(ValueError, match="VIN"):
        sign_revocation_list(world.issuer, vin="nope", sequence=1, now=NOW)


# ---------------------------------------------------------------------------------------------
# Sizes


def test_size_cap_is_checked_before_parsing(world: World) -> None:
    # Garbage one byte over the cap is too_large; at the cap it is parsed (and malformed).
    assert refusal(RevocationState(VIN), b"\xd2" * (MAX_REVOCATION_BYTES + 1), world) == (
        "too_large"
    )
    assert refusal(RevocationState(VIN), b"\xd2" * MAX_REVOCATION_BYTES, world) == "malformed"
    assert refusal(RevocationState(VIN), bytearray(b"\xd2\x84"), world) == "malformed"


def test_a_thousand_entries_stay_small(world: World) -> None:
    for holders in (False, True):
        ledger = RevocationLedger(VIN)
        for n in range(1000):
            if holders:
                ledger.revoke_holder(hid(n), before=NOW, until=NOW + 30 * DAY)
            else:
                ledger.revoke_token(tid(n), NOW + 30 * DAY)
        doc = ledger.document(world.issuer, now=NOW)
        assert len(doc) < 32 * 1024
        state = RevocationState(VIN).apply(doc, trust=world.trust, now=NOW)
        assert len(state) == 1000


def test_lists_up_to_the_entry_limit_are_accepted(world: World) -> None:
    # 5,000 entries (~115 KB) are within both MAX_ENTRIES and MAX_REVOCATION_BYTES.
    count = 5_000
    assert count <= MAX_ENTRIES
    tokens = [RevokedToken(tid(n), NOW + DAY) for n in range(count)]
    doc = sign_revocation_list(world.issuer, vin=VIN, sequence=1, now=NOW, tokens=tokens)
    assert len(doc) <= MAX_REVOCATION_BYTES
    state = RevocationState(VIN).apply(doc, trust=world.trust, now=NOW)
    assert len(state) == count


def test_more_entries_than_the_limit_are_malformed(world: World) -> None:
    tokens = [RevokedToken(tid(n), NOW + DAY) for n in range(MAX_ENTRIES + 1)]
    doc = sign_revocation_list(world.issuer, vin=VIN, sequence=1, now=NOW, tokens=tokens)
    assert len(doc) <= MAX_REVOCATION_BYTES  # refused for its entry count, not its size
    assert refusal(RevocationState(VIN), doc, world) == "malformed"
