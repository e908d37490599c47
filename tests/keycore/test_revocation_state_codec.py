"""A car's revocation state persisted and read back: exact round trip, damage refused."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycore import InvalidState, RevocationLedger, RevocationState
from keycore.errors import Reason
from tests.conftest import DAY, NOW, VIN, World


def built_state(world: World) -> RevocationState:
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x01" * 16, NOW + DAY)
    ledger.revoke_holder(b"\x02" * 16, before=NOW, until=NOW + 30 * DAY)
    return RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )


def test_round_trip(world: World) -> None:
    state = built_state(world)
    again = RevocationState.decode(state.encode())
    assert again == state
    assert again.sequence == 2
    assert len(again) == 2
    assert RevocationState.decode(RevocationState(VIN).encode()) == RevocationState(VIN)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    try:
        RevocationState.decode(data)
    except InvalidState as error:
        refused = error.reason
    else:
        return
    assert refused in (Reason.MALFORMED, Reason.TOO_LARGE)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_byte_change_is_refused_or_reads_as_a_state(
    world: World, position: int, value: int
) -> None:
    encoded = bytearray(built_state(world).encode())
    encoded[position % len(encoded)] = value
    try:
        state = RevocationState.decode(bytes(encoded))
    except InvalidState:
        return
    assert isinstance(state, RevocationState)


def test_duplicate_entries_are_refused() -> None:
    data = cbor2.dumps([VIN, 1, [[b"\x01" * 16, NOW], [b"\x01" * 16, NOW + 1]], []])
    with pytest.raises(InvalidState):
        RevocationState.decode(data)
