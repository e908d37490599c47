"""The drill report's figures from synthetic event logs, one definition at a time (table-driven),
including the cases that are easy to get wrong: a doubled command, a lost revocation, a 5xx, a
drill with no fault at all, a wait at the car over 1 s, too few intents in the fault window, an
agent's restart reported apart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab.drill.report import (
    MARK_BASELINE,
    MARK_END,
    DrillReport,
    compute_report,
    fault_windows,
    summary_table,
)
from tests.lab.drill_events import (
    T0,
    VIN,
    actuation,
    breaker,
    command,
    fault,
    healthy,
    http,
    mark,
    reconcile,
    revocation,
    unlock,
)


def report(events: list[dict[str, Any]], **kwargs: Any) -> DrillReport:
    """The report of a small synthetic log: the bar on intents in the fault window (a real
    drill's) has its own test below."""
    kwargs.setdefault("min_fault_samples", 0)
    return compute_report("redis-down", events, **kwargs)


def test_a_healthy_drill_passes_with_its_figures() -> None:
    r = report(healthy())
    assert r.passed, r.failures
    assert (r.unlock_attempts, r.unlock_ok) == (10, 10)
    assert r.detect_s == pytest.approx(0.2)  # breaker opened 0.2 s after the fault began
    assert r.recover_s == pytest.approx(1.5)  # closed for good at 7.0, next remote command 7.5
    assert r.fault_window == [T0 + 3.0, T0 + 6.0]
    assert r.window == [T0, T0 + 10.0]
    assert r.wait_at_car["window"] == {"p50": 50.0, "p99": 50.0, "max": 50.0, "n": 10}
    assert r.wait_at_car["fault"]["n"] == 3  # first presses at 3.45, 4.45, 5.45
    assert r.wait_at_car["paths"]["ble"]["n"] == 10
    assert r.remote_commands["executed"]["n"] == 10
    assert json.loads(r.to_json())["drill"] == "redis-down"


def test_presses_per_intent_are_counted_and_a_second_press_that_worked_is_a_success() -> None:
    twice = {
        **unlock(4.5, path="ble"),
        "presses": 2,
        "first": {"status": "unknown", "path": "cloud"},
    }
    r = report([*healthy(), twice, {**unlock(11.0), "presses": 2}])  # the last: outside the window
    assert (r.unlock_attempts, r.unlock_ok) == (11, 11)
    assert (r.unlock_presses, r.unlock_second_press) == (12, 1)  # events without presses: 1
    assert r.passed, r.failures
    assert summary_table([r]).splitlines()[2].endswith(" | 1 | – |")


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        # valid unlocks: only inside the measured window count
        ([unlock(-1.0, ok=False)], "unlock_attempts", 10),
        ([unlock(10.5, ok=False)], "unlock_attempts", 10),
        ([unlock(4.2, ok=False)], "unlock_ok", 10),
        ([unlock(4.2, ok=False)], "unlock_attempts", 11),
        (
            [unlock(4.2, ok=False), unlock(5.5, ok=False, path="ble")],
            "unlock_failures",
            {"cloud: denied": 1, "ble: denied": 1},
        ),
        ([], "unlock_failures", {}),
        # invalid keys: denied is right, accepted is counted, anywhere in the log
        ([unlock(4.0, key="revoked", path="ble", ok=False)], "invalid_accepted", 0),
        ([unlock(4.0, key="revoked", path="ble", ok=False)], "invalid_attempts", 1),
        ([unlock(4.0, key="replayed", path="ble", ok=True)], "invalid_accepted", 1),
        ([unlock(-5.0, key="foreign", path="ble", ok=True)], "invalid_accepted", 1),
        # 5xx: every http event's count
        ([http(4.0, ok=3, server_errors=2), http(5.0, server_errors=1)], "http_5xx", 3),
        ([http(4.0, ok=30)], "http_5xx", 0),
    ],
)
def test_counts(extra: list[dict[str, Any]], field: str, expected: Any) -> None:
    assert getattr(report(healthy() + extra), field) == expected


@pytest.mark.parametrize(
    ("events", "doubled", "lost", "accepted"),
    [
        ([command(4, "c1"), actuation(4.1, "c1"), reconcile(20, {"c1": 1})], 0, 0, 1),
        # the car says it executed twice
        ([command(4, "c1"), reconcile(20, {"c1": 2})], 1, 0, 1),
        # two actuations with the same id, though the car's count says once
        (
            [command(4, "c1"), actuation(4.1, "c1"), actuation(5, "c1"), reconcile(20, {"c1": 1})],
            1,
            0,
            1,
        ),
        # an unlock through the cloud is a command too: doubling it is counted
        ([actuation(4.1, "u1"), actuation(4.2, "u1"), reconcile(20, {"u1": 2})], 1, 0, 0),
        # BLE actuations carry no id and are never "doubled"
        ([actuation(4.1, None), actuation(4.2, None), reconcile(20)], 0, 0, 0),
        # accepted, never executed, not final: lost
        ([command(4, "c2", status="may_be_queued"), reconcile(20)], 0, 1, 1),
        # accepted and expired (the keyserver's final answer): not lost
        ([command(4, "c2"), reconcile(20, commands={"c2": "expired"})], 0, 0, 1),
        ([command(4, "c2"), reconcile(20, commands={"c2": "failed"})], 0, 0, 1),
        # the keyserver says executed, the car has no trace: lost
        ([command(4, "c2"), reconcile(20, commands={"c2": "executed"})], 0, 1, 1),
        # executed per actuation only (the car's record is gone): not lost
        ([command(4, "c2"), actuation(4.5, "c2"), reconcile(20)], 0, 0, 1),
        # refused by the keyserver: not its to lose
        ([command(4, None, accepted=False, status="refused"), reconcile(20)], 0, 0, 0),
        # accepted without an id: cannot be traced, counted lost
        ([command(4, None, status="in_doubt"), reconcile(20)], 0, 1, 1),
        # the same command reported twice is one command
        ([command(4, "c3"), command(5, "c3"), reconcile(20, {"c3": 1})], 0, 0, 1),
        # no reconcile: only actuations prove execution
        ([command(4, "c4")], 0, 1, 1),
    ],
)
def test_commands(events: list[dict[str, Any]], doubled: int, lost: int, accepted: int) -> None:
    r = report([*healthy(remote=False)[:-1], *events])  # without its reconcile event
    assert (r.commands_doubled, r.commands_lost, r.commands_accepted) == (doubled, lost, accepted)
    assert r.passed is (doubled == 0 and lost == 0)


@pytest.mark.parametrize(
    ("events", "accepted", "lost"),
    [
        ([revocation(4, "k1"), reconcile(20, revoked=("k1", "k9"))], 1, 0),
        ([revocation(4, "k1"), reconcile(20, revoked=("k9",))], 1, 1),
        ([revocation(4, "k1", accepted=False), reconcile(20)], 0, 0),
        ([revocation(4, "k1"), revocation(6, "k1"), reconcile(20, revoked=("k1",))], 1, 0),
        ([revocation(4, "k1")], 1, 1),  # no reconcile: nothing is proven enforced
    ],
)
def test_revocations(events: list[dict[str, Any]], accepted: int, lost: int) -> None:
    r = report([*healthy()[:-1], *events])
    assert (r.revocations_accepted, r.revocations_lost) == (accepted, lost)
    if lost:
        assert r.lost_revocations
        assert not r.passed


def test_a_lost_revocation_names_car_and_key() -> None:
    r = report([*healthy()[:-1], revocation(4, "k1"), reconcile(20)])
    assert r.lost_revocations == ["VIN0000000000001/k1"]
    assert "revocations_lost = 1" in r.failures


def quiet(*events: dict[str, Any]) -> list[dict[str, Any]]:
    """Ten seconds of unlocks at the car and remote commands that execute, breakers closed, plus
    ``events``."""
    executed = {f"q{k}": 1 for k in range(10)}
    base = [mark(0, MARK_BASELINE), breaker(0.1, "closed"), mark(10, MARK_END)]
    base.append(reconcile(11, executed))
    unlocks = [unlock(k + 0.5, path="ble") for k in range(10)]
    return base + unlocks + [command(k + 0.5, f"q{k}") for k in range(10)] + list(events)


@pytest.mark.parametrize(
    ("events", "detect", "recover"),
    [
        ([], None, None),  # no fault: nothing to detect or recover from
        ([fault(3, "start"), fault(6, "end")], None, pytest.approx(0.5)),  # surge: "n/a"
        (
            [fault(3, "start"), breaker(4, "open"), breaker(6.7, "closed"), fault(6, "end")],
            pytest.approx(1.0),
            pytest.approx(1.5),
        ),
        # a remote command that did not execute, before any breaker opens, is the detection
        (
            [
                fault(3, "start"),
                command(3.3, "x", status="in_doubt"),
                breaker(4, "open"),
                breaker(5, "closed"),
                fault(6, "end"),
            ],
            pytest.approx(0.3),
            pytest.approx(0.5),
        ),
        # a breaker that opened before the fault does not detect it
        (
            [breaker(1, "open"), breaker(2, "closed"), fault(3, "start"), fault(6, "end")],
            None,
            pytest.approx(0.5),
        ),
        # a breaker still open at the end: never recovered
        ([fault(3, "start"), breaker(4, "open"), fault(6, "end")], pytest.approx(1.0), None),
        # half-open is not closed
        (
            [fault(3, "start"), breaker(4, "open"), fault(6, "end"), breaker(7, "half_open")],
            pytest.approx(1.0),
            None,
        ),
        # recovered only once every source is closed, then the next remote command executed
        (
            [
                fault(3, "start"),
                breaker(4, "open"),
                breaker(4, "open", source="keyserver-1"),
                fault(6, "end"),
                breaker(6.1, "closed"),
                breaker(8.2, "closed", source="keyserver-1"),
            ],
            pytest.approx(1.0),
            pytest.approx(2.5),
        ),
        # a failed remote command after closing is not recovery; the next executed one is
        (
            [
                fault(3, "start"),
                breaker(4, "open"),
                fault(6, "end"),
                breaker(6.7, "closed"),
                command(6.8, "f", status="failed"),
            ],
            pytest.approx(1.0),
            pytest.approx(1.5),
        ),
        # at the car nothing changes: an unlock there neither detects a fault nor recovers
        (
            [fault(3, "start"), unlock(3.2, path="ble"), fault(6, "end"), unlock(6.2, path="ble")],
            None,
            pytest.approx(0.5),
        ),
    ],
)
def test_detect_and_recover(events: list[dict[str, Any]], detect: Any, recover: Any) -> None:
    r = report(quiet(*events))
    assert (r.detect_s, r.recover_s) == (detect, recover)


def test_no_fault_has_no_fault_window_and_still_passes() -> None:
    r = report(quiet())
    assert r.fault_window is None
    assert r.passed, r.failures


@pytest.mark.parametrize(
    ("ok", "attempts", "passed"),
    [(1000, 1000, True), (999, 1000, True), (998, 1000, False), (9, 10, False), (0, 0, False)],
)
def test_the_success_bar_is_exact(ok: int, attempts: int, passed: bool) -> None:
    events = [mark(0, MARK_BASELINE), mark(100, MARK_END), reconcile(101)]
    events += [unlock(k * 0.05, ok=k < ok) for k in range(attempts)]
    assert report(events).passed is passed


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"experiment_status": "failed"}, "experiment status failed"),
        ({"experiment_status": "aborted"}, "experiment status aborted"),
        ({"deviated": True}, "the steady state deviated after the fault"),
    ],
)
def test_the_experiment_must_complete_without_deviating(kwargs: Any, reason: str) -> None:
    r = report(healthy(), **kwargs)
    assert not r.passed
    assert r.failures == [reason]


def test_the_wait_at_the_car_is_nearest_rank_in_ms_per_window_and_path() -> None:
    events = [mark(0, MARK_BASELINE), mark(100, MARK_END), reconcile(101)]
    events += [fault(10, "start"), fault(40, "end")]
    events += [unlock(k * 0.5, path="ble", latency_s=(k + 1) / 1000) for k in range(100)]
    events += [unlock(60 + k, path="cloud", latency_s=0.3) for k in range(3)]
    r = report(events)
    assert r.wait_at_car["paths"]["ble"] == {"p50": 51.0, "p99": 100.0, "max": 100.0, "n": 100}
    assert r.wait_at_car["paths"]["cloud"] == {"p50": 300.0, "p99": 300.0, "max": 300.0, "n": 3}
    assert r.wait_at_car["window"]["n"] == 103
    # in the fault window: the intents whose first press came between 10 and 40 s
    assert r.wait_at_car["fault"]["n"] == 60
    assert r.wait_at_car["fault"]["max"] == 81.0  # pressed at 39.919 s


def test_a_wait_at_the_car_over_one_second_at_p99_fails_the_drill() -> None:
    slow = [unlock(4.6 + k * 0.02, path="ble", latency_s=1.5) for k in range(5)]  # from 3.1 s
    r = report([*healthy(), *slow])
    assert not r.passed
    assert "wait at the car p99 1500 ms over the fault: over 1000 ms" in r.failures
    assert "wait at the car p99 1500 ms over the window: over 1000 ms" in r.failures
    assert report([*healthy(), *slow], max_wait_p99_ms=None).passed  # not judged


def test_too_few_intents_in_the_fault_window_fail_the_drill() -> None:
    r = compute_report("redis-down", healthy())  # a real drill's bar: 100
    assert r.failures == ["3 intents at the car in the fault window, under 100"]
    busy = [unlock(3.1 + k * 0.02, path="ble") for k in range(97)]
    assert compute_report("redis-down", [*healthy(), *busy]).passed


def test_an_agent_restart_is_reported_apart_from_the_wait_at_the_car() -> None:
    killed = {**mark(4.0, "world: agent of V killed after executing c"), "vin": VIN}
    restarted = {**mark(5.2, "world: agent of V restarted"), "vin": VIN, "agent": "restarted"}
    during = unlock(6.0, path="ble", latency_s=1.8)  # pressed at 4.2, while the agent was down
    r = report([*healthy(), {**killed, "agent": "killed"}, restarted, during])
    assert r.wait_at_car["agent_restart_s"] == [pytest.approx(1.2)]
    # with the intent pressed at 4.45: both waited on the restart, whatever their wait was
    assert r.wait_at_car["agent_down"] == {"p50": 1800.0, "p99": 1800.0, "max": 1800.0, "n": 2}
    assert r.wait_at_car["window"]["max"] == 50.0
    assert r.passed, r.failures
    assert summary_table([r]).splitlines()[2].endswith(" | 1.20; max 1800 ms (2) |")


def test_cpu_use_is_reported_over_the_window_and_the_fault() -> None:
    cpu = [{"t": T0 + k + 0.5, "kind": "cpu", "busy": 0.2 + 0.1 * (3 <= k < 6), "cores": 2}
           for k in range(10)]  # fmt: skip
    r = report([*healthy(), *cpu])
    assert r.cpu["fault"] == {"mean": 30.0, "max": 30.0, "n": 3, "cores": 2}
    assert r.cpu["window"]["n"] == 10
    assert r.cpu["window"]["max"] == 30.0
    assert "| 30/30 |" in summary_table([r])


def test_a_fault_never_cleared_has_an_open_window() -> None:
    windows = fault_windows([fault(3, "start"), fault(4, "start", name="x"), fault(5, "end")])
    assert [(w.name, w.end) for w in windows] == [("redis-down", T0 + 5), ("x", None)]
    r = report(quiet(fault(3, "start")))
    assert r.fault_window == [T0 + 3, None]
    assert r.recover_s is None


def test_the_summary_has_a_row_per_drill() -> None:
    good = report(healthy())
    bad = compute_report("cloud-outage", [*healthy(), http(5, server_errors=4)])
    lines = summary_table([good, bad]).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith(
        "| redis-down | yes | 10/10 | 50/50/50 (10) | 50 (3) | ble 50 (10) | 10/10, 100 | n/a | 0 "
        "| 0 | 0/0 | 0 | 0.20 | 1.50 | 0 | – |"
    )
    assert lines[3].startswith("| cloud-outage | **no** | 10/10 |")
