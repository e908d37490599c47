"""The chaos drills end to end: a real staging stack (redis-server, Sentinels, keyservers, fault
proxies, the world's cars and phones), the drill's Chaos Toolkit experiment, the report.

redis-down, cloud-outage and traffic-surge run in the default suite with short faults; the other
drills are marked slow (``make slow``). Each asserts that the drill passed, that the report's
figures agree with one another and with the drill's nature, and that nothing is left running.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.chaos import DRILLS
from deploy.drill import DrillSettings, run_drill
from deploy.stack_process import is_running
from deploy.stack_spec import StackState

QUICK = ("redis-down", "cloud-outage", "traffic-surge")
SETTINGS = DrillSettings(
    fault_s=6.0, baseline_s=5.0, recover_s=3.0, recover_max_s=30.0, cars=4, phones=8
)
# drills whose fault no defence has to notice: no breaker opens, no phone needs BLE (a crashed
# keyserver is hidden by the edge proxies, which send new connections to the one left; in a
# short partition the phones' commands wait for the car's link to return and run then — a phone
# falls back to BLE only once the keyserver has dropped the silent car, after its heartbeat)
UNDETECTED = {"traffic-surge", "clock-skew", "agent-crash", "keyserver-crash", "link-partition"}


@pytest.mark.parametrize(
    "name", [*QUICK, *(pytest.param(n, marks=pytest.mark.slow) for n in DRILLS if n not in QUICK)]
)
def test_the_drill_passes_with_consistent_figures(name: str, tmp_path: Path) -> None:
    directory = tmp_path / "stack"
    outcome = run_drill(name, directory, SETTINGS)
    report = outcome.report
    assert report.passed, (report.failures, report.unlock_failures)

    # nothing of the stack is left running
    assert not [p.name for p in StackState.load(directory).processes if is_running(p)]

    assert report.experiment_status == "completed"
    assert not report.deviated
    assert report.reconciled
    assert 0 < report.unlock_ok <= report.unlock_attempts
    assert report.invalid_attempts > 0  # the attackers kept trying, and were all denied
    by_path = report.latency["cloud"]["n"], report.latency["ble"]["n"]
    assert sum(int(n or 0) for n in by_path) <= report.unlock_attempts
    start, end = report.window
    assert report.fault_window is not None
    fault_start, fault_end = report.fault_window
    assert fault_end is not None
    assert start < fault_start < fault_end < end
    assert fault_end - fault_start >= SETTINGS.fault_s
    if name in UNDETECTED:
        assert report.detect_s is None or report.detect_s >= 0
    else:
        assert report.detect_s is not None
        assert 0 <= report.detect_s <= fault_end - fault_start
    assert report.recover_s is not None
    assert report.recover_s >= 0
    if name == "cloud-outage":
        assert int(report.latency["ble"]["n"] or 0) > 0  # phones unlocked over BLE
