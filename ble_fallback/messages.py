"""The messages of the BLE protocol: CBOR maps with small integer keys, decoded strictly.

Key 1 is always the message type. Decoding reuses keycore's strict CBOR rules (one item in
preferred serialization, no duplicate keys, no unknown or missing keys, every value typed and
bounded) and raises RemoteProtocolError — the bytes always come from the peer; a
MalformedMessage when the type was read but the rest was not, so the car can answer the phone
``malformed`` instead of ending the session. Specified, with test vectors, in docs/protocol.md,
"BLE protocol".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ble_fallback.errors import BleReason, MalformedMessage, RemoteProtocolError
from keycore.encoding import as_bytes, as_int, as_map, dumps, loads_strict
from keycore.errors import KeycoreError, Reason
from keycore.proof import CHALLENGE_BYTES
from keycore.revocation import MAX_REVOCATION_BYTES
from keycore.roles import Action
from keycore.timekeeping import MAX_SIGNED_TIME_BYTES
from keycore.token import MAX_TIME, MAX_TOKEN_BYTES
from keycore.trust import MAX_SEQUENCE, MAX_TRUST_UPDATE_BYTES

TIME_NONCE_BYTES = 16
PROOF_BYTES = 64
MAX_RETRY_AFTER_MS = 600_000
#: The largest message: a revocation list at its cap, with the map around it.
MAX_MESSAGE_BYTES = MAX_REVOCATION_BYTES + 16
#: The largest message a car sends (a Result is about 100 bytes).
MAX_CAR_MESSAGE_BYTES = 512

GRANTED, APPLIED, LATE = "granted", "applied", "late"
#: The car could not read the phone's message (or, from ``decide``, its token): nothing ran.
MALFORMED = Reason.MALFORMED.value
#: Every code a Result may carry: an outcome, "late" (the answer missed its deadline), or a
#: keycore reason code.
RESULT_CODES = frozenset({GRANTED, APPLIED, LATE} | {r.value for r in Reason})

K_TYPE = 1
# Challenge and Result
K_NONCE, K_TIME_NONCE, K_TIME, K_REVOCATION_SEQ, K_TRUST_SEQ, K_CLOCK_RESET = 2, 3, 4, 5, 6, 7
K_SUBJECT, K_CODE, K_ACTION = 8, 9, 10  # Result only
# UnlockRequest
K_TOKEN, K_REQUEST_ACTION, K_PROOF = 2, 3, 4
# Busy, and the courier messages
K_RETRY_AFTER_MS = 2
K_DOCUMENT = 2


class MessageType(IntEnum):
    CHALLENGE = 1  # car → phone
    UNLOCK_REQUEST = 2  # phone → car
    RESULT = 3  # car → phone
    BUSY = 4  # car → phone
    REVOCATION_LIST = 5  # phone → car (courier)
    TRUST_UPDATE = 6  # phone → car (courier)
    TIME_ANSWER = 7  # phone → car (courier)


@dataclass(frozen=True, slots=True)
class CarStatus:
    """What the car knows: its trusted time (seconds) and the sequences of its documents."""

    trusted_time: int
    revocation_sequence: int
    trust_sequence: int
    clock_reset: bool


@dataclass(frozen=True, slots=True)
class Challenge:
    """Sent by the car on connect. ``time_nonce`` is its standing request for signed time."""

    nonce: bytes
    time_nonce: bytes
    status: CarStatus


@dataclass(frozen=True, slots=True)
class UnlockRequest:
    """The phone's command; the proof answers the car's latest challenge (not repeated here)."""

    token: bytes
    action: Action
    proof: bytes


@dataclass(frozen=True, slots=True)
class Result:
    """The car's answer to any phone message, with a fresh challenge for the next one."""

    subject: MessageType
    code: str
    action: Action | None
    nonce: bytes
    time_nonce: bytes
    status: CarStatus

    @property
    def ok(self) -> bool:
        return self.code in (GRANTED, APPLIED)


@dataclass(frozen=True, slots=True)
class Busy:
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class RevocationList:
    document: bytes


@dataclass(frozen=True, slots=True)
class TrustUpdate:
    document: bytes


@dataclass(frozen=True, slots=True)
class TimeAnswer:
    document: bytes


Message = Challenge | UnlockRequest | Result | Busy | RevocationList | TrustUpdate | TimeAnswer
Courier = RevocationList | TrustUpdate | TimeAnswer

_TYPES: dict[type[Any], MessageType] = {
    Challenge: MessageType.CHALLENGE,
    UnlockRequest: MessageType.UNLOCK_REQUEST,
    Result: MessageType.RESULT,
    Busy: MessageType.BUSY,
    RevocationList: MessageType.REVOCATION_LIST,
    TrustUpdate: MessageType.TRUST_UPDATE,
    TimeAnswer: MessageType.TIME_ANSWER,
}
_DOCUMENT_CAPS: dict[MessageType, tuple[type[Courier], int]] = {
    MessageType.REVOCATION_LIST: (RevocationList, MAX_REVOCATION_BYTES),
    MessageType.TRUST_UPDATE: (TrustUpdate, MAX_TRUST_UPDATE_BYTES),
    MessageType.TIME_ANSWER: (TimeAnswer, MAX_SIGNED_TIME_BYTES),
}
_STATUS_KEYS = {K_TYPE, K_NONCE, K_TIME_NONCE, K_TIME, K_REVOCATION_SEQ, K_TRUST_SEQ, K_CLOCK_RESET}
_RESULT_KEYS = _STATUS_KEYS | {K_SUBJECT, K_CODE, K_ACTION}
_RESULT_REQUIRED = _RESULT_KEYS - {K_ACTION}
_REQUEST_KEYS = {K_TYPE, K_TOKEN, K_REQUEST_ACTION, K_PROOF}
_BUSY_KEYS = {K_TYPE, K_RETRY_AFTER_MS}
_DOCUMENT_KEYS = {K_TYPE, K_DOCUMENT}
# Plain lookups: decoding runs for every message, and Enum(value) calls are slow.
_BY_NUMBER = {int(m): m for m in MessageType}
_ACTIONS = tuple(Action)


def message_type(message: Message) -> MessageType:
    return _TYPES[type(message)]


def encode(message: Message) -> bytes:
    """The message's CBOR bytes, keys in the order of the specification."""
    body: dict[int, Any] = {K_TYPE: int(message_type(message))}
    if isinstance(message, Challenge | Result):
        body.update(_status_fields(message.nonce, message.time_nonce, message.status))
        if isinstance(message, Result):
            body[K_SUBJECT] = int(message.subject)
            body[K_CODE] = message.code
            if message.action is not None:
                body[K_ACTION] = int(message.action)
    elif isinstance(message, UnlockRequest):
        body.update({K_TOKEN: message.token, K_REQUEST_ACTION: int(message.action)})
        body[K_PROOF] = message.proof
    elif isinstance(message, Busy):
        body[K_RETRY_AFTER_MS] = message.retry_after_ms
    else:
        body[K_DOCUMENT] = message.document
    return dumps(body)


def _status_fields(nonce: bytes, time_nonce: bytes, status: CarStatus) -> dict[int, Any]:
    return {
        K_NONCE: nonce,
        K_TIME_NONCE: time_nonce,
        K_TIME: status.trusted_time,
        K_REVOCATION_SEQ: status.revocation_sequence,
        K_TRUST_SEQ: status.trust_sequence,
        K_CLOCK_RESET: status.clock_reset,
    }


# keycore's decoding helpers raise the KeycoreError type they are given: keycore's own base here
# (only they raise inside decode), mapped to this package's errors at the boundary below.
_Malformed = KeycoreError


def decode(data: bytes, *, max_size: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode one message; raises RemoteProtocolError (``too_large`` or ``malformed``), and
    MalformedMessage when ``data`` is one CBOR map of a known type whose fields are wrong."""
    try:
        value = loads_strict(data, _Malformed, max_size=max_size)
        if not isinstance(value, dict) or K_TYPE not in value:
            raise _Malformed(Reason.MALFORMED, "not a message")
        kind = _BY_NUMBER[as_int(value[K_TYPE], _Malformed, 1, len(MessageType))]
    except _Malformed as error:
        too_large = error.reason is Reason.TOO_LARGE
        reason = BleReason.TOO_LARGE if too_large else BleReason.MALFORMED
        raise RemoteProtocolError(reason, error.detail) from None
    try:
        return _message(kind, value)
    except _Malformed as error:  # the size was checked above: only fields are left to fail
        raise MalformedMessage(int(kind), error.detail) from None


def _message(kind: MessageType, value: dict[Any, Any]) -> Message:
    err = _Malformed
    if kind is MessageType.CHALLENGE:
        body = as_map(value, err, _STATUS_KEYS, _STATUS_KEYS)
        return Challenge(*_status(body))
    if kind is MessageType.RESULT:
        return _result(as_map(value, err, _RESULT_KEYS, _RESULT_REQUIRED))
    if kind is MessageType.UNLOCK_REQUEST:
        body = as_map(value, err, _REQUEST_KEYS, _REQUEST_KEYS)
        return UnlockRequest(
            as_bytes(body[K_TOKEN], err, 1, MAX_TOKEN_BYTES),
            _action(body[K_REQUEST_ACTION]),
            as_bytes(body[K_PROOF], err, PROOF_BYTES, PROOF_BYTES),
        )
    if kind is MessageType.BUSY:
        body = as_map(value, err, _BUSY_KEYS, _BUSY_KEYS)
        return Busy(as_int(body[K_RETRY_AFTER_MS], err, 0, MAX_RETRY_AFTER_MS))
    cls, cap = _DOCUMENT_CAPS[kind]
    body = as_map(value, err, _DOCUMENT_KEYS, _DOCUMENT_KEYS)
    return cls(as_bytes(body[K_DOCUMENT], err, 1, cap))


def _status(body: dict[Any, Any]) -> tuple[bytes, bytes, CarStatus]:
    err = _Malformed
    reset = body[K_CLOCK_RESET]
    if type(reset) is not bool:
        raise err(Reason.MALFORMED, "clock_reset must be a boolean")
    status = CarStatus(
        as_int(body[K_TIME], err, 0, MAX_TIME),
        as_int(body[K_REVOCATION_SEQ], err, 0, MAX_SEQUENCE),
        as_int(body[K_TRUST_SEQ], err, 0, MAX_SEQUENCE),
        reset,
    )
    return (
        as_bytes(body[K_NONCE], err, CHALLENGE_BYTES, CHALLENGE_BYTES),
        as_bytes(body[K_TIME_NONCE], err, TIME_NONCE_BYTES, TIME_NONCE_BYTES),
        status,
    )


def _result(body: dict[Any, Any]) -> Result:
    err = _Malformed
    nonce, time_nonce, status = _status(body)
    subject = _BY_NUMBER[as_int(body[K_SUBJECT], err, 1, len(MessageType))]
    code = body[K_CODE]
    if type(code) is not str or code not in RESULT_CODES:
        raise err(Reason.MALFORMED, "unknown result code")
    is_unlock = subject is MessageType.UNLOCK_REQUEST
    if subject not in _DOCUMENT_CAPS and not is_unlock:
        raise err(Reason.MALFORMED, "a Result answers a phone message")
    if code in ((APPLIED,) if is_unlock else (GRANTED, LATE)):
        raise err(Reason.MALFORMED, "result code does not fit the subject")
    # A request the car could not read has no action it could name: ``malformed`` may omit it.
    if K_ACTION in body and not is_unlock:
        raise err(Reason.MALFORMED, "an action is given only for an unlock request")
    if is_unlock and K_ACTION not in body and code != MALFORMED:
        raise err(Reason.MALFORMED, "an unlock result names its action")
    action = _action(body[K_ACTION]) if K_ACTION in body else None
    return Result(subject, code, action, nonce, time_nonce, status)


def _action(value: object) -> Action:
    return _ACTIONS[as_int(value, _Malformed, 0, len(Action) - 1)]
