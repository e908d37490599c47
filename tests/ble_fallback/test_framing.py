"""Framing: chunking any frame at any chunk size, and reassembly under duplicates, lateness,
gaps and hostile chunks — always the sent frames, or a clean RemoteProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ble_fallback.errors import BleReason, LocalProtocolError, RemoteProtocolError
from ble_fallback.framing import (
    HEADER_BYTES,
    MAX_CHUNK,
    MIN_CHUNK,
    Frame,
    FrameReader,
    FrameWriter,
    chunk_size_for,
    split_frame,
)

CAP = 4096


def reader(cap: int = CAP, gap: float = 1.0) -> FrameReader:
    return FrameReader(max_frame=cap, gap_timeout=gap)


def feed(r: FrameReader, chunks: list[bytes], now: float = 0.0) -> list[Frame]:
    frames = []
    for chunk in chunks:
        frame = r.receive(chunk, now)
        if frame is not None:
            frames.append(frame)
    return frames


messages = st.lists(st.binary(min_size=1, max_size=700), min_size=1, max_size=12)
#: Any chunk size a sender may pick: 1 payload byte up to the largest MTU.
chunk_sizes = st.integers(min_value=HEADER_BYTES + 1, max_value=MAX_CHUNK)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Frames chunked at a random size per frame, then copies of any chunk re-delivered at
    any later point (duplicates, and late chunks of frames already complete)."""
    payloads = draw(messages)
    stream: list[bytes] = []
    for seq, payload in enumerate(payloads):
        stream.extend(split_frame(seq % 256, payload, draw(chunk_sizes)))
    extra = draw(st.lists(st.tuples(st.integers(0, len(stream) - 1), st.integers(0, 10**6))))
    delivered = list(stream)
    for source, where in sorted(extra, key=lambda e: e[0], reverse=True):
        # a copy of chunk ``source`` lands somewhere after its first delivery
        position = source + 1 + where % (len(delivered) - source)
        delivered.insert(position, stream[source])
    return payloads, delivered


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_duplicates_and_late_chunks_reassemble_to_the_same_frames(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    payloads, delivered = case
    frames = feed(reader(), delivered)
    assert [f.payload for f in frames if not f.repeat] == payloads
    by_seq = {i % 256: p for i, p in enumerate(payloads)}
    assert all(f.payload == by_seq[f.seq] for f in frames if f.repeat)


@settings(max_examples=300, deadline=None)
@given(messages, chunk_sizes, st.data())
def test_hostile_chunks_give_a_subset_of_frames_or_a_protocol_error(
    payloads: list[bytes], size: int, data: st.DataObject
) -> None:
    stream = [c for seq, p in enumerate(payloads) for c in split_frame(seq, p, size)]
    mutated = data.draw(
        st.lists(
            st.one_of(
                st.sampled_from(stream),
                st.binary(max_size=MAX_CHUNK + 2),
                st.sampled_from(stream).map(lambda c: c[:-1]),
                st.sampled_from(stream).map(lambda c: c + b"\x00"),
            ),
            max_size=60,
        )
    )
    r = reader()
    try:
        frames = feed(r, mutated)
    except RemoteProtocolError:
        return
    for frame in frames:
        assert 1 <= len(frame.payload) <= CAP


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), chunk_sizes, st.data())
def test_a_retransmission_fills_the_holes_loss_left(
    payload: bytes, size: int, data: st.DataObject
) -> None:
    chunks = split_frame(7, payload, size)
    lost = data.draw(st.sets(st.integers(0, len(chunks) - 1)))
    r = reader(gap=10.0)
    first = feed(r, [c for i, c in enumerate(chunks) if i not in lost])
    second = feed(r, chunks, now=1.0)
    assert [f.payload for f in first + second if not f.repeat] == [payload]


def test_chunk_size_is_mtu_minus_3_with_a_20_byte_floor() -> None:
    assert chunk_size_for(23) == MIN_CHUNK == 20
    assert chunk_size_for(10) == 20
    assert chunk_size_for(185) == 182
    assert chunk_size_for(1000) == MAX_CHUNK


def test_header_is_sequence_and_index_and_the_first_piece_starts_with_the_length() -> None:
    chunks = split_frame(5, bytes(range(40)), 20)
    assert [c[:3] for c in chunks] == [b"\x05\x00\x00", b"\x05\x00\x01", b"\x05\x00\x02"]
    assert chunks[0][3:7] == (40).to_bytes(4, "big")
    assert b"".join(c[3:] for c in chunks) == (40).to_bytes(4, "big") + bytes(range(40))
    assert all(len(c) <= 20 for c in chunks)


def test_the_cap_is_checked_on_the_length_prefix_before_buffering() -> None:
    chunks = split_frame(0, bytes(CAP + 1), 182)
    r = reader()
    with pytest.raises(RemoteProtocolError) as caught:
        r.receive(chunks[0], 0.0)
    assert caught.value.reason is BleReason.FRAME_TOO_LARGE
    # A lying prefix (claims 2^32 − 1 bytes) in the very first chunk: refused at once.
    with pytest.raises(RemoteProtocolError):
        reader().receive(b"\x00\x00\x00\xff\xff\xff\xff" + bytes(13), 0.0)


def test_a_length_split_over_tiny_pieces_is_checked_before_anything_after_it() -> None:
    chunks = split_frame(0, bytes(CAP + 1), HEADER_BYTES + 1)  # 1-byte pieces
    r = reader()
    for chunk in chunks[:3]:
        assert r.receive(chunk, 0.0) is None
    with pytest.raises(RemoteProtocolError) as caught:
        r.receive(chunks[3], 0.0)
    assert caught.value.reason is BleReason.FRAME_TOO_LARGE


def test_a_partial_frame_is_discarded_after_a_gap_in_time() -> None:
    chunks = split_frame(0, bytes(100), 20)
    r = reader(gap=0.5)
    feed(r, chunks[:3], now=0.0)
    assert feed(r, chunks[3:], now=0.6) == []  # the start was discarded: these are orphans
    assert r.stats.discarded == 1
    assert r.stats.orphans == len(chunks) - 3
    assert [f.payload for f in feed(r, chunks, now=0.7)] == [bytes(100)]


def test_a_newer_frame_abandons_a_partial_one_and_older_chunks_are_late() -> None:
    first, second = split_frame(0, b"a" * 50, 20), split_frame(1, b"b" * 50, 20)
    r = reader()
    feed(r, first[:2])
    assert [f.payload for f in feed(r, second)] == [b"b" * 50]
    assert feed(r, first) == []
    assert r.stats.discarded == 1
    assert r.stats.late == len(first)


def test_a_whole_second_copy_is_a_repeat_and_must_be_identical() -> None:
    r = reader()
    original = split_frame(3, b"hello", 20)
    assert feed(r, original) == [Frame(3, b"hello")]
    assert feed(r, original) == [Frame(3, b"hello", repeat=True)]
    with pytest.raises(RemoteProtocolError) as caught:
        feed(r, split_frame(3, b"jello", 20))
    assert caught.value.reason is BleReason.SEQUENCE_REUSED


def test_a_duplicate_piece_with_other_bytes_is_a_protocol_error() -> None:
    chunks = split_frame(0, bytes(60), 20)
    r = reader()
    feed(r, chunks[:2])
    with pytest.raises(RemoteProtocolError) as caught:
        r.receive(chunks[1][:-1] + b"\x01", 0.0)
    assert caught.value.reason is BleReason.SEQUENCE_REUSED


@pytest.mark.parametrize(
    "chunk",
    [
        b"",
        b"\x00\x00\x00",  # a header and nothing
        bytes(MAX_CHUNK + 1),
        b"\x00\x00\x00\x00\x00\x00\x00",  # a zero length prefix
        b"\x00\x00\x00\x00\x00\x00\x02abc",  # a piece longer than the frame it announces
    ],
)
def test_bad_chunks_are_refused(chunk: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        reader().receive(chunk, 0.0)


def test_writer_numbers_frames_and_keeps_the_last_for_retransmission() -> None:
    w = FrameWriter(20)
    first = w.write(b"one")
    second = w.write(b"two")
    assert first[0][0] == 0
    assert second[0][0] == 1
    assert w.last() == second
    with pytest.raises(LocalProtocolError):
        w.write(b"")
    with pytest.raises(LocalProtocolError):
        split_frame(0, b"x", HEADER_BYTES)
