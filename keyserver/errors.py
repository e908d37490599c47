"""Errors raised by the keyserver.

KeyserverError              base; the message is one line meant for an operator
├── KeyRingError            the on-disk issuer key ring is missing, unreadable or inconsistent
├── ConfigError             a configuration value or file is refused (keyserver.config)
├── StoreError              the state store
│   ├── Conflict            a write that lost to another (a taken email, VIN, idempotency key)
│   └── StoreUnavailable    the backend failed (``may_have_succeeded`` for a write)
│       └── CircuitOpen     the store's breaker refused the call: nothing was sent
│                           (keyserver.store.guarded)
├── Refused                 the domain declines a request: ``code`` (stable), ``message`` (people)
│   ├── DeviceHasKey        the device holds a live key on the vehicle already
│   ├── TooSoon             the device's keys were withdrawn this second (``retry_after``)
│   ├── TooManyHolders      the vehicle's holder bound (its revocation list's bound) is reached
│   ├── InvitationNotFound  unknown, used or expired, or its inviter no longer owns the car
│   ├── OwnInvitation       an invitation is for another account
│   └── SinceAhead          a revocation delta asked after a sequence the vehicle has not reached
├── ApiError                a refusal with an HTTP status and a code, raised by handlers and
│                           answered as JSON by the error middleware (keyserver.http)
├── WeakPassword            a password too short or too long; also a ValueError
│                           (keyserver.passwords)
├── NotYet                  a journaled operation that cannot be applied yet: the replay stops at
│                           it and tries again later (keyserver.journal)
├── ConnectionLost          the hub bridge heard nothing from Redis for too long
│                           (keyserver.hub_bridge)
├── NotSent                 a Redis failure before any command reached the server; also a redis
│                           ConnectionError (keyserver.store.redis.client)
├── NotReplicated           too few replicas confirmed a write in time; also a RedisError
│                           (keyserver.store.redis.client)
├── UnclassifiedRoute       a served route without a criticality, found at start-up; also a
│                           ValueError (keyserver.admission)
├── UndeclaredRateLimit     a served route without a rate limit, found at start-up; also a
│                           ValueError (keyserver.ratelimit)
└── RouteDeclarationError   a route table that cannot be served as declared (no criticality, a
                            write without a rate limit, a route or operationId twice); also a
                            ValueError (keyserver.routing)

Services (keyserver.issuance, acceptance, outage, replay) raise ``Refused``, never an HTTP error;
``keyserver.http`` maps each to its HTTP answer, in one table. Redis, aiohttp and SQLite errors
are mapped to these in the adapter that meets them; only ``ApiError`` (and the error middleware's
500 for a bug) reaches a client.
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
