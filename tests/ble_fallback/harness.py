"""A car and a phone for BLE tests: the car's state from the shared test world, and helpers."""

from __future__ import annotations

import random
from collections.abc import Callable

from ble_fallback.errors import LinkClosed
from ble_fallback.link import Link
from ble_fallback.protocol import CarSession, CarState, PhoneSession
from keycore import ChallengeBook, RevocationLedger, TrustedClock
from tests.conftest import NOW, VIN, World

ALLOWED_LATENCY = 0.5


def car_state(world: World, *, clock: TrustedClock | None = None) -> CarState:
    """A provisioned car whose monotonic clock reads 0.0 at trusted time NOW."""
    return CarState(
        VIN,
        world.trust,
        world.revocations,
        clock or TrustedClock.provisioned(now=NOW, mono=0.0, boot_id="car"),
        ChallengeBook(),
    )


def random_source(seed: int = 0) -> Callable[[int], bytes]:
    """Deterministic nonces for a test (never for a real car)."""
    return random.Random(seed).randbytes


def revocation_of(world: World, token_id: bytes, *, sequence: int = 1) -> bytes:
    ledger = RevocationLedger(VIN)
    for _ in range(sequence - 1):
        ledger.revoke_token(bytes(16), NOW + 3600)
    ledger.revoke_token(token_id, NOW + 86_400)
    return ledger.document(world.issuer, now=NOW)


def connect(
    car: CarState, *, now: float = 0.0, chunk_size: int = 182
) -> tuple[CarSession, PhoneSession]:
    """A started car session and a phone session that holds its challenge."""
    car_session = CarSession(
        car,
        allowed_latency=ALLOWED_LATENCY,
        chunk_size=chunk_size,
        random_bytes=random_source(),
    )
    phone = PhoneSession(chunk_size=chunk_size)
    car_session.start(now)
    deliver(car_session.data_to_send(), phone, now)
    return car_session, phone


def deliver(chunks: list[bytes], to: CarSession | PhoneSession, now: float) -> None:
    for chunk in chunks:
        to.receive_data(chunk, now)


async def drain(link: Link) -> list[bytes]:
    """Every chunk until the link closes."""
    received = []
    while True:
        try:
            received.append(await link.receive())
        except LinkClosed:
            return received
