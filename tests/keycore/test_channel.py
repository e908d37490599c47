"""Channel frames (keycore.channel): each one round-trips; each side reads only the other side's
frames; anything else, including every mutation and any hypothesis-built CBOR, is InvalidFrame."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycore.channel import (
    MAX_AGENT_FRAME_BYTES,
    Audit,
    AuditAck,
    AuditEvent,
    CommandPush,
    CommandResult,
    Hello,
    Received,
    Results,
    ResultsAck,
    Revocations,
    Sync,
    TimeAnswer,
    TimeRequest,
    Trust,
    decode_from_agent,
    decode_from_server,
    encode,
)
from keycore.errors import InvalidFrame, Reason

SERVER_FRAMES: list[Any] = [
    Hello(1_800_000_000, 7, 2),
    Revocations(b"\xd2" * 40),
    Trust(b"\xd2" * 80),
    TimeAnswer(b"n" * 32, b"\xd2" * 90),
    CommandPush("cmd_1234-abcd", b"\xd2" * 120),
    ResultsAck("b1"),
    AuditAck("1-5"),
]
AGENT_FRAMES: list[Any] = [
    Sync(7, 2),
    TimeRequest(b"n" * 32),
    Received("cmd_1234-abcd"),
    Results("b1", (CommandResult("cmd_1234-abcd", "executed", ""),)),
    Results("b2", (CommandResult("cmd_5678-abcd", "expired", "expired"),) * 2),
    Audit("1-2", (AuditEvent(1, '{"kind":"decision"}'), AuditEvent(2, "{}"))),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frames_round_trip_and_only_the_agent_reads_them(frame: Any) -> None:
    data = encode(frame)
    assert decode_from_server(data) == frame
    with pytest.raises(InvalidFrame):
        decode_from_agent(data)


@pytest.mark.parametrize("frame", AGENT_FRAMES, ids=lambda f: type(f).__name__)
def test_agent_frames_round_trip_and_only_the_server_reads_them(frame: Any) -> None:
    data = encode(frame)
    assert decode_from_agent(data) == frame
    with pytest.raises(InvalidFrame):
        decode_from_server(data)


@pytest.mark.parametrize(
    "value",
    [
        [16, 1, 2],  # not a map
        {0: 99, 1: 1},  # unknown type
        {0: "sync", 1: 1, 2: 2},  # the type is an integer
        {0: 16, 1: 1},  # a field missing
        {0: 16, 1: 1, 2: 2, 3: 3},  # a field too many
        {0: 16, 1: -1, 2: 0},  # a sequence out of range
        {0: 16, 1: True, 2: 0},  # a boolean is not an integer
        {0: 17, 1: b"short"},  # a nonce under 16 bytes
        {0: 18, 1: "short"},  # a command id under 8 characters
        {0: 18, 1: "bad id with spaces"},
        {0: 19, 1: "b1", 2: []},  # an empty batch
        {0: 19, 1: "b1", 2: [["cmd_1234-abcd", "done", ""]]},  # an unknown status
        {0: 19, 1: "b1", 2: [["cmd_1234-abcd", "failed", "x" * 257]]},  # detail too long
        {0: 19, 1: "b1", 2: [["cmd_1234-abcd", "failed", ""]] * 65},  # too many results
        {0: 20, 1: "1-2", 2: [[2, "{}"], [1, "{}"]]},  # out of order
        {0: 20, 1: "1-1", 2: [[1, "{}"], [1, "{}"]]},  # the same seq twice
        {0: 20, 1: "0-0", 2: [[0, "{}"]]},  # seq from 1
        {0: 20, 1: "1-1", 2: [[1, "[1, 2]"]]},  # an event is a JSON object
        {0: 20, 1: "1-1", 2: [[1, "{not json"]]},
        {0: 20, 1: "1-1", 2: [[1, "[" * 1000 + "]" * 1000]]},  # too deep for the JSON reader
        {0: 20, 1: "a b", 2: [[1, "{}"]]},  # a batch id of [A-Za-z0-9_-]
    ],
)
def test_malformed_agent_frames_are_refused(value: Any) -> None:
    with pytest.raises(InvalidFrame) as caught:
        decode_from_agent(cbor2.dumps(value))
    assert caught.value.reason is Reason.MALFORMED


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(InvalidFrame) as caught:
        decode_from_agent(b"\xa0" * (MAX_AGENT_FRAME_BYTES + 1))
    assert caught.value.reason is Reason.TOO_LARGE


def test_only_preferred_serialization() -> None:
    data = encode(Sync(7, 2))
    over_long = data.replace(b"\x01\x07", b"\x01\x18\x07")  # 7 with a one-byte head
    with pytest.raises(InvalidFrame):
        decode_from_agent(over_long)
    with pytest.raises(InvalidFrame):
        decode_from_agent(data + b"\x00")  # trailing bytes


cbor_leaves = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=20)
cbor_values = st.recursive(
    cbor_leaves | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers(-2, 25) | st.text(max_size=3), children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=cbor_values)
def test_any_cbor_either_decodes_or_is_invalid_frame(value: Any) -> None:
    data = cbor2.dumps(value)
    for decode in (decode_from_agent, decode_from_server):
        with contextlib.suppress(InvalidFrame):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(frame=st.sampled_from(SERVER_FRAMES + AGENT_FRAMES), data=st.data())
def test_mutated_frames_either_decode_or_are_invalid_frame(frame: Any, data: Any) -> None:
    raw = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw) - 1))
        raw[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for decode in (decode_from_agent, decode_from_server):
        with contextlib.suppress(InvalidFrame):
            decode(bytes(raw[:cut]))
