"""Issue 14: the adaptive throttle must not lock out a client that asks rarely once the backend
has recovered. The random source is stubbed to the worst case — it rejects whenever P > 0 — and
time is a fake clock: only the throttle's own guarantees can let the client through."""

from __future__ import annotations

import math
import random

import pytest

from resilience.overload import AdaptiveThrottle
from tests.resilience.test_breaker import FakeClock

THROUGH_WITHIN_S = 30.0  # issue 14: after the backend recovers, the client is through within this
HORIZON_S = 3_600.0  # a simulation stops here (fake time): a bound on the loop, not a figure


def worst_case() -> float:
    return 0.0  # below any P > 0: every draw rejects


def time_to_through(
    throttle: AdaptiveThrottle, clock: FakeClock, *, every_s: float, refusing_for_s: float
) -> float | None:
    """A client asking every ``every_s``; the backend refuses (429) what reaches it until
    ``refusing_for_s``, then accepts. Seconds from the recovery to the first accepted request,
    or None if none within HORIZON_S."""
    start = clock.now
    for _ in range(math.ceil(HORIZON_S / every_s)):
        if throttle.allow():
            healthy = clock.now - start >= refusing_for_s
            throttle.record(accepted=healthy)
            if healthy:
                return clock.now - start - refusing_for_s
        clock.advance(every_s)
    return None


@pytest.mark.parametrize(
    ("every_s", "burst", "refusing_for_s"),
    [
        pytest.param(20.0, 3, 0.0, id="every-20s-3-refusals"),
        pytest.param(30.0, 3, 0.0, id="every-30s-3-refusals"),
        pytest.param(25.0, 10, 60.0, id="every-25s-10-refusals-then-a-minute-refusing"),
        pytest.param(15.0, 50, 300.0, id="every-15s-50-refusals-then-5-min-refusing"),
        pytest.param(1.0, 3, 10.0, id="every-1s"),
        pytest.param(0.1, 200, 120.0, id="every-100ms-a-long-storm"),
    ],
)
def test_a_client_is_through_within_30s_of_the_backend_recovering(
    every_s: float, burst: int, refusing_for_s: float
) -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(clock=clock, rng=worst_case)
    for _ in range(burst):  # a burst of refusals: the throttle now rejects (P > 0)
        throttle.record(accepted=False)
    assert throttle.reject_probability() > 0
    through = time_to_through(throttle, clock, every_s=every_s, refusing_for_s=refusing_for_s)
    assert through is not None
    assert through <= THROUGH_WITHIN_S


def test_the_books_throttle_alone_locks_a_low_rate_client_out() -> None:
    """The cause, kept as evidence: without the probe, a client's own local rejections count as
    requests, so P = n/(n+1) refills itself and a worst-case draw never lets it through."""
    clock = FakeClock()
    throttle = AdaptiveThrottle(clock=clock, rng=worst_case, probe_interval_s=math.inf)
    for _ in range(3):
        throttle.record(accepted=False)
    assert time_to_through(throttle, clock, every_s=20.0, refusing_for_s=0.0) is None
    requests = throttle.requests  # its own rejections of the last two minutes, one per 20 s
    assert requests >= 5
    assert throttle.accepts == 0
    assert throttle.reject_probability() == pytest.approx(requests / (requests + 1))


def test_after_recovery_a_busy_client_returns_to_full_rate_within_the_window() -> None:
    """Once the backend accepts again, local rejections stop counting: the old refusals age out
    and P reaches 0, even with worst-case draws (the probes' accepts are all that reach it)."""
    clock = FakeClock()
    throttle = AdaptiveThrottle(window_s=120, clock=clock, rng=worst_case)
    assert time_to_through(throttle, clock, every_s=0.1, refusing_for_s=120.0) is not None
    recovered = clock.now
    while throttle.reject_probability() > 0 and clock.now - recovered < HORIZON_S:
        if throttle.allow():
            throttle.record(accepted=True)
        clock.advance(0.1)
    assert throttle.reject_probability() == 0
    assert clock.now - recovered <= 120 + throttle.probe_interval_s
    assert all(throttle.allow() for _ in range(100))


def test_a_busy_client_still_spares_a_refusing_backend() -> None:
    """The probe costs a high-rate client at most one request per interval: against a backend
    that refuses everything, 100 requests a second for a minute still reach it only a few dozen
    times (the SRE book's throttling, which counts local rejections while the backend refuses)."""
    clock = FakeClock()
    draws = random.Random(14)
    throttle = AdaptiveThrottle(clock=clock, rng=draws.random)
    sent = 0
    for _ in range(6_000):
        if throttle.allow():
            sent += 1
            throttle.record(accepted=False)
        clock.advance(0.01)
    assert sent <= 60 / throttle.probe_interval_s + 30
    assert throttle.reject_probability() > 0.99


def test_the_probe_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="probe_interval_s"):
        AdaptiveThrottle(probe_interval_s=0)
