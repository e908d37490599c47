"""Messages: every valid message survives encode → decode unchanged, and any bytes at all decode
to a message or raise RemoteProtocolError — nothing else."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ble_fallback.errors import BleReason, RemoteProtocolError
from ble_fallback.messages import (
    APPLIED,
    GRANTED,
    LATE,
    MAX_CAR_MESSAGE_BYTES,
    RESULT_CODES,
    Busy,
    CarStatus,
    Challenge,
    Message,
    MessageType,
    Result,
    RevocationList,
    TimeAnswer,
    TrustUpdate,
    UnlockRequest,
    decode,
    encode,
)
from keycore import Action

statuses = st.builds(
    CarStatus,
    st.integers(0, 2**40),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.booleans(),
)
nonces = st.binary(min_size=32, max_size=32)
time_nonces = st.binary(min_size=16, max_size=16)
actions = st.sampled_from(Action)
unlock_codes = st.sampled_from(sorted(RESULT_CODES - {APPLIED}))
courier_codes = st.sampled_from(sorted(RESULT_CODES - {GRANTED, LATE}))
couriers = st.sampled_from(
    [MessageType.REVOCATION_LIST, MessageType.TRUST_UPDATE, MessageType.TIME_ANSWER]
)

valid_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Challenge, nonces, time_nonces, statuses),
    st.builds(
        UnlockRequest,
        st.binary(min_size=1, max_size=1024),
        actions,
        st.binary(min_size=64, max_size=64),
    ),
    st.builds(
        Result,
        st.just(MessageType.UNLOCK_REQUEST),
        unlock_codes,
        actions,
        nonces,
        time_nonces,
        statuses,
    ),
    st.builds(Result, couriers, courier_codes, st.none(), nonces, time_nonces, statuses),
    st.builds(Busy, st.integers(0, 600_000)),
    st.builds(RevocationList, st.binary(min_size=1, max_size=2000)),
    st.builds(TrustUpdate, st.binary(min_size=1, max_size=2000)),
    st.builds(TimeAnswer, st.binary(min_size=1, max_size=512)),
)


@settings(max_examples=400, deadline=None)
@given(valid_messages)
def test_every_valid_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_decode_or_raise_only_a_protocol_error(data: bytes) -> None:
    outcome = decoded_or_refused(data)
    if isinstance(outcome, RemoteProtocolError):
        assert outcome.reason in (BleReason.MALFORMED, BleReason.TOO_LARGE)
    else:
        assert encode(outcome) == data  # anything accepted is in its one encoding


def decoded_or_refused(data: bytes) -> Message | RemoteProtocolError:
    """Anything but a message or a RemoteProtocolError propagates and fails the test."""
    try:
        return decode(data)
    except RemoteProtocolError as error:
        return error


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats()
    | st.binary(max_size=70)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(-2, 12), inner, max_size=6)
    ),
    max_leaves=24,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.integers(0, 12), cbor_values, max_size=11), st.integers(-1, 9))
def test_random_maps_with_a_type_decode_or_raise_only_a_protocol_error(
    body: dict[int, object], kind: int
) -> None:
    decoded_or_refused(cbor2.dumps({**body, 1: kind}))


def test_decoding_a_car_message_is_bounded_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(encode(RevocationList(bytes(600))), max_size=MAX_CAR_MESSAGE_BYTES)
    assert caught.value.reason is BleReason.TOO_LARGE


def test_result_ok_means_granted_or_applied() -> None:
    status = CarStatus(0, 0, 0, False)
    granted = Result(MessageType.UNLOCK_REQUEST, GRANTED, Action.LOCK, bytes(32), bytes(16), status)
    late = Result(MessageType.UNLOCK_REQUEST, LATE, Action.LOCK, bytes(32), bytes(16), status)
    applied = Result(MessageType.TRUST_UPDATE, APPLIED, None, bytes(32), bytes(16), status)
    assert granted.ok
    assert applied.ok
    assert not late.ok
