"""The car's adaptive connect throttle: overload refusals (429, 503) make it refuse a growing
share of attempts locally, with a LinkError the reconnect retrier backs off from; other answers
keep it open."""

from __future__ import annotations

import pytest

from resilience.overload import AdaptiveThrottle
from vehicle_agent.backoff import ConnectThrottle
from vehicle_agent.errors import LinkError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(rng: float) -> ConnectThrottle:
    return ConnectThrottle(AdaptiveThrottle(clock=FakeClock(), rng=lambda: rng))


def test_overload_refusals_close_the_throttle_and_admit_raises_a_link_error() -> None:
    car = throttle(0.5)
    car.admit()
    car.record_status(429)
    car.admit()  # P = 1/2: not yet
    car.record_status(503)
    with pytest.raises(LinkError, match="throttled locally") as refused:
        car.admit()  # P = 2/3
    # the retrier waits at least until the probe falls due: the next attempt is not refused alike
    assert refused.value.retry_after == car.throttle.probe_interval_s
    assert car.rejected == 1
    assert car.throttle.requests == 3  # the local refusal counts, as in the SRE book


@pytest.mark.parametrize("status", [101, 401, 403, 426])
def test_answers_that_are_not_overload_keep_it_open(status: int) -> None:
    car = throttle(0.0)
    for _ in range(20):
        car.admit()
        car.record_status(status)
    assert car.throttle.reject_probability() == 0.0


def test_accepted_connects_make_room_for_refusals() -> None:
    car = throttle(0.4)
    for _ in range(10):
        car.record(True)
    for _ in range(10):
        car.record_status(429)
    assert car.throttle.reject_probability() == 0.0  # 20 requests, 2 × 10 accepts
    car.admit()
