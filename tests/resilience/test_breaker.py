"""Circuit breaker: windows, thresholds, jittered open wait, reserved half-open permits,
cancellation, predicates and transition events — all on a fake clock and a fake rng.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CallNotPermitted,
    CircuitBreaker,
    Permit,
    StateTransition,
    WindowType,
)
from resilience.waiting import PredicateWaiters

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
FORCED_OPEN, DISABLED = BreakerState.FORCED_OPEN, BreakerState.DISABLED
FAST, SLOW = 0.01, 0.5  # call durations either side of the 0.1 s slow-call limit


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeRng:
    draws: list[float] = field(default_factory=lambda: [0.5])  # 0.5: no jitter

    def __call__(self) -> float:
        return self.draws.pop(0) if len(self.draws) > 1 else self.draws[0]


@dataclass
class Rig:
    breaker: CircuitBreaker
    clock: FakeClock
    events: list[StateTransition]

    def run(self, outcomes: str) -> None:
        """One call per letter: s/S fast/slow success, f/F fast/slow failure, i ignored."""
        for outcome in outcomes:
            permit = acquire(self.breaker)
            duration = SLOW if outcome in "SF" else FAST
            if outcome in "sS":
                permit.success(duration)
            elif outcome in "fF":
                permit.failure(ConnectionError("down"), duration)
            else:
                permit.failure(Ignored(), duration)

    def transitions(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(e.from_state, e.to_state) for e in self.events]


class Ignored(Exception):
    pass


def acquire(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_acquire()
    assert permit is not None, f"refused in {breaker.state}"
    return permit


def rig(rng: FakeRng | None = None, **overrides: Any) -> Rig:
    config: dict[str, Any] = {
        "window_size": 10,
        "minimum_calls": 10,
        "ignore_exception": lambda e: isinstance(e, Ignored),
    }
    config.update(overrides)
    clock = FakeClock()
    breaker = CircuitBreaker(
        "redis",
        BreakerConfig(**config),
        clock=clock,
        rng=rng or FakeRng(),
    )
    events: list[StateTransition] = []
    breaker.add_listener(events.append)
    return Rig(breaker, clock, events)


def half_open_rig(**overrides: Any) -> Rig:
    r = rig(**overrides)
    r.run("f" * 10)
    r.clock.advance(r.breaker.config.wait_in_open_s)
    assert r.breaker.state is HALF_OPEN
    return r


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "bad",
    [
        {"window_size": 0},
        {"minimum_calls": 0},
        {"window_size": 5, "minimum_calls": 6},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 101},
        {"slow_call_rate_threshold": 0},
        {"slow_call_duration_s": 0},
        {"wait_in_open_s": 0},
        {"open_jitter": 1.0},
        {"open_jitter": -0.1},
        {"permitted_calls_in_half_open": 0},
        {"max_wait_in_half_open_s": -1},
    ],
)
def test_invalid_configs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid breaker config"):
        BreakerConfig(**bad)


def test_a_time_window_may_be_shorter_than_the_minimum_calls() -> None:
    BreakerConfig(window_type=WindowType.TIME, window_size=5, minimum_calls=50)


# ---------------------------------------------------------------------------------------------
# Count window: minimum calls, failure and slow-call thresholds, sliding


@pytest.mark.parametrize(
    ("overrides", "outcomes", "state", "failure_rate", "slow_rate"),
    [
        pytest.param({}, "f" * 9, CLOSED, -1, -1, id="under-minimum-calls"),
        pytest.param({}, "f" * 10, OPEN, 100, 0, id="minimum-reached"),
        pytest.param({}, "sssss" + "fffff", OPEN, 50, 0, id="failure-rate-at-threshold"),
        pytest.param({}, "ssssss" + "ffff", CLOSED, 40, 0, id="failure-rate-under"),
        pytest.param({}, "ss" + "SSSSSSSS", OPEN, 0, 80, id="slow-successes-count-as-slow"),
        pytest.param({}, "sss" + "SSSSSSS", CLOSED, 0, 70, id="slow-rate-under"),
        pytest.param({}, "sssss" + "FFFF" + "S", CLOSED, 40, 50, id="slow-failures-are-both"),
        pytest.param({}, "iiiii" + "fffff", CLOSED, -1, -1, id="ignored-count-as-neither"),
        pytest.param(
            {"failure_rate_threshold": 60},
            "ffff" + "s" * 6 + "s" * 4,
            CLOSED,
            0,
            0,
            id="old-failures-slide-out",
        ),
        pytest.param(
            {"failure_rate_threshold": 60},
            "ffff" + "s" * 10 + "ffffff",
            OPEN,
            60,
            0,
            id="window-is-the-last-n-calls",
        ),
        pytest.param(
            {"window_size": 20, "minimum_calls": 4},
            "sfff",
            OPEN,
            75,
            0,
            id="minimum-below-window-size",
        ),
    ],
)
def test_count_window(
    overrides: dict[str, Any],
    outcomes: str,
    state: BreakerState,
    failure_rate: float,
    slow_rate: float,
) -> None:
    r = rig(**overrides)
    r.run(outcomes)
    assert r.breaker.state is state
    assert r.breaker.failure_rate == failure_rate
    assert r.breaker.slow_call_rate == slow_rate


def test_a_call_exactly_at_the_slow_limit_is_not_slow() -> None:
    r = rig(minimum_calls=1, window_size=1)
    permit = acquire(r.breaker)
    permit.success(r.breaker.config.slow_call_duration_s)
    assert r.breaker.slow_call_rate == 0
    assert r.breaker.metrics.slow_successful == 0


# ---------------------------------------------------------------------------------------------
# Time window


@pytest.mark.parametrize(
    ("script", "state", "failure_rate"),
    [
        pytest.param([(0, "ff"), (9, "ff")], OPEN, 100, id="all-within-ten-seconds"),
        pytest.param([(0, "ff"), (10, "ff")], CLOSED, -1, id="first-second-expired"),
        pytest.param([(0, "ss"), (5, "s"), (9.9, "ff")], OPEN, 40, id="rate-over-the-window"),
        pytest.param([(0, "ssssss"), (12, "sfff")], OPEN, 75, id="old-successes-expired"),
        pytest.param([(0, "ssss"), (30, "fff")], CLOSED, -1, id="quiet-window-is-empty"),
    ],
)
def test_time_window(
    script: list[tuple[float, str]], state: BreakerState, failure_rate: float
) -> None:
    r = rig(window_type=WindowType.TIME, window_size=10, minimum_calls=4, failure_rate_threshold=40)
    start = r.clock.now
    for at, outcomes in script:
        r.clock.now = start + at
        r.run(outcomes)
    assert r.breaker.state is state
    assert r.breaker.failure_rate == failure_rate


# ---------------------------------------------------------------------------------------------
# Open: jittered wait, lazy move to half-open, refusals


@pytest.mark.parametrize(
    ("draw", "wait"), [(0.0, 1.6), (0.25, 1.8), (0.5, 2.0), (0.75, 2.2), (0.999, 2.3992)]
)
def test_the_open_wait_is_jittered_by_the_injected_rng(draw: float, wait: float) -> None:
    r = rig(rng=FakeRng([draw]), wait_in_open_s=2.0, open_jitter=0.2)
    r.run("f" * 10)
    opened = r.clock.now
    assert r.breaker.retry_after_s() == pytest.approx(wait)
    r.clock.now = opened + wait - 1e-6
    assert r.breaker.state is OPEN
    assert r.breaker.try_acquire() is None
    r.clock.now = opened + wait + 1e-9
    assert r.breaker.state is HALF_OPEN


def test_open_to_half_open_happens_lazily_on_the_first_read_after_the_wait() -> None:
    r = rig()
    r.run("f" * 10)
    r.clock.advance(3600)
    assert r.transitions() == [(CLOSED, OPEN)]  # nothing runs while nobody looks
    assert r.breaker.try_acquire() is not None
    assert r.transitions() == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert r.events[-1].at == r.clock.now


async def test_refused_calls_raise_call_not_permitted_with_the_rest_of_the_wait() -> None:
    r = rig()
    r.run("f" * 10)
    r.clock.advance(0.5)
    with pytest.raises(CallNotPermitted) as caught:
        async with r.breaker.guard():
            pytest.fail("the block ran while the breaker was open")
    assert caught.value.name == "redis"
    assert caught.value.retry_after_s == pytest.approx(1.5)
    assert r.breaker.metrics.not_permitted == 1


def test_an_open_breaker_keeps_showing_the_rates_that_opened_it() -> None:
    r = rig()
    r.run("sss" + "SS" + "fffff")
    assert r.breaker.state is OPEN
    assert (r.breaker.failure_rate, r.breaker.slow_call_rate) == (50, 20)
    assert (r.breaker.metrics.buffered_successful, r.breaker.metrics.buffered_failed) == (5, 5)


# ---------------------------------------------------------------------------------------------
# Half-open: reserved permits, verdict over the trial calls


@pytest.mark.parametrize(
    ("trials", "state"),
    [
        ("sss", CLOSED),
        ("ssf", CLOSED),  # 33 % < 50 %
        ("sff", OPEN),
        ("fff", OPEN),
        ("SSS", OPEN),  # slow-call rate 100 % ≥ 80 %
        ("sSS", CLOSED),  # 67 % < 80 %
        ("isss", CLOSED),  # an ignored trial frees its slot for another
    ],
)
def test_half_open_verdict_after_all_trial_calls(trials: str, state: BreakerState) -> None:
    r = half_open_rig()
    r.run(trials)
    assert r.breaker.state is state
    assert r.transitions()[-1] == (HALF_OPEN, state)


def test_half_open_hands_out_only_the_permitted_number_of_permits() -> None:
    r = half_open_rig(permitted_calls_in_half_open=3)
    permits = [r.breaker.try_acquire() for _ in range(5)]
    assert [p is not None for p in permits] == [True, True, True, False, False]
    assert r.breaker.metrics.not_permitted == 2
    assert r.breaker.state is HALF_OPEN  # nothing settled yet: no verdict


def test_closing_resets_the_window() -> None:
    r = half_open_rig()
    r.run("sss")
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate == -1
    r.run("f" * 9)
    assert r.breaker.state is CLOSED  # the ten failures before opening are forgotten


def test_trial_calls_hanging_past_the_half_open_limit_reopen() -> None:
    r = half_open_rig(max_wait_in_half_open_s=1.0)
    r.clock.advance(60)  # idle in half-open: no trial yet, so no limit running
    trial = acquire(r.breaker)
    r.clock.advance(0.5)
    assert r.breaker.state is HALF_OPEN
    r.clock.advance(0.5)
    assert r.breaker.state is OPEN
    trial.success(FAST)  # late: counted, but not as a trial of a later half-open
    r.clock.advance(2.0)
    assert r.breaker.state is HALF_OPEN
    assert r.breaker.metrics.successful == 1
    assert r.breaker.metrics.buffered_successful == 0


def test_a_permit_from_before_the_opening_does_not_count_as_a_trial() -> None:
    r = rig()
    early = acquire(r.breaker)
    r.run("f" * 10)
    r.clock.advance(2.0)
    r.run("ss")
    early.success(FAST)
    assert r.breaker.state is HALF_OPEN  # still waiting for the third trial
    r.run("s")
    assert r.breaker.state is CLOSED


async def test_concurrent_callers_in_half_open_do_not_all_probe() -> None:
    r = half_open_rig(permitted_calls_in_half_open=3)
    gate = asyncio.Event()
    waiters = PredicateWaiters()
    entered: list[int] = []
    refused: list[float] = []

    async def call(i: int) -> None:
        try:
            async with r.breaker.guard():
                entered.append(i)
                waiters.notify()
                await gate.wait()
        except CallNotPermitted as error:
            refused.append(error.retry_after_s)
            waiters.notify()

    tasks = [asyncio.create_task(call(i)) for i in range(10)]
    await waiters.wait_for(lambda: len(entered) + len(refused) == 10)
    assert len(entered) == 3
    assert len(refused) == 7
    assert r.breaker.state is HALF_OPEN
    gate.set()
    await asyncio.gather(*tasks)
    assert r.breaker.state is CLOSED


async def test_a_cancelled_trial_counts_as_neither_and_frees_its_slot() -> None:
    r = half_open_rig(permitted_calls_in_half_open=1)
    waiters = PredicateWaiters()
    inside: list[bool] = []

    async def hang() -> None:
        async with r.breaker.guard():
            inside.append(True)
            waiters.notify()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await waiters.wait_for(lambda: bool(inside))
    assert r.breaker.try_acquire() is None  # the only slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    m = r.breaker.metrics
    assert (m.successful, m.failed, m.ignored) == (0, 10, 0)  # the ten that opened it
    assert r.breaker.state is HALF_OPEN
    r.run("s")
    assert r.breaker.state is CLOSED


async def test_a_timeout_inside_the_guard_is_a_recorded_failure() -> None:
    r = rig(minimum_calls=1, window_size=1)
    with pytest.raises(TimeoutError):
        async with r.breaker.guard(timeout_s=0):
            await asyncio.Event().wait()
    assert r.breaker.metrics.failed == 1
    assert r.breaker.state is OPEN


async def test_call_returns_the_result_and_measures_with_the_injected_clock() -> None:
    r = rig()

    async def slow_answer() -> str:
        r.clock.advance(SLOW)
        return "PONG"

    assert await r.breaker.call(slow_answer) == "PONG"
    assert (r.breaker.metrics.successful, r.breaker.metrics.slow_successful) == (1, 1)


# ---------------------------------------------------------------------------------------------
# Record and ignore predicates


class Refused(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (ConnectionError("down"), "failed"),
        (TimeoutError(), "failed"),
        (Refused(), "ignored"),  # ignore wins over record
        (KeyError("not found"), "successful"),  # not recorded: the dependency answered
    ],
)
async def test_record_and_ignore_predicates(error: Exception, counted: str) -> None:
    r = rig(
        record_exception=lambda e: isinstance(e, OSError | Refused),
        ignore_exception=lambda e: isinstance(e, Refused),
    )
    with pytest.raises(type(error)):
        async with r.breaker.guard():
            raise error
    m = r.breaker.metrics
    assert {"successful": m.successful, "failed": m.failed, "ignored": m.ignored} == {
        kind: int(kind == counted) for kind in ("successful", "failed", "ignored")
    }


# ---------------------------------------------------------------------------------------------
# Events, permits, operator overrides, the default tuning


def test_transition_events_arrive_in_order_with_the_clock_time() -> None:
    r = rig()
    r.run("f" * 10)
    r.clock.advance(2.0)
    r.run("fff")
    r.clock.advance(2.0)
    r.run("sss")
    assert r.transitions() == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert [e.at - 1000.0 for e in r.events] == [0, 2, 2, 4, 4]
    assert {e.name for e in r.events} == {"redis"}


@pytest.mark.parametrize("first", ["success", "failure", "release"])
@pytest.mark.parametrize("second", ["success", "failure", "release"])
def test_a_permit_settles_exactly_once(first: str, second: str) -> None:
    r = rig()
    permit = acquire(r.breaker)

    def settle(p: Permit, how: str) -> None:
        if how == "success":
            p.success(FAST)
        elif how == "failure":
            p.failure(ConnectionError(), FAST)
        else:
            p.release()

    settle(permit, first)
    assert permit.settled
    with pytest.raises(RuntimeError, match="exactly once"):
        settle(permit, second)
    m = r.breaker.metrics
    assert m.successful + m.failed == int(first != "release")


def test_forced_open_refuses_and_disabled_permits_everything() -> None:
    r = rig()
    r.breaker.force_open()
    r.clock.advance(3600)
    assert r.breaker.state is FORCED_OPEN
    assert r.breaker.try_acquire() is None
    r.breaker.disable()
    r.run("f" * 50)
    assert r.breaker.state is DISABLED
    r.breaker.reset()
    assert r.breaker.state is CLOSED
    assert r.transitions() == [(CLOSED, FORCED_OPEN), (FORCED_OPEN, DISABLED), (DISABLED, CLOSED)]


def test_default_tuning_opens_fast_and_closes_within_five_seconds() -> None:
    clock, draws = FakeClock(), FakeRng([0.999])  # the longest jittered wait
    breaker = CircuitBreaker("redis", clock=clock, rng=draws)
    for _ in range(20):
        acquire(breaker).success(0.001)
    failed_calls = 0
    while breaker.state is CLOSED:  # a dead Redis: every call fails at once
        acquire(breaker).failure(ConnectionError(), 0.001)
        failed_calls += 1
    assert failed_calls == 10  # at 100 calls/s: 0.1 s
    clock.advance(breaker.retry_after_s())
    for _ in range(breaker.config.permitted_calls_in_half_open):
        acquire(breaker).success(0.001)
    assert breaker.state is CLOSED
    assert clock.now - 1000.0 < 2.5


# ---------------------------------------------------------------------------------------------
# Property: whatever happens, the breaker's state stays consistent

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 0), st.floats(0, 0)),
        st.tuples(
            st.sampled_from(["success", "failure", "ignored", "release"]),
            st.integers(0, 20),
            st.floats(0, 1),
        ),
        st.tuples(st.just("advance"), st.integers(0, 0), st.floats(0, 5)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, window=st.sampled_from(list(WindowType)), draw=st.floats(0, 0.999))
def test_any_sequence_of_outcomes_keeps_the_breaker_consistent(
    ops: list[tuple[str, int, float]], window: WindowType, draw: float
) -> None:
    r = rig(
        rng=FakeRng([draw]),
        window_type=window,
        window_size=6,
        minimum_calls=4,
        permitted_calls_in_half_open=2,
        max_wait_in_half_open_s=1.0,
    )
    held: list[tuple[Permit, int]] = []  # a permit and the number of transitions before it
    settled = {"success": 0, "failure": 0, "ignored": 0}
    for op, index, amount in ops:
        if op == "acquire":
            permit = r.breaker.try_acquire()
            if permit is not None:
                held.append((permit, len(r.events)))
            else:
                assert r.breaker.state in (OPEN, HALF_OPEN)
        elif op == "advance":
            r.clock.advance(amount)
        elif held:
            permit, _ = held.pop(index % len(held))
            if op == "success":
                permit.success(amount)
            elif op == "failure":
                permit.failure(ConnectionError(), amount)
            elif op == "ignored":
                permit.failure(Ignored(), amount)
            else:
                permit.release()
            settled[op if op != "release" else "ignored"] += op != "release"
        state = r.breaker.state
        if state is HALF_OPEN:
            outstanding = sum(1 for _, epoch in held if epoch == len(r.events))
            assert outstanding <= 2
        for rate in (r.breaker.failure_rate, r.breaker.slow_call_rate):
            assert rate == -1 or 0 <= rate <= 100
        m = r.breaker.metrics
        assert (m.successful, m.failed, m.ignored) == (
            settled["success"],
            settled["failure"],
            settled["ignored"],
        )
        assert 0 <= m.buffered_failed + m.buffered_successful <= 6
        assert m.slow_successful <= m.successful
        assert m.slow_failed <= m.failed
    for before, after in zip(r.events, r.events[1:], strict=False):
        assert before.to_state is after.from_state
        assert before.at <= after.at
