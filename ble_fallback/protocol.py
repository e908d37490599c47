"""The BLE protocol's two state machines, sans-IO: chunks and ``now`` in, events and chunks out.

``CarSession`` serves one phone connection: it sends a Challenge on ``start``, then answers every
phone message with one Result, deciding unlock requests with keycore and applying courier
documents to the car's state; a phone message it cannot read is answered ``malformed``.
``PhoneSession`` is the other end. No I/O and no clock: ``now`` is the caller's monotonic time in
seconds. Retransmission is the caller's timer calling ``retransmit()``; a repeated request is
answered from the cached reply, never executed twice.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ble_fallback.errors import (
    BleError,
    BleReason,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
)
from ble_fallback.framing import MIN_CHUNK, Frame, FrameReader, FrameWriter
from ble_fallback.messages import (
    APPLIED,
    LATE,
    MALFORMED,
    MAX_CAR_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    TIME_NONCE_BYTES,
    Busy,
    CarStatus,
    Challenge,
    Courier,
    MessageType,
    Result,
    RevocationList,
    TimeAnswer,
    TrustUpdate,
    UnlockRequest,
    decode,
    encode,
    message_type,
)
from keycore import ChallengeBook, RevocationState, TrustedClock, TrustStore, decide
from keycore import UnlockRequest as DecisionRequest
from keycore.decision import UnlockDecision
from keycore.errors import InvalidProof, KeycoreError
from keycore.roles import Action

#: The messages a phone sends, by type number: the ones a car answers with a Result.
_PHONE_MESSAGES = {
    int(kind): kind
    for kind in (
        MessageType.UNLOCK_REQUEST,
        MessageType.REVOCATION_LIST,
        MessageType.TRUST_UPDATE,
        MessageType.TIME_ANSWER,
    )
}


class SessionState(Enum):
    NEW = "new"  # car: not started
    CONNECTING = "connecting"  # phone: waiting for the car's Challenge (or Busy)
    READY = "ready"  # phone: holds a challenge and may send; car: waiting for the phone
    WAITING = "waiting"  # phone: sent a message, waiting for its Result
    CLOSED = "closed"
    FAILED = "failed"  # a protocol error ended the session


@dataclass(frozen=True, slots=True)
class NeedData:
    """``next_event()`` has nothing until more chunks arrive."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class ChallengeReceived:
    challenge: Challenge


@dataclass(frozen=True, slots=True)
class ResultReceived:
    result: Result


@dataclass(frozen=True, slots=True)
class BusyReceived:
    busy: Busy


@dataclass(frozen=True, slots=True)
class RequestHandled:
    """The car answered an unlock request; actuate only if ``decision`` allows it."""

    action: Action
    code: str
    decision: UnlockDecision | None  # None when refused before deciding (``late``)

    @property
    def allowed(self) -> bool:
        return self.decision is not None and self.decision.allowed


@dataclass(frozen=True, slots=True)
class CourierHandled:
    kind: MessageType
    code: str  # "applied" or the keycore reason it was refused with (stale, bad_signature …)


@dataclass(frozen=True, slots=True)
class RequestMalformed:
    """A well-framed phone message of a known type the car could not read (a DER-encoded proof,
    a wrong-typed field): answered ``malformed``, nothing decided or applied, nothing to actuate."""

    kind: MessageType
    code: str = MALFORMED


@dataclass(frozen=True, slots=True)
class ReplyRepeated:
    """The phone sent its last frame again: the cached reply went out again, nothing ran."""

    seq: int


PhoneEvent = ChallengeReceived | ResultReceived | BusyReceived
CarEvent = RequestHandled | CourierHandled | RequestMalformed | ReplyRepeated


@dataclass(slots=True)
class CarState:
    """One car's local state, shared by all its sessions; the keycore values are replaced."""

    vin: str
    trust: TrustStore
    revocations: RevocationState
    clock: TrustedClock
    challenges: ChallengeBook

    def decide(self, request: DecisionRequest, *, mono: float) -> UnlockDecision:
        """The car's one unlock decision, whatever brought the request: keycore's ``decide`` over
        this state at monotonic time ``mono``; a grant raises the clock to the token's verified
        iat (a signed lower bound on the time). Audit and actuation are the caller's."""
        decision = decide(
            request,
            vin=self.vin,
            trust=self.trust,
            revocations=self.revocations,
            clock=self.clock,
            challenges=self.challenges,
            mono=mono,
        )
        if decision.grant is not None:
            self.clock = self.clock.raised(decision.grant.token.issued_at, mono=mono, fresh=False)
        return decision

    def status(self, mono: float) -> CarStatus:
        return CarStatus(
            int(self.clock.now(mono)),
            self.revocations.sequence,
            self.trust.sequence,
            self.clock.reset,
        )


class _Session:
    def __init__(self, state: SessionState, chunk_size: int, gap_timeout: float, cap: int):
        self.state = state
        self.error: BleError | None = None
        self._writer = FrameWriter(chunk_size)
        self._reader = FrameReader(max_frame=cap, gap_timeout=gap_timeout)

    def receive_data(self, chunk: bytes, now: float) -> None:
        """Take one chunk (one GATT write or notification) received at ``now``."""
        if self.state in (SessionState.CLOSED, SessionState.FAILED, SessionState.NEW):
            raise LocalProtocolError(BleReason.CLOSED, f"session is {self.state.value}")
        try:
            frame = self._reader.receive(chunk, now)
            if frame is not None:
                self._handle(frame, now)
        except RemoteProtocolError as error:
            error.may_have_succeeded = self._in_doubt()
            self.state, self.error = SessionState.FAILED, error
            raise

    def close(self) -> None:
        if self.state is not SessionState.FAILED:
            self.state = SessionState.CLOSED

    def _handle(self, frame: Frame, now: float) -> None:
        raise NotImplementedError

    def _in_doubt(self) -> bool:
        return False

    def _unexpected(self, what: object) -> RemoteProtocolError:
        return RemoteProtocolError(
            BleReason.UNEXPECTED_MESSAGE, f"{type(what).__name__} while {self.state.value}"
        )


class PhoneSession(_Session):
    """The phone's end: wait for the Challenge, then send one message at a time."""

    def __init__(self, *, chunk_size: int = MIN_CHUNK, gap_timeout: float = 1.0) -> None:
        super().__init__(SessionState.CONNECTING, chunk_size, gap_timeout, MAX_CAR_MESSAGE_BYTES)
        self.challenge: Challenge | Result | None = None  # the car's latest nonces and status
        self._sent: MessageType | None = None
        self._events: deque[PhoneEvent] = deque()

    def send(self, message: UnlockRequest | Courier) -> list[bytes]:
        """The chunks of ``message``. Only in READY: one message at a time, each answered."""
        if self.state is not SessionState.READY:
            raise LocalProtocolError(
                BleReason.UNEXPECTED_MESSAGE, f"cannot send while {self.state.value}"
            )
        if not isinstance(message, UnlockRequest | RevocationList | TrustUpdate | TimeAnswer):
            raise LocalProtocolError(BleReason.UNEXPECTED_MESSAGE, "a car's message")
        chunks = self._writer.write(encode(message))
        self._sent, self.state = message_type(message), SessionState.WAITING
        return chunks

    def retransmit(self) -> list[bytes]:
        """The unanswered message again (same frame, same bytes), or nothing."""
        return self._writer.last() if self.state is SessionState.WAITING else []

    def next_event(self) -> PhoneEvent | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def _handle(self, frame: Frame, now: float) -> None:
        if frame.repeat:  # the car re-sent its opening challenge; our own timer re-sends
            return
        message = decode(frame.payload, max_size=MAX_CAR_MESSAGE_BYTES)
        if self.state is SessionState.CONNECTING and isinstance(message, Challenge):
            self.challenge, self.state = message, SessionState.READY
            self._events.append(ChallengeReceived(message))
        elif self.state is SessionState.CONNECTING and isinstance(message, Busy):
            self.state = SessionState.CLOSED
            self._events.append(BusyReceived(message))
        elif (
            self.state is SessionState.WAITING
            and isinstance(message, Result)
            and message.subject is self._sent
        ):
            self.challenge, self.state = message, SessionState.READY
            self._events.append(ResultReceived(message))
        else:
            raise self._unexpected(message)

    def _in_doubt(self) -> bool:
        return self.state is SessionState.WAITING and self._sent is MessageType.UNLOCK_REQUEST


class CarSession(_Session):
    """The car's end of one connection, deciding against ``car`` (shared with other sessions).

    An unlock request whose last chunk arrives more than ``allowed_latency`` seconds after the
    car first sent the challenge it answers is refused ``late`` (a basic relay limit).
    """

    def __init__(
        self,
        car: CarState,
        *,
        allowed_latency: float,
        chunk_size: int = MIN_CHUNK,
        gap_timeout: float = 1.0,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        super().__init__(SessionState.NEW, chunk_size, gap_timeout, MAX_MESSAGE_BYTES)
        if allowed_latency <= 0:
            raise ValueError("allowed_latency must be positive")
        self.car = car
        self.allowed_latency = allowed_latency
        self._random_bytes = random_bytes
        self._events: deque[CarEvent] = deque()
        self._outbox: list[bytes] = []
        self._nonce = b""
        self._challenge_at = 0.0
        self._time_nonce = b""
        self._awaiting = False

    def start(self, now: float) -> None:
        """Queue the opening Challenge."""
        self._require_new()
        self._time_nonce = self._random_bytes(TIME_NONCE_BYTES)
        self._next_challenge(now)
        self.state, self._awaiting = SessionState.READY, True
        self._send(Challenge(self._nonce, self._time_nonce, self.car.status(now)))

    def refuse(self, retry_after_ms: int) -> None:
        """Queue a Busy answer instead of a challenge (the car is at its connection limit)."""
        self._require_new()
        self.state = SessionState.CLOSED
        self._send(Busy(retry_after_ms))

    def receive_data(self, chunk: bytes, now: float) -> None:
        # Any chunk means the phone holds the challenge (it sends only after it): stop re-sending.
        if self.state is SessionState.READY:
            self._awaiting = False
        super().receive_data(chunk, now)

    def data_to_send(self) -> list[bytes]:
        chunks, self._outbox = self._outbox, []
        return chunks

    def retransmit(self) -> list[bytes]:
        """The opening challenge again while the phone has sent nothing (it cannot ask)."""
        ready = self.state is SessionState.READY
        return self._writer.last() if ready and self._awaiting else []

    @property
    def awaiting(self) -> bool:
        return self.state is SessionState.READY and self._awaiting

    def next_event(self) -> CarEvent | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def _require_new(self) -> None:
        if self.state is not SessionState.NEW:
            raise LocalProtocolError(BleReason.UNEXPECTED_MESSAGE, "session already started")

    def _send(self, message: Challenge | Result | Busy) -> None:
        self._outbox.extend(self._writer.write(encode(message)))

    def _handle(self, frame: Frame, now: float) -> None:
        if frame.repeat:
            self._outbox.extend(self._writer.last())
            self._events.append(ReplyRepeated(frame.seq))
            return
        try:
            message = decode(frame.payload)
        except MalformedMessage as error:
            # The phone framed a request the car cannot read. Saying so, rather than ending the
            # session, tells the phone that nothing ran (a silent close reads "may have
            # succeeded"); the session goes on with a fresh challenge, like after any refusal.
            kind = _PHONE_MESSAGES.get(error.message_type)
            if kind is None:  # a car's message type: the peer is not a phone of this protocol
                raise
            self._events.append(RequestMalformed(kind))
            self._answer(kind, MALFORMED, None, now)
            return
        if isinstance(message, UnlockRequest):
            code = self._unlock(message, now)
        elif isinstance(message, RevocationList | TrustUpdate | TimeAnswer):
            code = self._courier(message, now)
        else:
            raise self._unexpected(message)
        action = message.action if isinstance(message, UnlockRequest) else None
        self._answer(message_type(message), code, action, now)

    def _answer(self, subject: MessageType, code: str, action: Action | None, now: float) -> None:
        """Queue the Result, carrying a fresh challenge for the phone's next message."""
        self._next_challenge(now)
        nonces = (self._nonce, self._time_nonce, self.car.status(now))
        self._send(Result(subject, code, action, *nonces))

    def _unlock(self, request: UnlockRequest, now: float) -> str:
        car = self.car
        if now - self._challenge_at > self.allowed_latency:
            self._events.append(RequestHandled(request.action, LATE, None))
            return LATE  # the challenge is spent by _next_challenge
        decision = car.decide(
            DecisionRequest(request.token, request.action, self._nonce, request.proof), mono=now
        )
        self._events.append(RequestHandled(request.action, decision.code, decision))
        return decision.code

    def _courier(self, message: Courier, now: float) -> str:
        """Apply a document if it verifies and is newer; a refusal is reported, not fatal."""
        car = self.car
        try:
            if isinstance(message, RevocationList):
                car.revocations = car.revocations.apply(
                    message.document, trust=car.trust, now=car.clock.now(now)
                )
            elif isinstance(message, TrustUpdate):
                car.trust = car.trust.apply(message.document)
            else:
                car.clock = car.clock.accept_signed_time(
                    message.document, nonce=self._time_nonce, mono=now, trust=car.trust
                )
                self._time_nonce = self._random_bytes(TIME_NONCE_BYTES)  # never reuse a nonce
            code = APPLIED
        except KeycoreError as error:
            code = error.reason.value
        self._events.append(CourierHandled(message_type(message), code))
        return code

    def _next_challenge(self, now: float) -> None:
        """Withdraw this session's challenge (if unspent) and issue a fresh one, timed from now:
        each session holds at most one, so sessions cannot crowd each other out of the book."""
        if self._nonce:
            with contextlib.suppress(InvalidProof):  # already spent by decide(), or expired
                self.car.challenges.consume(self._nonce, mono=now)
        self._nonce = self.car.challenges.issue(mono=now)
        self._challenge_at = now
