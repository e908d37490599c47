"""Overload primitives: the SRE throttling formula, the retry budget, sliding counts, deadlines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience.overload import (
    MAX_DEADLINE_MS,
    AdaptiveThrottle,
    Deadline,
    RetryBudget,
    SlidingCounts,
)
from tests.resilience.test_breaker import FakeClock, FakeRng

# ---------------------------------------------------------------------------------------------
# Sliding counts


@pytest.mark.parametrize(
    ("adds", "at", "totals"),
    [
        pytest.param([(0.0, 1, 0), (0.5, 1, 1)], 0.9, (2, 1), id="same-bucket"),
        pytest.param([(0.0, 1, 0), (5.0, 1, 1)], 9.99, (2, 1), id="both-in-window"),
        pytest.param([(0.0, 1, 0), (5.0, 1, 1)], 10.0, (1, 1), id="first-bucket-expired"),
        pytest.param([(0.0, 1, 0), (5.0, 1, 1)], 15.0, (0, 0), id="all-expired"),
        pytest.param([(3.0, 2, 0), (1.0, 1, 1)], 3.0, (3, 1), id="clock-stepping-back"),
    ],
)
def test_sliding_counts(
    adds: list[tuple[float, int, int]], at: float, totals: tuple[int, int]
) -> None:
    counts = SlidingCounts(10, 2)
    for now, *deltas in adds:
        counts.add(now, *deltas)
    assert counts.totals(at) == totals


def test_sliding_counts_memory_is_bounded_by_the_window() -> None:
    counts = SlidingCounts(10, 1, bucket_s=0.5)
    for step in range(10_000):
        counts.add(step * 0.25, 1)
    assert len(counts._buckets) <= 20
    assert counts.totals(2499.75) == (40,)


def test_sliding_counts_refuse_the_wrong_number_of_counts() -> None:
    counts = SlidingCounts(10, 2)
    with pytest.raises(ValueError, match="expected 2 counts"):
        counts.add(0.0, 1)
    assert counts.totals(0.0) == (0, 0)


# ---------------------------------------------------------------------------------------------
# Adaptive throttling


def throttle(requests: int, accepts: int, k: float = 2.0, draw: float = 0.5) -> AdaptiveThrottle:
    t = AdaptiveThrottle(k=k, clock=FakeClock(), rng=FakeRng([draw]))
    for i in range(requests):
        t.record(accepted=i < accepts)
    return t


@pytest.mark.parametrize(
    ("requests", "accepts", "k", "probability"),
    [
        (0, 0, 2.0, 0.0),
        (100, 100, 2.0, 0.0),
        (100, 50, 2.0, 0.0),  # the backend refuses half: K = 2 still sends everything
        (100, 49, 2.0, 2 / 101),
        (100, 10, 2.0, 80 / 101),
        (100, 0, 2.0, 100 / 101),  # never 1: a few requests still probe the backend
        (100, 10, 1.0, 90 / 101),
        (100, 40, 1.5, 40 / 101),
        (1, 0, 2.0, 1 / 2),
    ],
)
def test_reject_probability_formula(
    requests: int, accepts: int, k: float, probability: float
) -> None:
    t = throttle(requests, accepts, k)
    assert (t.requests, t.accepts) == (requests, accepts)
    assert t.reject_probability() == pytest.approx(probability, abs=1e-12)


@pytest.mark.parametrize(
    ("draw", "allowed"), [(0.0, False), (0.79, False), (0.80, True), (0.99, True)]
)
def test_allow_draws_against_the_probability(draw: float, allowed: bool) -> None:
    t = throttle(100, 10, draw=draw)  # P = 80/101 ≈ 0.792
    assert t.allow() is allowed
    # A local rejection is a request the backend never saw; an allowed one waits for record().
    assert t.requests == 100 + (not allowed)
    assert t.accepts == 10


def test_local_rejections_raise_the_probability_and_accepts_bring_it_down() -> None:
    t = throttle(100, 10, draw=0.0)
    assert not t.allow()
    assert t.reject_probability() == pytest.approx(81 / 102)
    for _ in range(81):  # 182 requests, 91 accepts: 182 − 2 × 91 = 0
        t.record(accepted=True)
    assert t.reject_probability() == 0.0


def test_throttle_forgets_outside_its_window() -> None:
    clock = FakeClock()
    t = AdaptiveThrottle(window_s=120, clock=clock, rng=FakeRng())
    for _ in range(100):
        t.record(accepted=False)
    clock.advance(119)
    assert t.reject_probability() == pytest.approx(100 / 101)
    clock.advance(1)
    assert t.reject_probability() == 0.0
    assert t.requests == 0


def test_throttle_refuses_k_below_one() -> None:
    with pytest.raises(ValueError, match="k below 1"):
        AdaptiveThrottle(k=0.5)


# ---------------------------------------------------------------------------------------------
# Retry budget


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "requests", "allowed"),
    [
        (0.1, 0.0, 100, 10),
        (0.1, 0.0, 30, 3),
        (0.7, 0.0, 90, 63),  # 0.7 × 90 is 62.99999999999999 in floats
        (0.1, 0.0, 9, 0),
        (0.1, 0.2, 0, 2),  # the floor: 0.2/s over a 10 s window
        (0.1, 0.2, 100, 12),
        (0.0, 0.0, 1000, 0),
        (1.0, 0.0, 5, 5),
    ],
)
def test_retry_budget_enforces_the_ratio_plus_the_floor(
    ratio: float, min_per_s: float, requests: int, allowed: int
) -> None:
    budget = RetryBudget(ratio, min_per_s=min_per_s, window_s=10, clock=FakeClock())
    for _ in range(requests):
        budget.on_request()
    spent = [budget.try_spend() for _ in range(allowed + 5)]
    assert spent == [True] * allowed + [False] * 5
    assert (budget.requests, budget.retries, budget.denied) == (requests, allowed, 5)
    assert budget.retry_ratio == (allowed / requests if requests else 0.0)


def test_retry_budget_is_earned_again_in_a_new_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.1, min_per_s=0.0, window_s=10, clock=clock)
    for _ in range(10):
        budget.on_request()
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.advance(10)
    assert not budget.try_spend()  # the requests that earned it have left the window
    for _ in range(10):
        budget.on_request()
    assert budget.try_spend()
    assert budget.retry_ratio == pytest.approx(2 / 20)


@pytest.mark.parametrize("bad", [{"ratio": -0.1}, {"ratio": 1.5}, {"min_per_s": -1.0}])
def test_retry_budget_refuses_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(**bad)


# ---------------------------------------------------------------------------------------------
# Deadlines


def test_deadline_remaining_and_expiry_follow_the_clock() -> None:
    clock = FakeClock()
    deadline = Deadline.after(0.3, clock)
    assert deadline.remaining(clock) == pytest.approx(0.3)
    assert not deadline.expired(clock)
    clock.advance(0.3)
    assert deadline.expired(clock)
    clock.advance(5)
    assert deadline.remaining(clock) == 0.0


@pytest.mark.parametrize(
    ("remaining_s", "header"),
    [(0.25, "250"), (0.2509, "250"), (0.0009, "0"), (-3.0, "0"), (3600.0, str(MAX_DEADLINE_MS))],
)
def test_to_header_rounds_down_and_caps(remaining_s: float, header: str) -> None:
    assert Deadline(100.0 + remaining_s).to_header(now=100.0) == header


@pytest.mark.parametrize(
    ("value", "remaining_s"),
    [("0", 0.0), ("250", 0.25), ("0250", 0.25), ("30000", 30.0), ("9999999999", 30.0)],
)
def test_from_header_parses_and_caps(value: str, remaining_s: float) -> None:
    assert Deadline.from_header(value, now=100.0).at == pytest.approx(100.0 + remaining_s)


def test_from_header_cap_is_configurable() -> None:
    assert Deadline.from_header("5000", now=0.0, max_ms=1000).at == 1.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        " 250",
        "250 ",
        "250\n",
        "-1",
        "+250",
        "2.5",
        "1e3",
        "0x10",
        "25_0",
        "٢٥٠",
        "12345678901",
        "abc",
    ],
)
def test_from_header_refuses_anything_but_ascii_digits(value: str) -> None:
    with pytest.raises(ValueError, match="PK-Deadline-Ms"):
        Deadline.from_header(value, now=0.0)


async def test_timeout_raises_once_the_deadline_has_passed() -> None:
    clock = FakeClock()
    deadline = Deadline.after(1.0, clock)
    clock.advance(2.0)
    with pytest.raises(TimeoutError):
        async with deadline.timeout(clock):
            await asyncio.Event().wait()


async def test_timeout_is_set_to_the_remaining_time() -> None:
    clock = FakeClock()
    deadline = Deadline.after(5.0, clock)
    clock.advance(1.0)
    loop = asyncio.get_running_loop()
    async with deadline.timeout(clock) as scope:
        when = scope.when()
        assert when is not None
        assert when - loop.time() == pytest.approx(4.0, abs=0.5)
