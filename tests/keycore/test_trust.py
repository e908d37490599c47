"""Issuer key ring rotation and the car's trust store: root-signed, sequence-numbered updates."""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
import pytest

from keycore import (
    Action,
    InvalidToken,
    InvalidTrustUpdate,
    IssueError,
    IssuerKeyRing,
    KeyStatus,
    Reason,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustStore,
    cose,
    issue,
    sign_trust_update,
    verify,
)
from keycore.trust import MAX_TRUSTED_KEYS, TYP_TRUST_UPDATE
from tests.conftest import DAY, NOW, VIN

KEY_LIFETIME = 365 * DAY
MAX_TOKEN_LIFETIME = 30 * DAY


@dataclass
class Fleet:
    """An issuer with a ring and a root, and a car that learns trust updates offline."""

    root: SoftwareSigner
    ring: IssuerKeyRing
    car: TrustStore
    phone: SoftwareSigner
    sequence: int = 1

    def publish(self, *, now: int) -> bytes:
        self.sequence += 1
        return self.ring.trust_update(self.root, sequence=self.sequence, now=now)

    def token(self, signer: object, *, now: int, lifetime: int = DAY, **kwargs: object) -> bytes:
        return issue(
            signer=signer,  # type: ignore[arg-type]
            vin=VIN,
            holder=self.phone.public_key,
            role=Role.OWNER,
            now=now,
            expires=now + lifetime,
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
def fleet() -> Fleet:
    root = SoftwareSigner.generate()
    ring = IssuerKeyRing.create(
        now=NOW, key_lifetime=KEY_LIFETIME, max_token_lifetime=MAX_TOKEN_LIFETIME
    )
    car = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=NOW))
    return Fleet(root, ring, car, SoftwareSigner.generate())


def check(token: bytes, *, trust: TrustStore, now: float) -> Reason | None:
    """None if ``token`` unlocks at ``now``, else the reason it is refused."""
    try:
        verify(
            token,
            vin=VIN,
            action=Action.UNLOCK,
            now=now,
            trust=trust,
            revocations=RevocationState(VIN),
        )
    except InvalidToken as error:
        return error.reason
    return None


def trust_error(store: TrustStore, update: object) -> Reason:
    with pytest.raises(InvalidTrustUpdate) as caught:
        store.apply(update)  # type: ignore[arg-type]
    assert str(caught.value) == "invalid trust-store update"
    return caught.value.reason


# ---------------------------------------------------------------------------------------------
# The key ring


def test_create_has_an_active_and_a_next_key() -> None:
    ring = IssuerKeyRing.create(now=NOW, key_lifetime=KEY_LIFETIME)
    assert [k.status for k in ring.keys] == [KeyStatus.ACTIVE, KeyStatus.NEXT]
    active, upcoming = ring.keys
    assert ring.active is active
    assert (active.not_before, active.not_after) == (NOW, NOW + KEY_LIFETIME)
    assert (upcoming.not_before, upcoming.not_after) == (NOW, NOW + 2 * KEY_LIFETIME)
    assert active.kid != upcoming.kid
    assert ring.find(upcoming.kid) is upcoming
    assert ring.find(b"\x00" * 8) is None
    assert [k.kid for k in ring.trusted_keys()] == [active.kid, upcoming.kid]


def test_rotate_moves_next_to_active_and_active_to_retired(fleet: Fleet) -> None:
    old_active, old_next = fleet.ring.keys
    at = NOW + 100 * DAY
    ring = fleet.ring.rotate(now=at)
    by_kid = {k.kid: k for k in ring.keys}
    assert by_kid[old_active.kid].status is KeyStatus.RETIRED
    assert by_kid[old_next.kid].status is KeyStatus.ACTIVE
    assert ring.active.kid == old_next.kid
    assert ring.active.signer is old_next.signer  # the pre-published key, not a new one
    new = [k for k in ring.keys if k.kid not in (old_active.kid, old_next.kid)]
    assert [k.status for k in new] == [KeyStatus.NEXT]
    assert (new[0].not_before, new[0].not_after) == (at, at + 2 * KEY_LIFETIME)
    # Retired: trusted only as long as its tokens can live.
    assert by_kid[old_active.kid].not_after == at + MAX_TOKEN_LIFETIME
    # The ring it came from is unchanged (immutable).
    assert fleet.ring.active.kid == old_active.kid


def test_retired_not_after_never_extends_the_key(fleet: Fleet) -> None:
    # Rotating just before the active key's own end: min(old not_after, now + max lifetime).
    old_active = fleet.ring.active
    at = old_active.not_after - DAY
    ring = fleet.ring.rotate(now=at)
    retired = ring.find(old_active.kid)
    assert retired is not None
    assert retired.status is KeyStatus.RETIRED
    assert retired.not_after == old_active.not_after


def test_rotate_forgets_retired_keys_whose_tokens_are_all_dead(fleet: Fleet) -> None:
    first = fleet.ring.active.kid
    ring = fleet.ring.rotate(now=NOW + DAY)
    retired = ring.find(first)
    assert retired is not None
    # Still alive at its not_after: kept.
    assert ring.rotate(now=retired.not_after).find(first) is not None
    # Past its not_after: forgotten.
    assert ring.rotate(now=retired.not_after + 1).find(first) is None


def test_drop_refuses_the_active_key_and_unknown_keys(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="rotate before dropping"):
        fleet.ring.drop(fleet.ring.active.kid)
    with pytest.raises(KeyError):
        fleet.ring.drop(b"\x00" * 8)


def test_drop_forgets_a_next_or_retired_key(fleet: Fleet) -> None:
    old_active, old_next = fleet.ring.keys
    assert fleet.ring.drop(old_next.kid).find(old_next.kid) is None
    ring = fleet.ring.rotate(now=NOW + DAY)
    dropped = ring.drop(old_active.kid)
    assert dropped.find(old_active.kid) is None
    assert dropped.active.kid == old_next.kid
    assert old_active.kid not in {k.kid for k in dropped.trusted_keys()}


# ---------------------------------------------------------------------------------------------
# Trust updates


def test_newer_update_applies(fleet: Fleet) -> None:
    update = fleet.publish(now=NOW + DAY)
    store = fleet.car.apply(update)
    assert store.sequence == 2
    assert store.update == update
    assert set(store.keys) == {k.kid for k in fleet.ring.keys}
    for key in fleet.ring.keys:
        trusted = store.lookup(key.kid)
        assert trusted is not None
        assert (trusted.alg, trusted.not_before, trusted.not_after) == (
            cose.ES256,
            key.not_before,
            key.not_after,
        )
    assert fleet.car.sequence == 1  # the old store is unchanged


def test_older_or_equal_update_is_stale(fleet: Fleet) -> None:
    first = fleet.car.update
    assert first is not None
    second = fleet.publish(now=NOW + DAY)
    third = fleet.publish(now=NOW + 2 * DAY)
    store = fleet.car.apply(third)  # sequence 3, skipping 2 is fine: an update is complete
    assert store.sequence == 3
    assert trust_error(store, third) is Reason.STALE
    assert trust_error(store, second) is Reason.STALE
    assert trust_error(store, first) is Reason.STALE


def test_update_signed_by_a_non_root_key_is_unknown_key(fleet: Fleet) -> None:
    # Even the issuer's own active key cannot change what the car trusts.
    for signer in (fleet.ring.active.signer, SoftwareSigner.generate()):
        update = fleet.ring.trust_update(signer, sequence=9, now=NOW)  # type: ignore[arg-type]
        assert trust_error(fleet.car, update) is Reason.UNKNOWN_KEY


def test_update_with_a_bad_signature(fleet: Fleet) -> None:
    update = bytearray(fleet.publish(now=NOW + DAY))
    update[-5] ^= 0x40
    assert trust_error(fleet.car, bytes(update)) is Reason.BAD_SIGNATURE


def test_update_header_algorithm_must_be_es256(fleet: Fleet) -> None:
    payload = cbor2.dumps({1: 5, 2: NOW, 3: []})
    protected = cbor2.dumps({1: -35, 4: fleet.root.kid, 16: TYP_TRUST_UPDATE})
    signature = fleet.root.sign(cose._sig_structure(protected, payload))
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))
    assert trust_error(fleet.car, forged) is Reason.ALGORITHM_MISMATCH


def _root_signed(fleet: Fleet, body: dict[int, object]) -> bytes:
    return cose.sign1(cbor2.dumps(body), typ=TYP_TRUST_UPDATE, signer=fleet.root)


def _entry(key: SoftwareSigner, overrides: dict[int, object] | None = None) -> dict[int, object]:
    cose_key = cose.cose_key(key.public_key, kid=key.kid)
    cose_key.update(overrides or {})
    return {1: cose_key, 2: NOW, 3: NOW + DAY}


def test_update_entries_are_checked(fleet: Fleet) -> None:
    a, b = SoftwareSigner.generate(), SoftwareSigner.generate()
    wrong_kid = _entry(a, {cose.KEY_KID: b.kid})
    other_alg = _entry(a, {cose.KEY_ALG: -35})
    backwards = {**_entry(a), 2: NOW + DAY, 3: NOW}
    off_curve = _entry(a, {cose.KEY_Y: b"\x00" * 32})
    cases = {
        Reason.MALFORMED: [
            [wrong_kid],
            [_entry(a), _entry(a)],  # a key id twice
            [backwards],  # not_after before not_before
            [off_curve],
            [_entry(SoftwareSigner.generate()) for _ in range(MAX_TRUSTED_KEYS + 1)],
        ],
        Reason.ALGORITHM_MISMATCH: [[other_alg]],
    }
    for reason, lists in cases.items():
        for keys in lists:
            update = _root_signed(fleet, {1: 2, 2: NOW, 3: keys})
            assert trust_error(fleet.car, update) is reason
    # The well-formed variant of the same update applies.
    store = fleet.car.apply(_root_signed(fleet, {1: 2, 2: NOW, 3: [_entry(a), _entry(b)]}))
    assert set(store.keys) == {a.kid, b.kid}


def test_update_sequence_must_be_positive(fleet: Fleet) -> None:
    fresh = TrustStore(fleet.root.public_key)
    assert trust_error(fresh, _root_signed(fleet, {1: 0, 2: NOW, 3: []})) is Reason.MALFORMED
    with pytest.raises(ValueError, match="sequence"):
        sign_trust_update(fleet.root, sequence=0, now=NOW, keys=[])


def test_update_must_be_bytes_like(fleet: Fleet) -> None:
    update = fleet.publish(now=NOW)
    for wrapped in (bytearray(update), memoryview(update)):
        store = fleet.car.apply(wrapped)  # type: ignore[arg-type]
        assert store.sequence == 2
        assert type(store.update) is bytes
        assert store.update == update
    assert trust_error(fleet.car, update.decode("latin-1")) is Reason.MALFORMED
    assert trust_error(fleet.car, None) is Reason.MALFORMED


def test_trust_store_keys_are_read_only(fleet: Fleet) -> None:
    with pytest.raises(TypeError):
        fleet.car.keys[b"\x00" * 8] = fleet.car.keys[fleet.ring.active.kid]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Rotation and compromise, end to end, with a car that is offline except for what phones carry


def test_next_key_verifies_right_after_rotation_without_a_new_update(fleet: Fleet) -> None:
    at = NOW + 100 * DAY
    rotated = fleet.ring.rotate(now=at)
    token = fleet.token(rotated.active.signer, now=at)
    assert check(token, trust=fleet.car, now=at + 60) is None  # the car still has update 1


def test_retired_key_tokens_verify_until_its_not_after(fleet: Fleet) -> None:
    at = NOW + 100 * DAY
    old = fleet.ring.active
    token = fleet.token(old.signer, now=at, lifetime=MAX_TOKEN_LIFETIME)  # signed just before
    fleet.ring = fleet.ring.rotate(now=at)
    car = fleet.car.apply(fleet.publish(now=at))
    retired = car.lookup(old.kid)
    assert retired is not None
    assert retired.not_after == at + MAX_TOKEN_LIFETIME
    assert check(token, trust=car, now=at + 1) is None
    assert check(token, trust=car, now=at + MAX_TOKEN_LIFETIME - 1) is None
    # The retired key's trust ends with its last token's life (key checked before expiry).
    assert check(token, trust=car, now=retired.not_after + 1) is Reason.UNKNOWN_KEY
    # A retired key cannot vouch for tokens "issued" after its window.
    late = fleet.token(old.signer, now=retired.not_after + 1)
    assert check(late, trust=car, now=retired.not_after) is Reason.UNKNOWN_KEY


def test_every_token_a_retired_key_signed_lives_its_whole_life(fleet: Fleet) -> None:
    # G1: a token signed just before rotation unlocks for its whole lifetime. With a future
    # not_before its expiry lies beyond iat + max_token_lifetime, which is where the retired key
    # stops being trusted — so either issue() refuses it, or the car must still honour it.
    at = NOW + 100 * DAY
    old = fleet.ring.active
    try:
        token = fleet.token(
            old.signer, now=at, not_before=at + 7 * DAY, lifetime=MAX_TOKEN_LIFETIME + 7 * DAY
        )
    except IssueError:
        return  # policy keeps every token inside the window the retired key is trusted for
    fleet.ring = fleet.ring.rotate(now=at)
    car = fleet.car.apply(fleet.publish(now=at))
    assert check(token, trust=car, now=at + MAX_TOKEN_LIFETIME + 7 * DAY - 1) is None


def test_dropped_key_fails_after_the_car_applies_the_update_offline(fleet: Fleet) -> None:
    at = NOW + 10 * DAY
    compromised = fleet.ring.active
    stolen = fleet.token(compromised.signer, now=at)
    assert check(stolen, trust=fleet.car, now=at + 60) is None
    # The issuer rotates the compromised key away and drops it at once.
    fleet.ring = fleet.ring.rotate(now=at + 60).drop(compromised.kid)
    update = fleet.publish(now=at + 60)
    # A phone carries the update to the car; no network on the car's side.
    car = fleet.car.apply(update)
    assert car.lookup(compromised.kid) is None
    assert check(stolen, trust=car, now=at + 120) is Reason.UNKNOWN_KEY
    # Tokens from the new active key keep working.
    fresh = fleet.token(fleet.ring.active.signer, now=at + 60)
    assert check(fresh, trust=car, now=at + 120) is None
    # And the old update that still listed the key cannot be replayed to undo the drop.
    assert fleet.car.update is not None
    assert trust_error(car, fleet.car.update) is Reason.STALE


def test_an_empty_update_distrusts_every_issuer(fleet: Fleet) -> None:
    token = fleet.token(fleet.ring.active.signer, now=NOW)
    car = fleet.car.apply(sign_trust_update(fleet.root, sequence=2, now=NOW, keys=[]))
    assert not car.keys
    assert check(token, trust=car, now=NOW + 60) is Reason.UNKNOWN_KEY


# ---------------------------------------------------------------------------------------------
# Persistence


def test_restore_roundtrip(fleet: Fleet) -> None:
    car = fleet.car.apply(fleet.publish(now=NOW + DAY))
    assert car.update is not None
    restored = TrustStore.restore(fleet.root.public_key, car.update)
    assert restored.sequence == car.sequence == 2
    assert restored.keys == car.keys
    assert restored.update == car.update
    empty = TrustStore.restore(fleet.root.public_key, None)
    assert empty.sequence == 0
    assert not empty.keys


def test_restore_verifies_the_persisted_update_again(fleet: Fleet) -> None:
    assert fleet.car.update is not None
    tampered = bytearray(fleet.car.update)
    tampered[-1] ^= 1
    with pytest.raises(InvalidTrustUpdate) as caught:
        TrustStore.restore(fleet.root.public_key, bytes(tampered))
    assert caught.value.reason is Reason.BAD_SIGNATURE
    # Under another root the persisted update is not trusted at all.
    with pytest.raises(InvalidTrustUpdate) as caught:
        TrustStore.restore(SoftwareSigner.generate().public_key, fleet.car.update)
    assert caught.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(InvalidTrustUpdate) as caught:
        TrustStore.restore(fleet.root.public_key, b"\x00garbage")
    assert caught.value.reason is Reason.MALFORMED
