"""Errors raised by the keyserver.

KeyserverError              base
├── KeyRingError            the on-disk issuer key ring is missing, unreadable or inconsistent
├── StoreError              the state store
│   ├── Conflict            a write that lost to another (a taken email, VIN, idempotency key)
│   └── StoreUnavailable    the backend failed (``may_have_succeeded`` for a write)
└── Refused                 the domain declines a request: ``code`` (stable), ``message`` (people)
    ├── DeviceHasKey        the device holds a live key on the vehicle already
    ├── TooSoon             the device's keys were withdrawn this second (``retry_after``)
    ├── TooManyHolders      the vehicle's holder bound (its revocation list's bound) is reached
    ├── InvitationNotFound  unknown, used or expired, or its inviter no longer owns the car
    ├── OwnInvitation       an invitation is for another account
    └── SinceAhead          a revocation delta asked after a sequence the vehicle has not reached

Services (keyserver.issuance, revoking, acceptance, outage, replay) raise these, never an HTTP
error; ``keyserver.http`` maps each ``Refused`` to its HTTP answer, in one table.
"""

from __future__ import annotations

from typing import ClassVar


class KeyserverError(Exception):
    """Base of keyserver errors; the message is one line meant for an operator."""


class KeyRingError(KeyserverError):
    pass


class StoreError(KeyserverError):
    pass


class Conflict(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The backend failed. ``may_have_succeeded`` is True when a write was sent but not answered."""

    def __init__(self, message: str, *, may_have_succeeded: bool) -> None:
        super().__init__(message)
        self.may_have_succeeded = may_have_succeeded


class Refused(KeyserverError):
    """A request the keyserver declines. ``code`` is the stable machine-readable reason a client
    sees; ``retry_after`` (seconds), when set, says the same request may succeed then."""

    code: ClassVar[str]

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class DeviceHasKey(Refused):
    code = "device_has_key"


class TooSoon(Refused):
    code = "too_soon"


class TooManyHolders(Refused):
    code = "too_many_holders"


class InvitationNotFound(Refused):
    code = "invitation_not_found"


class OwnInvitation(Refused):
    code = "own_invitation"


class SinceAhead(Refused):
    code = "since_ahead"
