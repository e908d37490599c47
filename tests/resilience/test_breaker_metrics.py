"""Breaker metrics under resilience4j's names, read back from a Prometheus registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from resilience.breaker_metrics import BreakerCollector
from tests.resilience.test_breaker import SLOW, FakeClock, FakeRng, Ignored, Rig, rig

P = "resilience4j_circuitbreaker_"


def registry_for(*rigs: Rig) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(BreakerCollector(r.breaker for r in rigs))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, {"name": "redis", **labels})


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        pytest.param(
            "",
            {
                ("calls_total", "successful"): 0,
                ("calls_total", "failed"): 0,
                ("failure_rate", None): -1,
                ("slow_call_rate", None): -1,
            },
            id="fresh",
        ),
        pytest.param(
            "ssSS" + "fF" + "ii",
            {
                ("calls_total", "successful"): 4,
                ("calls_total", "failed"): 2,
                ("calls_total", "ignored"): 2,
                ("slow_calls_total", "successful"): 2,
                ("slow_calls_total", "failed"): 1,
                ("buffered_calls", "successful"): 4,
                ("buffered_calls", "failed"): 2,
                ("failure_rate", None): -1,  # 6 calls: under the minimum of 10
                ("not_permitted_calls_total", None): 0,
            },
            id="under-minimum",
        ),
        pytest.param(
            "sssssssS" + "ff",
            {
                ("calls_total", "successful"): 8,
                ("failure_rate", None): 20,
                ("slow_call_rate", None): 10,
                ("buffered_calls", "failed"): 2,
            },
            id="rates",
        ),
        pytest.param(
            "ff" + "s" * 10,
            {
                ("calls_total", "failed"): 2,
                ("buffered_calls", "failed"): 0,  # slid out of the ten-call window
                ("buffered_calls", "successful"): 10,
                ("failure_rate", None): 0,
            },
            id="window-slid",
        ),
    ],
)
def test_call_counters_rates_and_buffered_calls(
    outcomes: str, expected: dict[tuple[str, str | None], float]
) -> None:
    r = rig()
    r.run(outcomes)
    registry = registry_for(r)
    for (name, kind), want in expected.items():
        labels = {} if kind is None else {"kind": kind}
        assert value(registry, name, **labels) == want, (name, kind)


@pytest.mark.parametrize(
    ("setup", "current"),
    [
        ("", BreakerState.CLOSED),
        ("open", BreakerState.OPEN),
        ("half_open", BreakerState.HALF_OPEN),
        ("forced_open", BreakerState.FORCED_OPEN),
        ("disabled", BreakerState.DISABLED),
    ],
)
def test_state_is_one_sample_per_state_with_one_set(setup: str, current: BreakerState) -> None:
    r = rig()
    if setup in ("open", "half_open"):
        r.run("f" * 10)
    if setup == "half_open":
        r.clock.advance(2.0)  # read lazily: the scrape itself sees HALF_OPEN
    if setup == "forced_open":
        r.breaker.force_open()
    if setup == "disabled":
        r.breaker.disable()
    registry = registry_for(r)
    states = {s.value: value(registry, "state", state=s.value) for s in BreakerState}
    assert states == {s.value: float(s is current) for s in BreakerState}


def test_not_permitted_calls_are_counted() -> None:
    r = rig()
    r.run("f" * 10)
    for _ in range(3):
        assert r.breaker.try_acquire() is None
    assert value(registry_for(r), "not_permitted_calls_total") == 3


def test_each_breaker_has_its_own_name_label() -> None:
    clock = FakeClock()
    config = BreakerConfig(window_size=10, ignore_exception=lambda e: isinstance(e, Ignored))
    channel = Rig(CircuitBreaker("vehicle_channel", config, clock=clock, rng=FakeRng()), clock, [])
    redis = rig()
    redis.run("s")
    channel.run("fF")
    registry = registry_for(redis, channel)
    assert value(registry, "calls_total", kind="successful") == 1
    failed = {"name": "vehicle_channel", "kind": "failed"}
    assert registry.get_sample_value(P + "calls_total", failed) == 2
    assert registry.get_sample_value(P + "slow_calls_total", failed) == 1
    assert config.slow_call_duration_s < SLOW


def test_exposition_uses_resilience4j_names_and_types() -> None:
    r = rig()
    r.run("s")
    registry = registry_for(r)
    assert {(family.name, family.type) for family in registry.collect()} == {
        (P + "state", "gauge"),
        (P + "calls", "counter"),
        (P + "slow_calls", "counter"),
        (P + "not_permitted_calls", "counter"),
        (P + "failure_rate", "gauge"),
        (P + "slow_call_rate", "gauge"),
        (P + "buffered_calls", "gauge"),
    }
    lines = generate_latest(registry).decode().splitlines()
    assert f'{P}calls_total{{kind="successful",name="redis"}} 1.0' in lines
    assert f'{P}state{{name="redis",state="closed"}} 1.0' in lines


def test_registering_the_same_names_twice_is_refused() -> None:
    registry = registry_for(rig())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(BreakerCollector([]))
