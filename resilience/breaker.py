"""A small asyncio circuit breaker with resilience4j's semantics, one per dependency per process.
Our own: no Python library has failure-rate windows, slow-call rates and bounded half-open permits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeVar

from resilience.errors import ResilienceError
from resilience.overload import SlidingCounts

T = TypeVar("T")


class WindowType(StrEnum):
    COUNT = "count"  # the last ``window_size`` calls
    TIME = "time"  # the calls of the last ``window_size`` seconds, in one-second buckets


class BreakerState(StrEnum):
    """Values are resilience4j's state names, as they appear in metrics."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


def _every_exception(error: BaseException) -> bool:
    return isinstance(error, Exception)


def _none(error: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class BreakerConfig:
    """Defaults are for a Redis role: trip within a fraction of a second under traffic, probe
    again after about 2 s, close after 3 good trial calls.
    """

    window_type: WindowType = WindowType.COUNT
    window_size: int = 20  # small, so a dead dependency trips after ~10 failed calls
    minimum_calls: int = 10
    failure_rate_threshold: float = 50.0  # percent
    slow_call_rate_threshold: float = 80.0  # percent
    slow_call_duration_s: float = 0.1  # a Redis call this slow eats a third of a 300 ms answer
    wait_in_open_s: float = 2.0
    open_jitter: float = 0.2  # the wait is wait_in_open_s × uniform(1 − j, 1 + j)
    permitted_calls_in_half_open: int = 3
    max_wait_in_half_open_s: float = 2.0  # 0: wait for the trial calls however long they take
    record_exception: Callable[[BaseException], bool] = field(default=_every_exception)
    ignore_exception: Callable[[BaseException], bool] = field(default=_none)

    def __post_init__(self) -> None:
        counted = self.window_type is WindowType.COUNT
        checks = {
            "window_size >= 1": self.window_size >= 1,
            "minimum_calls >= 1": self.minimum_calls >= 1,
            "minimum_calls <= a count window's size": not counted
            or self.minimum_calls <= self.window_size,
            "0 < failure_rate_threshold <= 100": 0 < self.failure_rate_threshold <= 100,
            "0 < slow_call_rate_threshold <= 100": 0 < self.slow_call_rate_threshold <= 100,
            "slow_call_duration_s > 0": self.slow_call_duration_s > 0,
            "wait_in_open_s > 0": self.wait_in_open_s > 0,
            "0 <= open_jitter < 1": 0 <= self.open_jitter < 1,
            "permitted_calls_in_half_open >= 1": self.permitted_calls_in_half_open >= 1,
            "max_wait_in_half_open_s >= 0": self.max_wait_in_half_open_s >= 0,
        }
        broken = [rule for rule, holds in checks.items() if not holds]
        if broken:
            raise ValueError(f"invalid breaker config: {', '.join(broken)}")


@dataclass(frozen=True)
class StateTransition:
    name: str
    from_state: BreakerState
    to_state: BreakerState
    at: float  # the breaker's clock


@dataclass(frozen=True)
class BreakerMetrics:
    """Call counters since creation (``successful`` includes slow successes), then the window."""

    successful: int
    failed: int
    ignored: int
    not_permitted: int
    slow_successful: int
    slow_failed: int
    buffered_successful: int
    buffered_failed: int
    failure_rate: float
    slow_call_rate: float


class CallNotPermitted(ResilienceError):
    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} does not permit calls")
        self.name = name
        self.retry_after_s = retry_after_s


class _Outcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    RELEASED = "released"


class _CountWindow:
    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[int, ...]] = deque()
        self._size = size
        self._totals = [0, 0, 0]

    def add(self, now: float, *deltas: int) -> None:
        self._calls.append(deltas)
        dropped = self._calls.popleft() if len(self._calls) > self._size else (0, 0, 0)
        self._totals = [t + d - o for t, d, o in zip(self._totals, deltas, dropped, strict=True)]

    def totals(self, now: float) -> tuple[int, ...]:
        return tuple(self._totals)


_Window = _CountWindow | SlidingCounts


def _rate(part: int, calls: int, minimum: int) -> float:
    return -1.0 if calls < minimum else 100.0 * part / calls


class CircuitBreaker:
    """Not thread-safe: one event loop per process, as everywhere in phonekey."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        call_clock: Callable[[], float] | None = None,
    ) -> None:
        """``call_clock`` times the calls (default ``clock``): a ``resilience.loop_lag`` clock
        leaves out the time our own event loop kept a caller waiting."""
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._call_clock = call_clock or clock
        self._own_call_clock = call_clock is not None
        self._rng = rng
        self._listeners: list[Callable[[StateTransition], None]] = []
        self._state = BreakerState.CLOSED
        self._generation = 0  # permits from an earlier state never count in the current one
        self._window, self._minimum = self._window_for(BreakerState.CLOSED)
        self._frozen: tuple[int, ...] = (0, 0, 0)  # the window that opened the breaker
        self._open_until = 0.0
        self._trials = 0  # half-open permits handed out and not released
        self._trials_since: float | None = None
        kinds = ("ok", "failed", "ignored", "refused", "slow_ok", "slow_failed")
        self._counts = dict.fromkeys(kinds, 0)

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        self._refresh(self._clock())
        return self._state

    @property
    def failure_rate(self) -> float:
        """Percent of failed calls in the window, or −1 below the minimum number of calls."""
        calls, failed, _ = self._totals()
        return _rate(failed, calls, self._minimum)

    @property
    def slow_call_rate(self) -> float:
        calls, _, slow = self._totals()
        return _rate(slow, calls, self._minimum)

    @property
    def metrics(self) -> BreakerMetrics:
        calls, failed, slow = self._totals()
        c = self._counts
        return BreakerMetrics(
            successful=c["ok"],
            failed=c["failed"],
            ignored=c["ignored"],
            not_permitted=c["refused"],
            slow_successful=c["slow_ok"],
            slow_failed=c["slow_failed"],
            buffered_successful=calls - failed,
            buffered_failed=failed,
            failure_rate=_rate(failed, calls, self._minimum),
            slow_call_rate=_rate(slow, calls, self._minimum),
        )

    def retry_after_s(self) -> float:
        """A hint for refused callers: the rest of the open wait, or how long a trial call takes."""
        now = self._clock()
        self._refresh(now)
        if self._state is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        if self._state is BreakerState.FORCED_OPEN:
            return self.config.wait_in_open_s
        return self.config.slow_call_duration_s if self._state is BreakerState.HALF_OPEN else 0.0

    def add_listener(self, callback: Callable[[StateTransition], None]) -> None:
        """``callback`` runs synchronously on every transition, after the new state is in place."""
        self._listeners.append(callback)

    # -- calling -----------------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """A permit to call the dependency, or None (counted as not permitted)."""
        now = self._clock()
        self._refresh(now)
        if self._state is BreakerState.HALF_OPEN:
            if self._trials >= self.config.permitted_calls_in_half_open:
                self._counts["refused"] += 1
                return None
            self._trials += 1
            if self._trials_since is None:
                self._trials_since = now
        elif self._state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            self._counts["refused"] += 1
            return None
        return Permit(self, self._generation)

    def call_time(self) -> float:
        """The call clock's reading: time a call with it when settling a ``try_acquire`` permit
        yourself (``guard`` does this for a block)."""
        return self._call_clock()

    def cut_by_own_lag(self, timeout_s: float, took: float) -> bool:
        """Whether a call the ``timeout_s`` limit cut off after ``took`` seconds on the call
        clock was cut by our own loop's lag rather than by the callee (see ``guard``)."""
        return self._own_call_clock and took < min(timeout_s, self.config.slow_call_duration_s)

    @contextlib.asynccontextmanager
    async def guard(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Run the block as one call: raises CallNotPermitted when refused.

        Put the call's time limit *here* (``timeout_s``), not around the guard: a timeout inside
        is a recorded failure, while a cancellation from outside counts as neither — so a hung
        dependency behind an outer deadline alone would never open the breaker.

        Durations are on the call clock. With a call clock of its own, a call the limit cut off
        although the callee had it for less than ``min(timeout_s, slow_call_duration_s)`` on
        that clock was cut by our own loop's lag, not by the callee: it counts as neither.
        """
        permit = self.try_acquire()
        if permit is None:
            raise CallNotPermitted(self.name, self.retry_after_s())
        started = self._call_clock()
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                yield
        except Exception as error:
            took = self._call_clock() - started
            if self._cut_by_own_lag(limit, timeout_s, took):
                permit.release()
            else:
                permit.failure(error, took)
            raise
        except BaseException:  # CancelledError, KeyboardInterrupt: says nothing about the callee
            permit.release()
            raise
        permit.success(self._call_clock() - started)

    def _cut_by_own_lag(self, limit: asyncio.Timeout, timeout_s: float | None, took: float) -> bool:
        return timeout_s is not None and limit.expired() and self.cut_by_own_lag(timeout_s, took)

    async def call(self, fn: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        async with self.guard(timeout_s):
            result = await fn()
        return result

    # -- operator overrides ------------------------------------------------------------------

    def force_open(self) -> None:
        self._transition(BreakerState.FORCED_OPEN, self._clock())

    def disable(self) -> None:
        self._transition(BreakerState.DISABLED, self._clock())

    def reset(self) -> None:
        self._transition(BreakerState.CLOSED, self._clock())

    # -- internals ---------------------------------------------------------------------------

    def _window_for(self, state: BreakerState) -> tuple[_Window, int]:
        if state is BreakerState.HALF_OPEN:
            trials = self.config.permitted_calls_in_half_open
            return _CountWindow(trials), trials
        if self.config.window_type is WindowType.TIME:
            return SlidingCounts(self.config.window_size, 3), self.config.minimum_calls
        return _CountWindow(self.config.window_size), self.config.minimum_calls

    def _totals(self) -> tuple[int, ...]:
        """(calls, failed, slow) in the window; while open, those of the window that opened it."""
        now = self._clock()
        self._refresh(now)
        if self._state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            return self._frozen
        return self._window.totals(now)

    def _refresh(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, now)
        elif (
            # Timed from the first trial, not from entering half-open: with lazy transitions an
            # idle half-open breaker must not reopen just because nobody called for a while.
            self._state is BreakerState.HALF_OPEN
            and self._trials_since is not None
            and self.config.max_wait_in_half_open_s > 0
            and now - self._trials_since >= self.config.max_wait_in_half_open_s
        ):
            self._transition(BreakerState.OPEN, now)

    def _settle(self, generation: int, outcome: _Outcome, duration_s: float) -> None:
        now = self._clock()
        self._refresh(now)
        current = generation == self._generation
        if outcome in (_Outcome.IGNORED, _Outcome.RELEASED):
            self._counts["ignored"] += outcome is _Outcome.IGNORED
            if current and self._state is BreakerState.HALF_OPEN:
                self._trials -= 1
            return
        failed = outcome is _Outcome.FAILURE
        slow = duration_s > self.config.slow_call_duration_s
        self._counts["failed" if failed else "ok"] += 1
        if slow:
            self._counts["slow_failed" if failed else "slow_ok"] += 1
        if not current or self._state is BreakerState.DISABLED:
            return
        self._window.add(now, 1, int(failed), int(slow))
        calls, failures, slows = self._window.totals(now)
        tripped = calls >= self._minimum and (
            100.0 * failures / calls >= self.config.failure_rate_threshold
            or 100.0 * slows / calls >= self.config.slow_call_rate_threshold
        )
        if self._state is BreakerState.CLOSED and tripped:
            self._transition(BreakerState.OPEN, now)
        elif self._state is BreakerState.HALF_OPEN and calls >= self._minimum:
            self._transition(BreakerState.OPEN if tripped else BreakerState.CLOSED, now)

    def _transition(self, to: BreakerState, now: float) -> None:
        from_state = self._state
        if to in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            # Like resilience4j, an open breaker shows the rates that opened it.
            if from_state not in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
                self._frozen = self._window.totals(now)
            jitter = self.config.open_jitter
            self._open_until = now + self.config.wait_in_open_s * (
                1 - jitter + 2 * jitter * self._rng()
            )
        else:
            self._window, self._minimum = self._window_for(to)
        self._state = to
        self._generation += 1
        self._trials = 0
        self._trials_since = None
        if from_state is not to:
            event = StateTransition(self.name, from_state, to, now)
            for listener in self._listeners:
                listener(event)


class Permit:
    """One call's right to run; settle it exactly once with success, failure or release."""

    __slots__ = ("_breaker", "_generation", "_settled")

    def __init__(self, breaker: CircuitBreaker, generation: int) -> None:
        self._breaker = breaker
        self._generation = generation
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def success(self, duration_s: float) -> None:
        self._settle(_Outcome.SUCCESS, duration_s)

    def failure(self, error: BaseException, duration_s: float) -> None:
        """Ignored errors count as neither; errors not recorded count as successes, as in
        resilience4j."""
        config = self._breaker.config
        if config.ignore_exception(error):
            self._settle(_Outcome.IGNORED, duration_s)
        else:
            recorded = config.record_exception(error)
            self._settle(_Outcome.FAILURE if recorded else _Outcome.SUCCESS, duration_s)

    def release(self) -> None:
        """The call was abandoned (cancelled): it counts as neither but frees its half-open slot."""
        self._settle(_Outcome.RELEASED, 0.0)

    def _settle(self, outcome: _Outcome, duration_s: float) -> None:
        if self._settled:
            raise RuntimeError("a circuit-breaker permit settles exactly once")
        self._settled = True
        self._breaker._settle(self._generation, outcome, duration_s)
