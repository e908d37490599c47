"""Frames over BLE: length-prefixed messages cut into MTU-sized chunks, and their reassembly.

A frame is ``length (4 bytes, big-endian) ‖ message``. It is cut into pieces of ``P`` bytes (the
last one shorter) and each piece travels as one chunk (one GATT write or notification) behind a
3-byte header: the frame's sequence number (1 byte, wrapping) and the piece's index (2 bytes,
big-endian). Sans-IO: chunks and ``now`` in, frames out.

The header is what lets a receiver recognise duplicated and late chunks without acks: a chunk of
an older frame is dropped, a chunk whose index it already holds is a duplicate (it must carry the
same bytes), and pieces are placed by index, so a retransmitted frame fills the holes that loss
left in the first copy. A frame received whole a second time is delivered as a ``repeat`` — the
peer did not hear our answer — and must be byte-identical to the first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ble_fallback.errors import BleReason, LocalProtocolError, RemoteProtocolError

HEADER_BYTES = 3
LENGTH_BYTES = 4
MIN_CHUNK = 20  # the BLE 4.0 default: ATT MTU 23 − 3
MAX_CHUNK = 514  # the largest ATT MTU, 517, − 3
MAX_PIECES = 1 << 16  # the index is 16 bits
SEQ_MODULUS = 256
_NEWER = SEQ_MODULUS // 2  # serial-number arithmetic (RFC 1982) over 8 bits


def chunk_size_for(mtu: int) -> int:
    """The chunk size for a negotiated ATT MTU: MTU − 3, at least 20, at most 514."""
    return min(MAX_CHUNK, max(MIN_CHUNK, mtu - 3))


def split_frame(seq: int, message: bytes, chunk_size: int) -> list[bytes]:
    """The chunks of one frame. Raises LocalProtocolError if it cannot be framed."""
    if not HEADER_BYTES < chunk_size <= MAX_CHUNK:
        raise LocalProtocolError(BleReason.BAD_CHUNK, f"chunk size {chunk_size}")
    if not 0 <= seq < SEQ_MODULUS:
        raise LocalProtocolError(BleReason.BAD_CHUNK, "sequence number out of range")
    frame = len(message).to_bytes(LENGTH_BYTES, "big") + message
    piece = chunk_size - HEADER_BYTES
    count = -(-len(frame) // piece)
    if not message or count > MAX_PIECES or len(message) >= 1 << 32:
        raise LocalProtocolError(BleReason.FRAME_TOO_LARGE, f"{len(message)} bytes")
    return [
        bytes([seq]) + i.to_bytes(2, "big") + frame[i * piece : (i + 1) * piece]
        for i in range(count)
    ]


class FrameWriter:
    """Numbers outgoing frames and keeps the last one, for retransmission."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self._seq = 0
        self._last: list[bytes] = []

    def write(self, message: bytes) -> list[bytes]:
        chunks = split_frame(self._seq, message, self.chunk_size)
        self._seq = (self._seq + 1) % SEQ_MODULUS
        self._last = chunks
        return list(chunks)

    def last(self) -> list[bytes]:
        """The chunks of the last frame written, to send again unchanged."""
        return list(self._last)


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    payload: bytes
    repeat: bool = False  # a second whole copy of the frame delivered last


@dataclass(slots=True)
class _Partial:
    """One frame being reassembled. ``total`` (length prefix + message) is None until known."""

    seq: int
    piece: int
    repeat: bool
    updated: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    count: int = 0

    def expected_size(self, index: int) -> int:
        assert self.total is not None
        return self.piece if index < self.count - 1 else self.total - (self.count - 1) * self.piece

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.pieces) == self.count

    def payload(self) -> bytes:
        return b"".join(self.pieces[i] for i in range(self.count))[LENGTH_BYTES:]


@dataclass(slots=True)
class ReaderStats:
    duplicates: int = 0  # chunks already held
    late: int = 0  # chunks of frames older than the last one delivered
    orphans: int = 0  # chunks whose frame start is missing, dropped unbuffered
    discarded: int = 0  # partial frames given up (a gap in time, or a newer frame began)


class FrameReader:
    """Reassembles frames from chunks. ``max_frame`` caps the message length; it is checked on
    the length prefix, before any piece after it is buffered. A partial frame with no chunk for
    longer than ``gap_timeout`` seconds is discarded."""

    def __init__(self, *, max_frame: int, gap_timeout: float) -> None:
        if max_frame < 1 or gap_timeout <= 0:
            raise ValueError("max_frame and gap_timeout must be positive")
        self.max_frame = max_frame
        self.gap_timeout = gap_timeout
        self.stats = ReaderStats()
        self._partial: _Partial | None = None
        self._last_seq: int | None = None
        self._last_digest = b""

    def receive(self, chunk: bytes, now: float) -> Frame | None:
        """Take one chunk; return the frame it completes, if any. Raises RemoteProtocolError."""
        if not isinstance(chunk, bytes | bytearray) or not HEADER_BYTES < len(chunk) <= MAX_CHUNK:
            raise RemoteProtocolError(BleReason.BAD_CHUNK, "chunk length")
        seq, index, body = chunk[0], int.from_bytes(chunk[1:3], "big"), bytes(chunk[3:])
        partial = self._partial
        if partial is not None and now - partial.updated > self.gap_timeout:
            self._discard()
            partial = None
        repeat = seq == self._last_seq
        if self._last_seq is not None and not repeat and not _newer(seq, self._last_seq):
            self.stats.late += 1
            return None
        if partial is not None and partial.seq != seq:
            if not _newer(seq, partial.seq):
                self.stats.late += 1
                return None
            self._discard()
            partial = None
        if partial is None:
            if index != 0:
                self.stats.orphans += 1
                return None
            length = int.from_bytes(body[:LENGTH_BYTES], "big")
            if len(body) == LENGTH_BYTES + length and 0 < length <= self.max_frame:
                return self._deliver(seq, body[LENGTH_BYTES:], repeat)  # a one-chunk frame
            partial = self._partial = _Partial(seq, len(body), repeat, now)
        self._add(partial, index, body)
        partial.updated = now
        if not partial.complete:
            return None
        self._partial = None
        return self._deliver(seq, partial.payload(), partial.repeat)

    def _deliver(self, seq: int, payload: bytes, repeat: bool) -> Frame:
        digest = hashlib.sha256(payload).digest()
        if repeat:
            if digest != self._last_digest:
                raise RemoteProtocolError(BleReason.SEQUENCE_REUSED, f"frame {seq} changed")
            return Frame(seq, payload, repeat=True)
        self._last_seq, self._last_digest = seq, digest
        return Frame(seq, payload)

    def _discard(self) -> None:
        self.stats.discarded += 1
        self._partial = None

    def _add(self, partial: _Partial, index: int, body: bytes) -> None:
        if partial.total is not None:
            if index >= partial.count or len(body) != partial.expected_size(index):
                raise RemoteProtocolError(BleReason.BAD_CHUNK, f"piece {index}")
        elif index * partial.piece >= LENGTH_BYTES:
            # Beyond the length prefix, which is still incomplete: the cap has not been checked,
            # so nothing is buffered. Only pieces under 4 bytes can get here.
            self.stats.orphans += 1
            return
        elif len(body) > partial.piece:
            raise RemoteProtocolError(BleReason.BAD_CHUNK, f"piece {index} too long")
        held = partial.pieces.get(index)
        if held is not None:
            if held != body:
                raise RemoteProtocolError(BleReason.SEQUENCE_REUSED, f"piece {index} changed")
            self.stats.duplicates += 1
            return
        partial.pieces[index] = body
        if partial.total is None:
            self._read_length(partial)

    def _read_length(self, partial: _Partial) -> None:
        needed = -(-LENGTH_BYTES // partial.piece)
        if any(i not in partial.pieces for i in range(needed)):
            return
        prefix = b"".join(partial.pieces[i] for i in range(needed))
        if len(prefix) < LENGTH_BYTES:
            raise RemoteProtocolError(BleReason.BAD_CHUNK, "frame shorter than its prefix")
        length = int.from_bytes(prefix[:LENGTH_BYTES], "big")
        if length == 0:
            raise RemoteProtocolError(BleReason.BAD_CHUNK, "empty frame")
        if length > self.max_frame:
            raise RemoteProtocolError(BleReason.FRAME_TOO_LARGE, f"{length} > {self.max_frame}")
        partial.total = length + LENGTH_BYTES
        partial.count = -(-partial.total // partial.piece)
        if partial.count > MAX_PIECES:
            raise RemoteProtocolError(BleReason.BAD_CHUNK, "too many pieces")
        for index, body in partial.pieces.items():
            if index >= partial.count or len(body) != partial.expected_size(index):
                raise RemoteProtocolError(BleReason.BAD_CHUNK, f"piece {index}")


def _newer(seq: int, than: int) -> bool:
    return 0 < (seq - than) % SEQ_MODULUS < _NEWER
