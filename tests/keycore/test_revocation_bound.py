"""The worst-case revocation list an issuer that keeps ``MAX_VEHICLE_HOLDERS`` can sign: its size
is ``WORST_CASE_LIST_BYTES`` (docs/protocol.md §12.1), far under what a car and its channel read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keycore import RevokedHolder, SoftwareSigner, sign_revocation_list
from keycore.channel import MAX_SERVER_FRAME_BYTES, Revocations, encode
from keycore.revocation import (
    HOLDER_ID_BYTES,
    MAX_REVOCATION_BYTES,
    MAX_VEHICLE_HOLDERS,
    WORST_CASE_LIST_BYTES,
)
from keycore.token import MAX_TIME
from keycore.trust import MAX_SEQUENCE

SIGNER = SoftwareSigner.generate()
VIN = "5YJ3E1EA7KF000001"


def holders(n: int, before: int, until: int) -> list[RevokedHolder]:
    return [RevokedHolder(n.to_bytes(HOLDER_ID_BYTES, "big"), before, until) for n in range(n)]


def test_the_widest_list_is_exactly_the_documented_bound() -> None:
    for base in (0, MAX_SEQUENCE - 1):  # a full list and a delta, every integer at its widest
        document = sign_revocation_list(
            SIGNER, vin=VIN, sequence=MAX_SEQUENCE, now=MAX_TIME, base=base,
            holders=holders(MAX_VEHICLE_HOLDERS, MAX_TIME, MAX_TIME),
        )  # fmt: skip
        assert len(document) <= WORST_CASE_LIST_BYTES
    assert len(document) == WORST_CASE_LIST_BYTES  # the delta from the widest base is the widest
    assert WORST_CASE_LIST_BYTES * 100 < MAX_REVOCATION_BYTES
    assert len(encode(Revocations(document))) < MAX_SERVER_FRAME_BYTES


@given(
    count=st.integers(0, MAX_VEHICLE_HOLDERS),
    sequence=st.integers(1, MAX_SEQUENCE),
    times=st.tuples(st.integers(0, MAX_TIME), st.integers(0, MAX_TIME), st.integers(0, MAX_TIME)),
    data=st.data(),
)
def test_no_list_within_the_holder_bound_is_larger(
    count: int, sequence: int, times: tuple[int, int, int], data: st.DataObject
) -> None:
    base = data.draw(st.integers(0, sequence - 1))
    now, before, until = times
    document = sign_revocation_list(
        SIGNER, vin=VIN, sequence=sequence, now=now, base=base,
        holders=holders(count, before, until),
    )  # fmt: skip
    assert len(document) <= WORST_CASE_LIST_BYTES
