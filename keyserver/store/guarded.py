"""The store behind a circuit breaker, with the keyserver's one retry layer and a time limit on
every call: what stands between a failing Redis and a request waiting on it (G2, G6).

Per call: refused at once while the breaker is open (no socket touched); each attempt under the
breaker's time limit, so a hung Redis counts as a failure; the whole call within the request's
deadline (or ``call_timeout_s`` without one); retried — only here, with tenacity — with full
jitter, when time is left, the per-process retry budget allows, and the attempt certainly did
not apply a write. Every failure is a ``StoreUnavailable``; ``Conflict`` is an answer, not one.

``GuardedStore`` does this for every ``Store`` operation (a ``ForwardingStore``: each operation
is written out and checked by mypy against the protocol), ``GuardedHub`` for the hub's operations
on Redis (keyserver.store.redis.hub), under the same breaker, budget and policy.

Redis gets a breaker and retries; the embedded SQLite store gets neither: it is a local file
behind one worker thread, so there is no remote to stop hammering and no partition to wait out,
and a timed-out SQLite call still runs to its end in its thread (a retry would queue behind it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from redis.asyncio.client import PubSub
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from keyserver.errors import StoreUnavailable
from keyserver.store.base import Store
from keyserver.store.forwarding import ForwardingStore
from keyserver.store.redis.hub import RedisHub
from resilience.breaker import BreakerConfig, CircuitBreaker, StateTransition
from resilience.loop_lag import LoopLag
from resilience.overload import Deadline, RetryBudget

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# Operations that never change state: a failed one is always safe to try again. Any other
# operation is a write (refresh_context only when it claims a nonce).
READS = frozenset(
    {
        "ping",
        "account",
        "account_by_email",
        "session",
        "device",
        "devices_of",
        "vehicle",
        "key",
        "keys_of_vehicle",
        "revocations",
        "command",
        "pending_commands",
        "audit_events",
        "ownership",
        "car_instance",
        "publish",  # a hub notice: receivers deliver the same notice twice harmlessly
    }
)


class CircuitOpen(StoreUnavailable):
    """The breaker refused the call: nothing was sent. ``retry_after_s`` is the breaker's hint."""

    def __init__(self, dependency: str, operation: str, retry_after_s: float) -> None:
        super().__init__(
            f"{dependency} {operation} refused: circuit open", may_have_succeeded=False
        )
        self.dependency = dependency
        self.retry_after_s = retry_after_s


def is_outage(error: BaseException) -> bool:
    """What the breaker records as a failure: the dependency did not answer in time or at all."""
    return isinstance(error, StoreUnavailable | TimeoutError | OSError)


def store_breaker(name: str, *, lag: LoopLag | None = None, **overrides: Any) -> CircuitBreaker:
    """A breaker for a store dependency: ``BreakerConfig``'s Redis defaults, outages only, its
    calls timed on ``lag``'s clock: the time our own event loop kept a call waiting (a storm of
    requests, a busy machine) is not Redis's, so it neither makes a call slow nor, when it made
    the attempt's time limit cut the call off, a failure (``resilience.loop_lag``)."""
    clock = (lag or LoopLag()).clock
    return CircuitBreaker(
        name, BreakerConfig(record_exception=is_outage, **overrides), call_clock=clock
    )


@dataclass(frozen=True)
class GuardPolicy:
    """Time limits and retries of one store call. A keyserver answer must come within 300 ms
    (p99), and a Redis command takes well under a millisecond, so an attempt gets 150 ms and a
    call without a request deadline 250 ms: a hung Redis costs one attempt, a refused connection
    (fast) can be tried again."""

    attempt_timeout_s: float = 0.15
    call_timeout_s: float = 0.25
    max_attempts: int = 2
    backoff_s: float = 0.005  # full jitter: wait uniform(0, backoff_s × 2^n), at most backoff_max_s
    backoff_max_s: float = 0.05

    def __post_init__(self) -> None:
        if min(self.attempt_timeout_s, self.call_timeout_s) <= 0 or self.max_attempts < 1:
            raise ValueError("timeouts must be positive and max_attempts at least 1")


def _retryable(error: BaseException) -> bool:
    return (
        isinstance(error, StoreUnavailable)
        and not error.may_have_succeeded
        and not isinstance(error, CircuitOpen)
    )


class _Stop(stop_base):
    """Stop unless the deadline fits the backoff and a whole attempt, then spend from the budget.

    Runs after ``stop_after_attempt`` (tenacity's ``|`` short-circuits): the budget pays only
    for retries that will happen.
    """

    def __init__(self, guarded: GuardedStore, deadline: Deadline) -> None:
        self._guarded = guarded
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        guarded = self._guarded
        needed = (retry_state.upcoming_sleep or 0.0) + guarded.policy.attempt_timeout_s
        if self._deadline.remaining(guarded.clock) < needed:
            return True
        return not guarded.budget.try_spend()


class GuardedStore(ForwardingStore):
    """Every operation of ``inner`` guarded (module doc); ``close`` goes straight through.
    ``breaker`` and ``budget`` are this dependency's, one per process (exposed for metrics and
    tests).

    ``deadline`` returns the current request's deadline (the admission layer's contextvar).
    """

    def __init__(
        self,
        inner: Store,
        breaker: CircuitBreaker,
        *,
        budget: RetryBudget | None = None,
        policy: GuardPolicy | None = None,
        deadline: Callable[[], Deadline | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.breaker = breaker
        self.budget = budget if budget is not None else RetryBudget(0.1, clock=clock)
        self.policy = policy or GuardPolicy()
        self.clock = clock
        self._deadline = deadline
        self._sleep = sleep
        self.last_error = ""  # the last error a call met, for the transition log
        breaker.add_listener(self._log_transition)

    async def _through(
        self, operation: str, call: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        writes = operation not in READS and (
            operation != "refresh_context" or kwargs.get("claim") is not None
        )
        result: T = await self._call(operation, call, args, kwargs, writes=writes)
        return result

    def _log_transition(self, event: StateTransition) -> None:
        """Each transition with the window that caused it: an opening says whether calls failed
        or were slow (on the lag clock), and the last error a call met."""
        rates = self.breaker.metrics
        log.warning(
            "circuit breaker %s: %s -> %s",
            event.name,
            event.from_state.value,
            event.to_state.value,
            extra={
                "fields": {
                    "event": "breaker_transition",
                    "breaker": event.name,
                    "from": event.from_state.value,
                    "to": event.to_state.value,
                    "failure_rate": round(rates.failure_rate, 1),
                    "slow_call_rate": round(rates.slow_call_rate, 1),
                    "last_error": self.last_error,
                }
            },
        )

    def _call_deadline(self) -> Deadline:
        own = Deadline(self.clock() + self.policy.call_timeout_s)
        request = self._deadline()
        return own if request is None or request.at > own.at else request

    async def _call(
        self,
        name: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        writes: bool,
    ) -> Any:
        deadline = self._call_deadline()
        if deadline.expired(self.clock):
            raise StoreUnavailable(
                f"{self.breaker.name} {name}: no time left", may_have_succeeded=False
            )
        self.budget.on_request()
        # The first attempt runs bare: nearly every call succeeds at once, and building a
        # tenacity loop costs as much as the Redis round trip itself (py-spy, bench issue).
        # A failure that may be retried enters tenacity as its first attempt, so the stop,
        # wait and budget rules are exactly tenacity's.
        try:
            return await self._attempt(name, method, args, kwargs, deadline, writes)
        except StoreUnavailable as error:
            if not _retryable(error):
                raise
            first: StoreUnavailable | None = error
        policy = self.policy
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | _Stop(self, deadline),
            wait=wait_random_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await self._attempt(name, method, args, kwargs, deadline, writes)
        raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover

    async def _attempt(
        self,
        name: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
        writes: bool,
    ) -> Any:
        breaker = self.breaker
        permit = breaker.try_acquire()
        if permit is None:
            raise CircuitOpen(breaker.name, name, breaker.retry_after_s())
        # One timer for both limits: the request's deadline (a cancellation from outside: counts
        # as neither) and the attempt's limit (the dependency was too slow: a failure). Which
        # one fired is known from which was sooner.
        remaining = deadline.remaining(self.clock)
        limit = self.policy.attempt_timeout_s
        timer = asyncio.timeout(min(remaining, limit))
        started = breaker.call_time()  # on the call clock: our own loop's lag left out
        try:
            async with timer:
                result = await method(*args, **kwargs)
        except TimeoutError as exc:
            took = breaker.call_time() - started
            if timer.expired() and (remaining < limit or breaker.cut_by_own_lag(limit, took)):
                permit.release()  # the request's deadline, or our own lag: says nothing of Redis
            else:
                permit.failure(exc, took)
            self.last_error = f"{name}: timed out"
            # cut off mid-call: a write may have reached the server
            outcome = "; may have been applied" if writes else ""
            raise StoreUnavailable(
                f"{breaker.name} {name} timed out{outcome}", may_have_succeeded=writes
            ) from exc
        except Exception as error:
            permit.failure(error, breaker.call_time() - started)
            if isinstance(error, StoreUnavailable | OSError):
                self.last_error = f"{name}: {type(error).__name__} {error}"[:200]
            raise
        except BaseException:  # cancelled: says nothing about the callee
            permit.release()
            raise
        permit.success(breaker.call_time() - started)
        return result


class GuardedHub:
    """The hub's operations on Redis (``RedisHub``) behind ``guard``'s breaker, budget and
    policy: a failing Redis costs the hub bridge what it costs the routes, no more."""

    def __init__(self, inner: RedisHub, guard: GuardedStore) -> None:
        self._inner = inner
        self._guard = guard

    @property
    def channel(self) -> str:
        return self._inner.channel

    def pubsub(self) -> PubSub:
        """A subscriber (not guarded: the bridge watches its connection itself)."""
        return self._inner.pubsub()

    async def publish(self, channel: str, message: bytes) -> int:
        return await self._guard._through("publish", self._inner.publish, channel, message)

    async def mark_cars_online(self, vins: Iterable[str], instance: str, *, ttl_s: int) -> None:
        await self._guard._through(
            "mark_cars_online", self._inner.mark_cars_online, vins, instance, ttl_s=ttl_s
        )

    async def mark_car_offline(self, vin: str, instance: str) -> None:
        await self._guard._through("mark_car_offline", self._inner.mark_car_offline, vin, instance)

    async def car_instance(self, vin: str) -> str | None:
        return await self._guard._through("car_instance", self._inner.car_instance, vin)
