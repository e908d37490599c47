"""Errors of the BLE fallback, and whether a fresh attempt after one is safe.

    BleError                    base; ``reason`` (a BleReason) and ``may_have_succeeded``
    ├── LocalProtocolError      we broke the protocol: sent in the wrong state, a frame too big
    │                           to chunk (a bug on our side; the session is dead)
    ├── RemoteProtocolError     the peer broke it: a bad chunk, a frame over the cap, a malformed
    │   │                       message, a message in the wrong state (the session is dead)
    │   └── MalformedMessage    a message whose type was read but not the rest; the car answers
    │                           a phone message of that kind with a ``malformed`` Result instead
    ├── LinkError               the link failed under us (raised by adapters, never by the core)
    │   ├── LinkClosed          disconnected or closed
    │   ├── LinkTimeout         no answer within the attempts the link's policy allows
    │   └── BleUnavailable      no BLE stack: the ``ble`` extra or the OS's Bluetooth service is
    │                           missing; nothing was sent (ble_fallback.gatt)
    ├── CarBusy                 the car is at its connection limit: try again after
    │                           ``retry_after`` seconds
    └── SimulationDeadlock      the virtual-time loop of tests and drills would hang: nothing is
                                ready and no timer is pending; also a RuntimeError
                                (ble_fallback.virtual_time)

``may_have_succeeded`` is vehicle-command's rule: it is true when a command was sent and its
result never came back, so the car may have executed it. ``retry_safe`` is its negation: only
then may a client try again (a new connection, a new challenge) — otherwise it must ask the
user, never replay. Lower-layer errors (keycore's, a BLE library's) are mapped to these at the
boundary and never leak out of ``ble_fallback``.
"""

from __future__ import annotations

from enum import StrEnum


class BleReason(StrEnum):
    """Why a BLE session failed. Stable strings: they appear in logs and metrics."""

    # framing
    BAD_CHUNK = "bad_chunk"  # too short or long, bad index or piece size, empty frame
    FRAME_TOO_LARGE = "frame_too_large"  # the length prefix exceeds the cap
    SEQUENCE_REUSED = "sequence_reused"  # one frame sequence number, two different frames
    # messages
    MALFORMED = "malformed"  # not a message of the BLE protocol
    TOO_LARGE = "too_large"  # a message over its size cap
    UNEXPECTED_MESSAGE = "unexpected_message"  # a message the session's state does not allow
    # session and link
    CLOSED = "closed"  # the session or link is closed
    TIMEOUT = "timeout"
    BUSY = "busy"
    # the virtual-time loop of tests and drills (never on the air): a scenario that would hang
    SIMULATION_DEADLOCK = "simulation_deadlock"


class BleError(Exception):
    """Base of every BLE fallback error: a reason code and whether a command may have run."""

    def __init__(self, reason: BleReason, detail: str = "", *, may_have_succeeded: bool = False):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.may_have_succeeded = may_have_succeeded

    @property
    def retry_safe(self) -> bool:
        """A fresh attempt cannot execute a command twice."""
        return not self.may_have_succeeded

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reason={self.reason.value!r}, "
            f"may_have_succeeded={self.may_have_succeeded})"
        )


class LocalProtocolError(BleError):
    pass


class RemoteProtocolError(BleError):
    pass


class MalformedMessage(RemoteProtocolError):
    """A well-formed CBOR map whose type (``message_type``, the number at key 1) was read, but
    whose fields were not: a DER-encoded proof, a wrong-typed or missing field, an unknown key."""

    def __init__(self, message_type: int, detail: str = "") -> None:
        super().__init__(BleReason.MALFORMED, detail)
        self.message_type = message_type


class LinkError(BleError):
    pass


class LinkClosed(LinkError):
    def __init__(self, detail: str = "", *, may_have_succeeded: bool = False) -> None:
        super().__init__(BleReason.CLOSED, detail, may_have_succeeded=may_have_succeeded)


class LinkTimeout(LinkError):
    def __init__(self, detail: str = "", *, may_have_succeeded: bool = False) -> None:
        super().__init__(BleReason.TIMEOUT, detail, may_have_succeeded=may_have_succeeded)


class CarBusy(BleError):
    """The car refused the connection (too many at once); nothing was sent, retrying is safe."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(BleReason.BUSY, f"retry after {retry_after:.3f} s")
        self.retry_after = retry_after
