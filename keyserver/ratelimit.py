"""Rate limits on state-changing routes: declared once, in the route's declaration
(``keyserver.routing.Route.rate_limit``), counted per
account (or car, or e-mail address tried) and per client address, refused with 429
``rate_limited`` + ``Retry-After``, counted in metrics, and written into the OpenAPI document.

A declaration names, per scope, the ``Config`` setting that gives the limit; the setting's name
gives the window (``…_per_minute``, ``…_per_hour``). The handler calls ``check`` once it knows who
is asking (after the session and the device proof: a stolen session alone, or a stranger, cannot
spend an account's allowance) and before it changes anything; the client address is counted in
the same call (``keyserver.client_address`` says where it comes from behind a proxy). Each scope
is a fixed window: ``Retry-After`` is the time left in it. Every route that is not a GET must
declare a limit or say why it has none (a string); start-up fails otherwise.

Where the counts live. A shared limit counts in the store, so every instance sees the same count;
while the store is unavailable it counts in this process instead (``WindowCounts``), so the
limiter never turns a store outage into a refusal. Revocations and suspensions (``WITHDRAWALS``)
count in this process only: no store call stands before a revocation, which must be journaled and
answered 202 with the store down (G2, G4). With N instances such a limit allows N times its value;
it is there against load — a repeated revocation adds nothing to any ledger (keyserver.issuance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from keyserver.client_address import client_address, trusted_networks
from keyserver.clock import request_now
from keyserver.config import Config
from keyserver.errors import KeyserverError, StoreUnavailable
from keyserver.http import ApiError, Handler

WINDOWS = {"_per_minute": 60, "_per_hour": 3600}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Scope(StrEnum):
    """What one count is kept for."""

    ACCOUNT = "account"  # the caller's account (after its session and device proof)
    VEHICLE = "vehicle"  # a car signing its own request
    EMAIL = "email"  # the e-mail address a login tries
    ADDRESS = "address"  # the client address (keyserver.client_address)


@dataclass(frozen=True)
class RateLimit:
    """A route's limits: for each scope, the Config setting holding attempts per window."""

    account: str | None = None
    vehicle: str | None = None
    email: str | None = None
    address: str | None = None
    shared: bool = True  # counted in the store (this process's count while it is down)

    def __post_init__(self) -> None:
        settings = {f.name for f in fields(Config)}
        for scope, setting in self.settings().items():
            if setting not in settings or window_of(setting) is None:
                raise ValueError(f"{scope}: {setting!r} is not a Config setting per minute/hour")

    def settings(self) -> dict[Scope, str]:
        named = {s: getattr(self, s.value) for s in Scope}
        return {scope: setting for scope, setting in named.items() if setting is not None}


def window_of(setting: str) -> int | None:
    return next((s for suffix, s in WINDOWS.items() if setting.endswith(suffix)), None)


# The limits most routes share; a route with other needs declares its own next to it.
WRITES = RateLimit(account="account_writes_per_minute", address="address_writes_per_minute")
WITHDRAWALS = RateLimit(
    account="account_writes_per_minute", address="address_writes_per_minute", shared=False
)


class WindowCounts:
    """Attempts per key in fixed windows, held in this process for at most ``capacity`` keys.

    Full, it forgets the key used least recently, so memory stays bounded however many accounts
    or addresses ask. Forgetting a key resets its count; to win a fresh allowance that way a client
    must stop, and ``capacity`` other keys (distinct authenticated accounts, or addresses) must be
    counted before it asks again."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # a digest of the key -> window start << 32 | attempts: two small objects a key, so it
        # costs about 190 bytes whatever its length (measured: 19 MB for 100,000)
        self._counts: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def hit(self, key: str, *, now: int, window: int, limit: int) -> bool:
        """Count one attempt; False once over ``limit`` in the window containing ``now``."""
        start = now - now % window
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        held = self._counts.pop(digest, None)  # re-inserted below, at the back: recently used
        attempts = 1
        if held is not None and held >> 32 == start:
            attempts = min((held & 0xFFFF_FFFF) + 1, limit + 1)  # past the limit is enough
        if len(self._counts) >= self.capacity:
            del self._counts[next(iter(self._counts))]
        self._counts[digest] = start << 32 | attempts
        return attempts <= limit


@dataclass(frozen=True)
class RateLimitMetrics:
    refused: Counter
    fallbacks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RateLimitMetrics:
        return cls(
            refused=Counter(
                "keyserver_rate_limited",
                "Requests refused 429 rate_limited, by route and by the scope whose limit was hit",
                ["route", "scope"],
                registry=registry,
            ),
            fallbacks=Counter(
                "keyserver_rate_limit_fallbacks",
                "Shared rate-limit counts kept in this process because the store was unavailable",
                ["route"],
                registry=registry,
            ),
        )


class RateLimiter:
    """One app's limiter: the settings, this process's counts, the metrics, the app's store."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        store: Callable[[], Any],
        limits: Mapping[Handler, RateLimit | str],
    ) -> None:
        self.config = config
        self.limits = limits  # each handler's declared limit, or why it has none
        self.trusted = trusted_networks(config.trusted_proxies)
        self.counts = WindowCounts(config.rate_limit_entries)
        self.metrics = RateLimitMetrics.create(registry)
        self._store = store  # looked up per call: the store is opened, and wrapped, at start-up

    def address(self, request: web.Request) -> str:
        return client_address(request, self.trusted, self.config.forwarded_header)

    async def count(
        self, request: web.Request, limit: RateLimit, subjects: dict[Scope, str]
    ) -> None:
        """Count the request in each scope of ``limit``; ApiError 429 at the first one over."""
        route = _route(request)
        handler = request.match_info.handler
        name = f"{handler.__module__.rpartition('.')[2]}.{handler.__name__}"
        now = request_now(request)
        for scope, setting in limit.settings().items():
            subject = self.address(request) if scope is Scope.ADDRESS else subjects[scope]
            window = window_of(setting)
            assert window is not None  # checked when the limit was declared
            # hashed: bounded, free of separators, and no e-mail address among the store's keys
            key = f"rate:{name}:{scope}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"
            allowed = getattr(self.config, setting)
            if not await self._hit(key, limit.shared, route, now=now, window=window, limit=allowed):
                self.metrics.refused.labels(route, scope.value).inc()
                raise ApiError(
                    429, "rate_limited", f"too many requests for this {scope}; try again later",
                    headers={"Retry-After": str(window - now % window)},
                )  # fmt: skip

    async def _hit(
        self, key: str, shared: bool, route: str, *, now: int, window: int, limit: int
    ) -> bool:
        if shared:
            try:
                hit: bool = await self._store().hit(key, now=now, window=window, limit=limit)
                return hit
            except StoreUnavailable:  # never refuse for the limiter's own store: count here
                self.metrics.fallbacks.labels(route).inc()
        return self.counts.hit(key, now=now, window=window, limit=limit)


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


async def check(
    request: web.Request,
    *,
    account: str | None = None,
    vehicle: str | None = None,
    email: str | None = None,
) -> None:
    """Count this request against its route's declared limits: the client address, and the
    account, car or e-mail address given (exactly those the declaration names); 429 over one."""
    limiter = request.app[RATE_LIMITER]
    limit = limiter.limits.get(request.match_info.handler)
    if not isinstance(limit, RateLimit):
        raise LookupError(f"{_route(request)} declares no rate limit")
    given = {Scope.ACCOUNT: account, Scope.VEHICLE: vehicle, Scope.EMAIL: email}
    subjects = {scope: subject for scope, subject in given.items() if subject is not None}
    if set(subjects) != set(limit.settings()) - {Scope.ADDRESS}:
        raise LookupError(f"{_route(request)}: the subjects given are not those declared")
    await limiter.count(request, limit, subjects)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class UndeclaredRateLimit(KeyserverError, ValueError):
    """A state-changing route declares neither a limit nor why it has none: a start-up error."""


def setup(
    app: web.Application,
    config: Config,
    registry: CollectorRegistry,
    limits: Mapping[Handler, RateLimit | str],
    *,
    store: Callable[[], Any],
) -> RateLimiter:
    """Check that every state-changing route the router serves declares a limit (or why it
    has none) and make the app's limiter."""
    missing = sorted(
        f"{r.method} {r.resource.canonical}"
        for r in app.router.routes()
        if r.resource is not None and r.method in WRITE_METHODS and r.handler not in limits
    )
    if missing:
        raise UndeclaredRateLimit(f"routes without a rate limit: {', '.join(missing)}")
    limiter = RateLimiter(config, registry, store, limits)
    app[RATE_LIMITER] = limiter
    return limiter


def document(operation: dict[str, Any], declared: RateLimit | str, config: Config) -> None:
    """Write a route's limits into its OpenAPI operation: ``x-rate-limit``, and the 429."""
    if isinstance(declared, str):
        operation["x-rate-limit"] = {"exempt": declared}
        return
    limits = {
        scope.value: {"setting": setting, "limit": getattr(config, setting), "window_s": window}
        for scope, setting in declared.settings().items()
        if (window := window_of(setting)) is not None
    }
    where = "this process" if not declared.shared else "the store (shared by every instance)"
    operation["x-rate-limit"] = {"counted_in": where, "per": limits}
    text = "rate_limited: too many requests " + ", or ".join(
        f"per {_SCOPE_NAMES[scope]} ({value['limit']} per {value['window_s']} s,"
        f" setting {value['setting']})"
        for scope, value in limits.items()
    )
    text += "; wait Retry-After seconds"
    responses = operation.setdefault("responses", {})
    existing = responses.get("429")
    if existing is None:
        responses["429"] = {
            "description": text,
            "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    else:
        existing["description"] = f"{existing['description']}; {text}"
        existing.setdefault("headers", {}).setdefault("Retry-After", _RETRY_AFTER)


_SCOPE_NAMES = {
    "account": "account",
    "vehicle": "car",
    "email": "e-mail address tried",
    "address": "client address",
}
_RETRY_AFTER = {
    "description": "seconds until the next attempt is counted",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
