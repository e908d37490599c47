"""Our own loop's lag, measured and taken out of a dependency's call times: the lag clock on a
fake clock, a real blocked loop, and a circuit breaker timing its calls on a call clock of its
own (slow calls, and calls its time limit cut off).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from resilience.loop_lag import LoopLag


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def lag_on(clock: FakeClock, interval_s: float = 0.02) -> LoopLag:
    lag = LoopLag(interval_s, clock=clock, autostart=False)
    lag.beat(clock.now)  # beating from now on
    return lag


def test_a_loop_that_keeps_time_discounts_nothing() -> None:
    clock = FakeClock()
    lag = lag_on(clock)
    start = lag.clock()
    for _ in range(50):
        clock.now += 0.02
        lag.beat(clock.now)
    assert lag.clock() - start == pytest.approx(1.0)
    assert lag.worst_lag_s == pytest.approx(0.0)


def test_a_late_beat_is_taken_out_and_the_clock_stands_still_while_overdue() -> None:
    clock = FakeClock()
    lag = lag_on(clock)
    start = lag.clock()
    clock.now += 0.02  # the beat is due now ...
    due = lag.clock()
    clock.now += 0.3  # ... and the loop is busy elsewhere for 300 ms
    assert lag.clock() == pytest.approx(due)  # overdue: our stall, not the callee's time
    lag.beat(clock.now)
    assert lag.clock() == pytest.approx(due)  # the beat counts what was overdue: no jump
    assert lag.last_lag_s == pytest.approx(0.3)
    clock.now += 0.01
    assert lag.clock() - start == pytest.approx(0.03)  # 330 ms of wall time, 300 of them ours


@given(st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=60))
def test_the_lag_clock_never_steps_back_nor_runs_ahead(steps: list[tuple[float, bool]]) -> None:
    clock = FakeClock()
    lag = lag_on(clock)
    last, wall = lag.clock(), clock.now
    for advance, beats in steps:
        clock.now += advance
        if beats:
            lag.beat(clock.now)
        now = lag.clock()
        assert last <= now + 1e-9
        assert now - last <= clock.now - wall + 1e-9
        last, wall = now, clock.now


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLag(0)


async def test_a_really_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag()
    lag.clock()  # starts beating on this loop
    await asyncio.sleep(0.05)  # a few beats on time
    before_wall, before = time.monotonic(), lag.clock()
    time.sleep(0.3)  # noqa: ASYNC251 — the point: the loop is blocked
    blocked_wall = time.monotonic() - before_wall
    # at most the interval before the beat fell due is not discounted: no timing bound on
    # the machine, only on what the block itself guarantees (it lasted at least 300 ms)
    assert lag.clock() - before <= blocked_wall - 0.3 + lag.interval_s + 1e-3
    lag.stop()


# ---------------------------------------------------------------------------------------------
# A breaker timing its calls on a call clock of its own


def breaker_with(call_clock: FakeClock, wall: FakeClock) -> CircuitBreaker:
    config = BreakerConfig(window_size=10, minimum_calls=10)
    return CircuitBreaker("redis", config, clock=wall, call_clock=call_clock)


async def test_calls_slow_only_by_the_wall_clock_are_not_slow() -> None:
    wall, calls = FakeClock(), FakeClock()
    breaker = breaker_with(calls, wall)
    for _ in range(20):
        async with breaker.guard():
            wall.now += 0.5  # our loop kept the caller 500 ms ...
            calls.now += 0.001  # ... the dependency answered in 1 ms
    assert breaker.metrics.slow_successful == 0
    assert breaker.state is BreakerState.CLOSED


async def test_calls_slow_by_the_call_clock_open_the_breaker() -> None:
    wall, calls = FakeClock(), FakeClock()
    breaker = breaker_with(calls, wall)
    for _ in range(10):
        async with breaker.guard():
            wall.now += 0.5
            calls.now += 0.5  # the dependency itself took 500 ms
    assert breaker.metrics.slow_successful == 10
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("callee_had_s", "counted"),
    [
        (0.001, "neither"),  # the limit fired, but our loop ate the time: not the callee's fault
        (0.099, "neither"),
        (0.11, "failed"),  # the callee had it longer than a slow call: a hung callee
        (0.5, "failed"),
    ],
)
async def test_a_call_the_limit_cut_off_counts_by_the_callees_time(
    callee_had_s: float, counted: str
) -> None:
    wall, calls = FakeClock(), FakeClock()
    breaker = breaker_with(calls, wall)

    async def hung_call() -> None:
        calls.now += callee_had_s
        await asyncio.Event().wait()  # hangs until the (real) time limit

    with pytest.raises(TimeoutError):
        await breaker.call(hung_call, timeout_s=0.15)
    m = breaker.metrics
    assert (m.failed, m.successful, m.ignored) == ((1 if counted == "failed" else 0), 0, 0)


async def test_without_a_call_clock_every_cut_off_call_is_a_failure() -> None:
    wall = FakeClock()  # stands still: the cut-off call took no time on it
    breaker = CircuitBreaker("redis", BreakerConfig(), clock=wall)
    with pytest.raises(TimeoutError):
        async with breaker.guard(timeout_s=0.01):
            await asyncio.Event().wait()
    assert breaker.metrics.failed == 1
