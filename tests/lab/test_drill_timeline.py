"""The timeline's per-second series from synthetic events (table-driven), and the PNG it plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.drill.report import MARK_BASELINE, MARK_END
from lab.drill.timeline import (
    breaker_states,
    breaker_steps,
    plot,
    timeline,
    unlock_latency,
    unlock_success,
)
from tests.lab.drill_events import T0, breaker, fault, healthy, mark, unlock

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], [None, None, None]),
        ([unlock(0.1), unlock(0.9), unlock(2.0)], [1.0, None, 1.0]),
        ([unlock(0.1), unlock(0.2, ok=False), unlock(1.5, ok=False)], [0.5, 0.0, None]),
        # invalid keys are not valid-unlock attempts, whatever the car did
        ([unlock(0.5, key="revoked", ok=False), unlock(0.6)], [1.0, None, None]),
        # outside the series: left out
        ([unlock(-0.1, ok=False), unlock(3.0, ok=False)], [None, None, None]),
        # both paths count
        ([unlock(1.1, path="ble"), unlock(1.2, path="none", ok=False)], [None, 0.5, None]),
    ],
)
def test_unlock_success(events: list[dict[str, Any]], expected: list[float | None]) -> None:
    assert unlock_success(events, T0, 3) == expected


@pytest.mark.parametrize(
    ("events", "path", "p50", "p99"),
    [
        (
            [unlock(0.1, latency_s=0.01), unlock(0.2, latency_s=0.03), unlock(0.3, latency_s=0.02)],
            "cloud",
            [20.0, None],
            [30.0, None],
        ),
        (
            [unlock(1.5, path="ble", latency_s=0.2), unlock(1.6, latency_s=0.01)],
            "ble",
            [None, 200.0],
            [None, 200.0],
        ),
        (
            [unlock(0.5, key="foreign", path="ble", latency_s=0.2)],
            "ble",
            [None, None],
            [None, None],
        ),
    ],
)
def test_unlock_latency(
    events: list[dict[str, Any]], path: str, p50: list[float | None], p99: list[float | None]
) -> None:
    assert unlock_latency(events, T0, 2, path) == (p50, p99)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], {}),
        ([breaker(0.5, "closed")], {"keyserver-0": [0.0, 0.0, 0.0, 0.0]}),
        # open during second 1 only, then half-open, then closed
        (
            [
                breaker(0.0, "closed"),
                breaker(1.2, "open"),
                breaker(2.0, "half_open"),
                breaker(3.5, "closed"),
            ],
            {"keyserver-0": [0.0, 1.0, 0.5, 0.5]},
        ),
        # a flap within one second still shows
        ([breaker(1.2, "open"), breaker(1.4, "closed")], {"keyserver-0": [0.0, 1.0, 0.0, 0.0]}),
        # a state set before the series began holds into it
        ([breaker(-5.0, "open")], {"keyserver-0": [1.0, 1.0, 1.0, 1.0]}),
        # the worst breaker of a source, sources apart
        (
            [
                breaker(0.2, "open", name="redis"),
                breaker(2.5, "half_open", name="redis-primary"),
                breaker(2.2, "closed", name="redis"),
                breaker(1.0, "forced_open", source="keyserver-1"),
            ],
            {"keyserver-0": [1.0, 1.0, 1.0, 0.5], "keyserver-1": [0.0, 1.0, 1.0, 1.0]},
        ),
    ],
)
def test_breaker_states(events: list[dict[str, Any]], expected: dict[str, list[float]]) -> None:
    assert breaker_states(events, T0, 4) == expected


def test_breaker_steps_are_exact_and_span_the_series() -> None:
    events = [
        breaker(-2.0, "open"),
        breaker(1.25, "half_open"),
        breaker(1.5, "closed"),
        breaker(2.0, "open", name="redis-primary"),
        breaker(2.5, "closed", name="redis-primary"),
        breaker(9.0, "open", source="keyserver-1"),  # after the series: at its end
    ]
    assert breaker_steps(events, T0, 4) == {
        "keyserver-0": ([0.0, 1.25, 1.5, 2.0, 2.5, 4.0], [1.0, 0.5, 0.0, 1.0, 0.0, 0.0]),
        "keyserver-1": ([0.0, 4.0, 4.0], [0.0, 1.0, 1.0]),
    }


def test_timeline_spans_the_measured_window_with_fault_offsets() -> None:
    line = timeline(healthy())
    assert (line.origin, line.seconds) == (T0, 10)
    assert line.success == [1.0] * 10
    assert line.faults == [("redis-down", 3.0, 6.0)]
    assert line.breakers["keyserver-0"][3] == 1.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    events = [*healthy(), unlock(4.5, path="ble", latency_s=0.4), unlock(4.6, ok=False)]
    out = plot(events, tmp_path / "sub" / "redis-down.png", "redis-down")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert out.stat().st_size > 10_000  # three panels, not an empty canvas


def test_plot_without_data_still_draws(tmp_path: Path) -> None:
    events = [mark(0, MARK_BASELINE), fault(1, "start", name="traffic-surge"), mark(5, MARK_END)]
    out = plot(events, tmp_path / "empty.png", "nothing happened")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
