"""Prometheus metrics for circuit breakers, under resilience4j's names so its dashboards and
alerts apply unchanged: state, calls by kind, slow and not-permitted calls, rates, buffered calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from resilience.breaker import BreakerState, CircuitBreaker

_PREFIX = "resilience4j_circuitbreaker_"


def _families() -> dict[str, Metric]:
    counter, gauge = CounterMetricFamily, GaugeMetricFamily
    by_kind = ["name", "kind"]
    return {
        "state": gauge(_PREFIX + "state", "1 for the breaker's state", labels=["name", "state"]),
        "calls": counter(_PREFIX + "calls", "Permitted calls, by outcome", labels=by_kind),
        "slow_calls": counter(
            _PREFIX + "slow_calls", "Calls slower than the limit", labels=by_kind
        ),
        "not_permitted_calls": counter(
            _PREFIX + "not_permitted_calls", "Calls refused by the breaker", labels=["name"]
        ),
        "failure_rate": gauge(_PREFIX + "failure_rate", "Failed calls, percent", labels=["name"]),
        "slow_call_rate": gauge(_PREFIX + "slow_call_rate", "Slow calls, percent", labels=["name"]),
        "buffered_calls": gauge(
            _PREFIX + "buffered_calls", "Calls in the window, by outcome", labels=by_kind
        ),
    }


class BreakerCollector(Collector):
    """Reads each breaker at scrape time; a read may move an OPEN breaker to HALF_OPEN."""

    def __init__(self, breakers: Iterable[CircuitBreaker]) -> None:
        self.breakers = list(breakers)

    def describe(self) -> Iterator[Metric]:
        # Families without samples: the registry learns the names and refuses duplicates.
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        families = _families()

        def sample(family: str, suffix: str, labels: dict[str, str], value: float) -> None:
            families[family].add_sample(_PREFIX + family + suffix, labels, float(value))

        for breaker in self.breakers:
            name = {"name": breaker.name}
            current = breaker.state  # before the counters: a lazy transition happens here
            m = breaker.metrics
            for state in BreakerState:
                sample("state", "", {**name, "state": state.value}, state is current)
            for kind, calls, slow in (
                ("successful", m.successful, m.slow_successful),
                ("failed", m.failed, m.slow_failed),
            ):
                sample("calls", "_total", {**name, "kind": kind}, calls)
                sample("slow_calls", "_total", {**name, "kind": kind}, slow)
            sample("calls", "_total", {**name, "kind": "ignored"}, m.ignored)
            sample("not_permitted_calls", "_total", name, m.not_permitted)
            sample("failure_rate", "", name, m.failure_rate)
            sample("slow_call_rate", "", name, m.slow_call_rate)
            sample("buffered_calls", "", {**name, "kind": "successful"}, m.buffered_successful)
            sample("buffered_calls", "", {**name, "kind": "failed"}, m.buffered_failed)
        return iter(families.values())
