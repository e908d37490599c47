"""Trusted time on the car: monotonic elapsed, only forward, nonce-bound signed time, resets."""

from __future__ import annotations

import math

import cbor2
import pytest

from keycore import (
    InvalidSignedTime,
    InvalidState,
    IssuerKeyRing,
    Reason,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    read_signed_time,
    sign_time,
)
from tests.conftest import DAY, NOW, World

BOOT = "6f1c3a52-0d5e-4c1f-9a7b-000000000001"
OTHER_BOOT = "6f1c3a52-0d5e-4c1f-9a7b-000000000002"
NONCE = bytes(range(32))


def provisioned(mono: float = 100.0) -> TrustedClock:
    return TrustedClock.provisioned(now=NOW, mono=mono, boot_id=BOOT)


def signed_time_error(world: World, data: bytes, *, nonce: bytes = NONCE) -> Reason:
    with pytest.raises(InvalidSignedTime) as caught:
        read_signed_time(data, nonce=nonce, trust=world.trust)
    assert str(caught.value) == "invalid signed time"
    return caught.value.reason


def restore_error(data: bytes) -> Reason:
    with pytest.raises(InvalidState) as caught:
        TrustedClock.restore(data, mono=100.0, boot_id=BOOT)
    return caught.value.reason


# ---------------------------------------------------------------------------------------------
# Monotonic elapsed, only forward


def test_now_is_anchor_plus_monotonic_elapsed() -> None:
    clock = provisioned(mono=100.0)
    assert clock.now(100.0) == NOW
    assert clock.now(105.5) == NOW + 5.5
    assert clock.now(100.0 + DAY) == NOW + DAY
    assert not clock.reset


def test_monotonic_going_backwards_never_lowers_the_time() -> None:
    clock = provisioned(mono=100.0)
    assert clock.now(50.0) == NOW


def test_raising_with_an_older_time_never_lowers() -> None:
    clock = provisioned(mono=100.0)
    later = clock.raised(NOW - 3600, mono=110.0, fresh=False)
    assert later.now(110.0) == NOW + 10
    assert later.now(120.0) == NOW + 20
    assert clock.raised(NOW - 3600, mono=110.0, fresh=True).now(110.0) == NOW + 10


def test_raising_with_a_newer_time_moves_forward() -> None:
    clock = provisioned(mono=100.0)
    raised = clock.raised(NOW + 500, mono=110.0, fresh=False)
    assert raised.now(110.0) == NOW + 500
    assert raised.now(111.0) == NOW + 501
    assert clock.now(110.0) == NOW + 10  # immutable: the old clock is unchanged


def test_unknown_clock_starts_at_the_epoch_and_reset() -> None:
    clock = TrustedClock.unknown(mono=7.0, boot_id=BOOT)
    assert clock.reset
    assert clock.now(7.0) == 0.0
    assert clock.now(10.0) == 3.0


# ---------------------------------------------------------------------------------------------
# Signed time


def test_signed_time_for_our_nonce_is_accepted(world: World) -> None:
    answer = sign_time(world.issuer, nonce=NONCE, now=NOW + 3600)
    assert read_signed_time(answer, nonce=NONCE, trust=world.trust) == NOW + 3600
    clock = provisioned(mono=100.0).accept_signed_time(
        answer, nonce=NONCE, mono=101.0, trust=world.trust
    )
    assert clock.now(101.0) == NOW + 3600
    assert clock.now(102.0) == NOW + 3601


def test_signed_time_for_another_nonce_is_refused(world: World) -> None:
    answer = sign_time(world.issuer, nonce=NONCE, now=NOW)
    assert signed_time_error(world, answer, nonce=bytes(32)) is Reason.NONCE_MISMATCH
    assert signed_time_error(world, answer, nonce=NONCE[:16]) is Reason.NONCE_MISMATCH
    clock = TrustedClock.unknown(mono=0.0, boot_id=BOOT)
    with pytest.raises(InvalidSignedTime) as caught:
        clock.accept_signed_time(answer, nonce=NONCE[::-1], mono=1.0, trust=world.trust)
    assert caught.value.reason is Reason.NONCE_MISMATCH


def test_signed_time_from_an_unknown_signer_is_refused(world: World) -> None:
    for signer in (SoftwareSigner.generate(), world.root):
        answer = sign_time(signer, nonce=NONCE, now=NOW)
        assert signed_time_error(world, answer) is Reason.UNKNOWN_KEY


def test_signed_time_outside_the_signing_keys_validity_is_refused(world: World) -> None:
    key = world.trust.lookup(world.issuer.kid)
    assert key is not None
    inside = sign_time(world.issuer, nonce=NONCE, now=key.not_after)
    assert read_signed_time(inside, nonce=NONCE, trust=world.trust) == key.not_after
    for when in (key.not_before - 1, key.not_after + 1):
        answer = sign_time(world.issuer, nonce=NONCE, now=when)
        assert signed_time_error(world, answer) is Reason.UNKNOWN_KEY


def test_signed_time_validity_is_not_checked_against_the_cars_clock(world: World) -> None:
    # A car whose clock is stuck at the epoch still learns the time from a trusted key.
    clock = TrustedClock.unknown(mono=0.0, boot_id=BOOT)
    answer = sign_time(world.issuer, nonce=NONCE, now=NOW)
    clock = clock.accept_signed_time(answer, nonce=NONCE, mono=5.0, trust=world.trust)
    assert clock.now(5.0) == NOW
    assert not clock.reset


def test_tampered_signed_time_is_refused(world: World) -> None:
    answer = bytearray(sign_time(world.issuer, nonce=NONCE, now=NOW))
    answer[-1] ^= 1
    assert signed_time_error(world, bytes(answer)) is Reason.BAD_SIGNATURE
    assert signed_time_error(world, b"") is Reason.MALFORMED
    assert signed_time_error(world, b"\xd2" * 600) is Reason.TOO_LARGE


def test_sign_time_checks_the_nonce_length(world: World) -> None:
    for nonce in (b"", b"x" * 15, b"x" * 65):
        with pytest.raises(ValueError, match="nonce"):
            sign_time(world.issuer, nonce=nonce, now=NOW)


def test_signed_time_from_a_rotated_in_key(world: World) -> None:
    # The pre-published next key can answer time right after rotation.
    ring = IssuerKeyRing.create(now=NOW)
    root = SoftwareSigner.generate()
    trust = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=NOW))
    upcoming = ring.rotate(now=NOW + DAY).active.signer
    answer = sign_time(upcoming, nonce=NONCE, now=NOW + DAY)  # type: ignore[arg-type]
    assert read_signed_time(answer, nonce=NONCE, trust=trust) == NOW + DAY


# ---------------------------------------------------------------------------------------------
# Persistence and clock resets


def test_restore_on_the_same_boot_keeps_the_state() -> None:
    clock = provisioned(mono=100.0).raised(NOW + 50, mono=110.0, fresh=False)
    saved = clock.encode(120.0)
    restored = TrustedClock.restore(saved, mono=130.0, boot_id=BOOT)
    assert not restored.reset
    assert restored.boot_id == BOOT
    assert restored.now(130.0) == clock.now(130.0) == NOW + 70
    assert restored.now(200.0) == clock.now(200.0)


def test_restore_on_the_same_boot_keeps_a_reset() -> None:
    clock = TrustedClock.unknown(mono=0.0, boot_id=BOOT)
    restored = TrustedClock.restore(clock.encode(10.0), mono=10.0, boot_id=BOOT)
    assert restored.reset


def test_restore_after_a_reboot_is_a_reset_with_a_lower_bound() -> None:
    clock = provisioned(mono=100.0)
    saved = clock.encode(160.0)  # NOW + 60
    restored = TrustedClock.restore(saved, mono=3.0, boot_id=OTHER_BOOT)
    assert restored.reset
    assert restored.boot_id == OTHER_BOOT
    # The saved time is kept as a lower bound; elapsed counts from the new boot's reading.
    assert restored.now(3.0) == NOW + 60
    assert restored.now(13.0) == NOW + 70


def test_restore_with_a_monotonic_clock_that_went_backwards_is_a_reset() -> None:
    saved = provisioned(mono=100.0).encode(160.0)
    restored = TrustedClock.restore(saved, mono=159.0, boot_id=BOOT)
    assert restored.reset
    assert restored.now(159.0) == NOW + 60
    assert restored.now(160.0) == NOW + 61


def test_reset_is_cleared_only_by_fresh_signed_time(world: World) -> None:
    clock = TrustedClock.restore(provisioned().encode(100.0), mono=1.0, boot_id=OTHER_BOOT)
    assert clock.reset
    # A verified token's iat raises the time but is not fresh: the reset stays.
    by_token = clock.raised(NOW + DAY, mono=2.0, fresh=False)
    assert by_token.reset
    assert by_token.now(2.0) == NOW + DAY
    # Signed time for another nonce changes nothing.
    with pytest.raises(InvalidSignedTime):
        by_token.accept_signed_time(
            sign_time(world.issuer, nonce=NONCE, now=NOW + DAY),
            nonce=bytes(32),
            mono=3.0,
            trust=world.trust,
        )
    # A fresh nonce-bound answer clears it, even one older than what the clock already has.
    fresh = by_token.accept_signed_time(
        sign_time(world.issuer, nonce=NONCE, now=NOW + 10), nonce=NONCE, mono=3.0, trust=world.trust
    )
    assert not fresh.reset
    assert fresh.now(3.0) == NOW + DAY + 1


def test_encode_is_small_cbor() -> None:
    data = provisioned().encode(150.0)
    assert len(data) <= 256
    assert cbor2.loads(data) == [NOW + 50, 150.0, BOOT, False]


BAD_STATES = {
    "three-items": [NOW, 1.0, BOOT],
    "five-items": [NOW, 1.0, BOOT, False, 0],
    "map": {"when": NOW},
    "text-time": [str(NOW), 1.0, BOOT, False],
    "null-mono": [NOW, None, BOOT, False],
    "bool-time": [True, 1.0, BOOT, False],
    "bytes-boot": [NOW, 1.0, BOOT.encode(), False],
    "int-reset": [NOW, 1.0, BOOT, 0],
    "nan-time": [math.nan, 1.0, BOOT, False],
    "inf-mono": [NOW, math.inf, BOOT, False],
    "minus-inf-time": [-math.inf, 1.0, BOOT, False],
    "bignum-time": [10**400, 1.0, BOOT, False],  # an integer too big for a float
    "bignum-mono": [NOW, -(10**400), BOOT, False],
}


@pytest.mark.parametrize("name", BAD_STATES)
def test_restore_refuses_bad_state(name: str) -> None:
    assert restore_error(cbor2.dumps(BAD_STATES[name])) is Reason.MALFORMED


def test_restore_refuses_garbage_and_oversized_state() -> None:
    assert restore_error(b"") is Reason.MALFORMED
    assert restore_error(provisioned().encode(1.0) + b"\x00") is Reason.MALFORMED
    assert restore_error(provisioned().encode(1.0)[:-1]) is Reason.MALFORMED
    assert restore_error(cbor2.dumps([NOW, 1.0, "b" * 300, False])) is Reason.TOO_LARGE
    assert restore_error("text") is Reason.MALFORMED  # type: ignore[arg-type]
