"""Frames of the cloud↔car channel (docs/protocol.md §17): sans-IO, bytes in, frames out.

Each WebSocket binary message is one CBOR map with integer keys; key 0 is the frame type. The
keyserver and the vehicle agent both speak through this module, so there is one reading of every
frame. Decoding is strict (keycore.encoding.loads_strict) and size-bounded before parsing, and a
side accepts only the frame types the other side may send: anything else is ``InvalidFrame``.
The signed documents frames carry (revocation lists, trust updates, signed time, commands) are
verified by their own keycore readers, not here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from keycore.command import MAX_COMMAND_BYTES
from keycore.encoding import as_bytes, as_int, as_list, as_map, dumps, loads_strict
from keycore.errors import InvalidFrame, Reason
from keycore.revocation import MAX_REVOCATION_BYTES
from keycore.timekeeping import MAX_SIGNED_TIME_BYTES, NONCE_MAX, NONCE_MIN
from keycore.token import MAX_TIME
from keycore.trust import MAX_SEQUENCE, MAX_TRUST_UPDATE_BYTES

#: Largest frame either side reads: a server frame may carry a full revocation list.
MAX_SERVER_FRAME_BYTES = MAX_REVOCATION_BYTES + 1024
MAX_AGENT_FRAME_BYTES = 64 * 1024
MAX_RESULTS = 64  # command results per batch
MAX_AUDIT_EVENTS = 100  # audit events per batch
MAX_EVENT_CHARS = 2048  # one audit event, JSON text
MAX_DETAIL_CHARS = 256
RESULT_STATUSES = ("executed", "failed", "expired")

# WebSocket close codes (RFC 6455 §7.4) and what each side means by them
CLOSE_GOING_AWAY = 1001  # the keyserver shuts down: reconnect elsewhere, with jitter
CLOSE_UNSUPPORTED = 1003  # a text message
CLOSE_POLICY = 1008  # a malformed or unexpected frame
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013  # a dependency failed, or the car's outbox overflowed: reconnect later
CLOSE_SUPERSEDED = 4000  # the same car connected again; this older connection ends

# The upgrade refused with a slot (docs/protocol.md §17.2): 429, this code in the JSON body and in
# this header (a WebSocket client does not read a refused upgrade's body), and Retry-After.
REFUSAL_HEADER = "PK-Refusal"
RECONNECT_PACED = "reconnect_paced"

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
T = 0  # the type key of every frame


@dataclass(frozen=True, slots=True)
class Hello:
    """Server → agent, first frame: the server's time and where the car's documents stand."""

    TYPE: ClassVar[int] = 1
    server_time: int
    revocation_sequence: int
    trust_sequence: int


@dataclass(frozen=True, slots=True)
class Revocations:
    """Server → agent: a signed revocation list (a delta from the car's sequence, or full)."""

    TYPE: ClassVar[int] = 2
    document: bytes


@dataclass(frozen=True, slots=True)
class Trust:
    """Server → agent: a root-signed trust-store update."""

    TYPE: ClassVar[int] = 3
    document: bytes


@dataclass(frozen=True, slots=True)
class TimeAnswer:
    """Server → agent: a signed time answer to the car's nonce."""

    TYPE: ClassVar[int] = 4
    nonce: bytes
    answer: bytes


@dataclass(frozen=True, slots=True)
class CommandPush:
    """Server → agent: a signed remote command; ``command_id`` names it for acknowledgements."""

    TYPE: ClassVar[int] = 5
    command_id: str
    document: bytes


@dataclass(frozen=True, slots=True)
class ResultsAck:
    TYPE: ClassVar[int] = 6
    batch_id: str


@dataclass(frozen=True, slots=True)
class AuditAck:
    TYPE: ClassVar[int] = 7
    batch_id: str


@dataclass(frozen=True, slots=True)
class Sync:
    """Agent → server, after Hello: the sequences the car holds."""

    TYPE: ClassVar[int] = 16
    revocation_sequence: int
    trust_sequence: int


@dataclass(frozen=True, slots=True)
class TimeRequest:
    TYPE: ClassVar[int] = 17
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """Agent → server: the car has the command (the server marks it delivered)."""

    TYPE: ClassVar[int] = 18
    command_id: str


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    status: str  # one of RESULT_STATUSES
    detail: str


@dataclass(frozen=True, slots=True)
class Results:
    """Agent → server: command outcomes, idempotent (a result for a finished command is a no-op)."""

    TYPE: ClassVar[int] = 19
    batch_id: str
    results: tuple[CommandResult, ...]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int  # the car's own sequence number: the server stores each (car, seq) once
    event: str  # a JSON object


@dataclass(frozen=True, slots=True)
class Audit:
    """Agent → server: audit events in the car's order, idempotent."""

    TYPE: ClassVar[int] = 20
    batch_id: str
    events: tuple[AuditEvent, ...]


ServerFrame = Hello | Revocations | Trust | TimeAnswer | CommandPush | ResultsAck | AuditAck
AgentFrame = Sync | TimeRequest | Received | Results | Audit
Frame = ServerFrame | AgentFrame


def encode(frame: Frame) -> bytes:
    """The frame's bytes. Builders trust their own values; the reader checks everything."""
    body: dict[int, Any]
    match frame:
        case Hello():
            body = {1: frame.server_time, 2: frame.revocation_sequence, 3: frame.trust_sequence}
        case Revocations() | Trust():
            body = {1: frame.document}
        case TimeAnswer():
            body = {1: frame.nonce, 2: frame.answer}
        case CommandPush():
            body = {1: frame.command_id, 2: frame.document}
        case ResultsAck() | AuditAck():
            body = {1: frame.batch_id}
        case Sync():
            body = {1: frame.revocation_sequence, 2: frame.trust_sequence}
        case TimeRequest():
            body = {1: frame.nonce}
        case Received():
            body = {1: frame.command_id}
        case Results():
            results = [[r.command_id, r.status, r.detail] for r in frame.results]
            body = {1: frame.batch_id, 2: results}
        case Audit():
            body = {1: frame.batch_id, 2: [[e.seq, e.event] for e in frame.events]}
    return dumps({T: frame.TYPE, **body})


def decode_from_server(data: bytes) -> ServerFrame:
    """A frame the keyserver sent (the agent's reader); raises InvalidFrame."""
    frame: ServerFrame = _decode(data, _SERVER_READERS, MAX_SERVER_FRAME_BYTES)
    return frame


def decode_from_agent(data: bytes) -> AgentFrame:
    """A frame a car sent (the keyserver's reader); raises InvalidFrame."""
    frame: AgentFrame = _decode(data, _AGENT_READERS, MAX_AGENT_FRAME_BYTES)
    return frame


_Err = InvalidFrame


def _decode(data: bytes, readers: Mapping[int, _Reader], max_size: int) -> Any:
    value = loads_strict(data, _Err, max_size=max_size)
    if not isinstance(value, dict):
        raise _Err(Reason.MALFORMED, "a frame is a map")
    kind = value.get(T)
    if type(kind) is not int or kind not in readers:
        raise _Err(Reason.MALFORMED, "unknown frame type for this direction")
    keys, read = readers[kind]
    body = as_map(value, _Err, keys | {T}, keys | {T})
    return read(body)


def _text(value: object, pattern: re.Pattern[str], what: str) -> str:
    if type(value) is not str or not pattern.fullmatch(value):
        raise _Err(Reason.MALFORMED, what)
    return value


def _bounded_text(value: object, limit: int, what: str) -> str:
    if type(value) is not str or len(value) > limit:
        raise _Err(Reason.MALFORMED, what)
    return value


def _sequence(value: object) -> int:
    return as_int(value, _Err, 0, MAX_SEQUENCE)


def _document(value: object, limit: int) -> bytes:
    return as_bytes(value, _Err, 1, limit)


def _result(item: object) -> CommandResult:
    command_id, status, detail = as_list(item, _Err, 3, 3)
    if status not in RESULT_STATUSES:
        raise _Err(Reason.MALFORMED, "result status")
    return CommandResult(
        _text(command_id, _COMMAND_ID, "command id"),
        status,
        _bounded_text(detail, MAX_DETAIL_CHARS, "result detail"),
    )


def _event(item: object) -> AuditEvent:
    seq, event = as_list(item, _Err, 2, 2)
    text = _bounded_text(event, MAX_EVENT_CHARS, "audit event")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise _Err(Reason.MALFORMED, "an audit event is a JSON object")
    return AuditEvent(as_int(seq, _Err, 1, MAX_SEQUENCE), text)


def _results(body: dict[int, Any]) -> Results:
    items = as_list(body[2], _Err, 1, MAX_RESULTS)
    return Results(_text(body[1], _ID, "batch id"), tuple(_result(item) for item in items))


def _audit(body: dict[int, Any]) -> Audit:
    events = tuple(_event(item) for item in as_list(body[2], _Err, 1, MAX_AUDIT_EVENTS))
    seqs = [e.seq for e in events]
    if seqs != sorted(set(seqs)):
        raise _Err(Reason.MALFORMED, "audit events in increasing seq order, each once")
    return Audit(_text(body[1], _ID, "batch id"), events)


_Reader = tuple[set[int], Callable[[dict[int, Any]], Any]]
_ONE, _TWO, _THREE = {1}, {1, 2}, {1, 2, 3}

_SERVER_READERS: dict[int, _Reader] = {
    Hello.TYPE: (
        _THREE,
        lambda b: Hello(as_int(b[1], _Err, 0, MAX_TIME), _sequence(b[2]), _sequence(b[3])),
    ),
    Revocations.TYPE: (_ONE, lambda b: Revocations(_document(b[1], MAX_REVOCATION_BYTES))),
    Trust.TYPE: (_ONE, lambda b: Trust(_document(b[1], MAX_TRUST_UPDATE_BYTES))),
    TimeAnswer.TYPE: (
        _TWO,
        lambda b: TimeAnswer(
            as_bytes(b[1], _Err, NONCE_MIN, NONCE_MAX), _document(b[2], MAX_SIGNED_TIME_BYTES)
        ),
    ),
    CommandPush.TYPE: (
        _TWO,
        lambda b: CommandPush(
            _text(b[1], _COMMAND_ID, "command id"), _document(b[2], MAX_COMMAND_BYTES)
        ),
    ),
    ResultsAck.TYPE: (_ONE, lambda b: ResultsAck(_text(b[1], _ID, "batch id"))),
    AuditAck.TYPE: (_ONE, lambda b: AuditAck(_text(b[1], _ID, "batch id"))),
}

_AGENT_READERS: dict[int, _Reader] = {
    Sync.TYPE: (_TWO, lambda b: Sync(_sequence(b[1]), _sequence(b[2]))),
    TimeRequest.TYPE: (_ONE, lambda b: TimeRequest(as_bytes(b[1], _Err, NONCE_MIN, NONCE_MAX))),
    Received.TYPE: (_ONE, lambda b: Received(_text(b[1], _COMMAND_ID, "command id"))),
    Results.TYPE: (_TWO, _results),
    Audit.TYPE: (_TWO, _audit),
}
