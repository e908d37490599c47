"""The fleet report's arithmetic (lab.fleet.report) and its inputs: the keyserver's counts,
a process's CPU time, the moment a port listens."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from lab.fleet.pool import cpu_times, first_listen
from lab.fleet.report import (
    CarCurrent,
    CarRestart,
    answers,
    ops_rate,
    process_cpu,
    redis_restart_report,
    restart_report,
    slowest,
    spread,
)
from lab.fleet.run import channel_counts


def test_spread_counts_the_busiest_window_against_the_even_rate() -> None:
    burst = spread([1.0] * 100, fleet_size=100)
    assert (burst.peak_per_bucket, burst.peak_share, burst.peak_per_s) == (100, 1.0, 1000.0)
    assert burst.all_back_s == 1.0
    even = spread([(i + 0.5) / 100 for i in range(100)], fleet_size=100)  # 10 per window
    assert (even.peak_per_bucket, even.peak_share) == (10, 0.1)
    assert (even.first_s, even.max_s, even.reconnected) == (0.005, 0.995, 100)
    assert even.steady_per_s == pytest.approx(101.0, abs=0.1)  # 100 cars over 0.99 s
    assert even.peak_over_steady == pytest.approx(0.99, abs=0.01)
    assert spread([], fleet_size=10).reconnected == 0


def test_spread_gives_the_distribution_and_no_all_back_time_while_a_car_is_missing() -> None:
    offsets = [float(i) for i in range(1, 101)]  # 1 … 100 s
    s = spread(offsets, fleet_size=101)
    assert (s.p50_s, s.p90_s, s.p99_s, s.max_s) == (51.0, 91.0, 100.0, 100.0)
    assert s.all_back_s is None  # one car never came back
    assert s.peak_per_s_1s == 1


def test_answers_tell_paced_refusals_from_other_refusals_and_errors() -> None:
    cars = [
        CarRestart("A", 1.0, attempts=3, answers={"429 reconnect_paced": 2, "101": 1}),
        CarRestart(
            "B", 2.0, attempts=4,
            answers={"429 overloaded": 1, "503 overloaded": 1, "error timeout": 1, "101": 1},
            errors_after_listen=2, refused_while_down=5, throttled_locally=1,
        ),
    ]  # fmt: skip
    total = answers(cars)
    assert (total.upgrades, total.refusals_paced, total.refusals_other) == (2, 2, 1)
    assert (total.errors, total.refused_while_down, total.throttled_locally) == (2, 5, 1)
    assert total.by_answer["101"] == 2


def test_the_slowest_cars_are_those_never_back_then_the_latest() -> None:
    cars = [CarRestart(f"V{i}", float(i)) for i in range(20)] + [CarRestart("LOST", None)]
    names = [c.vin for c in slowest(cars, 3)]
    assert names == ["LOST", "V19", "V18"]
    report = restart_report(cars, fleet_size=21)
    assert report.spread.reconnected == 20
    assert report.spread.all_back_s is None
    assert report.slowest[0].vin == "LOST"


def test_ops_rate_takes_the_busiest_interval_and_survives_a_restart() -> None:
    readings = [(0.0, 100), (0.1, 201), (0.2, 252), (0.3, 5), (0.4, 56)]
    rate = ops_rate(readings, [10, 900])
    # 100 commands (101 less our INFO) in 0.1 s is the peak; the counter reset is skipped
    assert rate.peak_per_s == pytest.approx(1000.0)
    assert rate.total == 100 + 50 + 50
    assert rate.mean_per_s == pytest.approx(200 / 0.3, abs=0.1)
    assert (rate.samples, rate.instantaneous_max) == (5, 900)
    assert ops_rate([], []).peak_per_s == 0.0


def test_process_cpu_is_the_difference_over_the_window() -> None:
    cpu = process_cpu("worker 0", 1, (1.0, 0.5), (3.0, 1.0), wall_s=5.0)
    assert (cpu.user_s, cpu.sys_s, cpu.share) == (2.0, 0.5, 0.5)
    assert process_cpu("x", 1, (0, 0), (1, 1), wall_s=0).share == 0.0


def test_this_process_has_cpu_time_and_a_missing_one_has_none() -> None:
    times = cpu_times(os.getpid())
    assert times is not None
    assert times[0] + times[1] > 0
    assert cpu_times(2**22 + 7) is None  # above pid_max's default ceiling


def test_the_redis_report_counts_cars_current_and_on_the_ledgers_list() -> None:
    cars = [
        CarCurrent("A", 1.0, sequence=3, ledger_sequence=3, enforced=True, online=True),
        CarCurrent("B", 2.0, sequence=3, ledger_sequence=4, enforced=True, online=True),
        CarCurrent("C", None, sequence=2, ledger_sequence=4, enforced=False, online=False),
    ]
    report = redis_restart_report(cars)
    assert (report.current, report.matching_ledger, report.enforced) == (2, 1, 2)
    assert report.all_current_s is None
    assert report.slowest[0].vin == "C"
    assert redis_restart_report(cars[:2]).all_current_s == 2.0


def test_channel_counts_read_the_keyservers_metrics() -> None:
    text = "\n".join(
        [
            "# TYPE keyserver_requests counter",
            'keyserver_requests_total{route="/v1/vehicles/{vin}/channel",method="GET",'
            'status="429",outcome="refused"} 7.0',
            'keyserver_requests_total{route="/v1/vehicles/{vin}/channel",method="GET",'
            'status="101",outcome="ok"} 3.0',
            'keyserver_requests_total{route="/healthz",method="GET",status="200",outcome="ok"} 9',
            "# TYPE keyserver_channel_upgrades_paced counter",
            'keyserver_channel_upgrades_paced_total{reason="slot"} 5.0',
            'keyserver_channel_upgrades_paced_total{reason="early"} 2.0',
            "# TYPE keyserver_channel_upgrades_admitted counter",
            "keyserver_channel_upgrades_admitted_total 3.0",
        ]
    )
    assert channel_counts(text) == {
        "admitted": 3.0, "paced early": 2.0, "paced slot": 5.0,
        "status 101": 3.0, "status 429": 7.0,
    }  # fmt: skip


def test_first_listen_is_when_the_port_accepts() -> None:
    async def scenario() -> tuple[float, float]:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        waiting = asyncio.ensure_future(first_listen(port, 10.0))
        await asyncio.sleep(0.05)  # the poller finds nothing listening yet
        assert not waiting.done()
        listened = asyncio.get_running_loop().time()
        probe.listen()
        try:
            return listened, await waiting
        finally:
            probe.close()

    listened, seen = asyncio.run(scenario())
    assert seen >= listened
