"""A drill's figures, computed from the stack's event log alone: events in, a ``DrillReport`` out.

Definitions (the drill writes the ``mark`` events; everything else comes from the world, the
breaker scraper and the chaos actions — see ``lab.events``):

- measured window: from the ``mark`` "drill: baseline" to the last ``mark`` "drill: end" (the
  end of the recover window); without them, the first and the last event.
- unlock_attempts / unlock_ok: ``unlock`` events with key "valid" inside the measured window,
  and those of them with ok. A valid ``unlock`` event is one person's intent at the car: up to
  two presses of the button (the second only when the first did not move the car).
- unlock_presses / unlock_second_press: the presses of those intents (``presses``, 1 when the
  event has none), and how many intents needed a second press.
- invalid_accepted: ``unlock`` events with any other key and ok, anywhere in the log.
- http_5xx: the sum of the "5xx" counts of every ``http`` event in the log.
- commands_doubled: command ids executed more than once, by the ``reconcile`` event's per-car
  ``executed`` counts or by the number of ``actuation`` events carrying the id.
- commands_lost: ids of accepted ``command`` events (the keyserver took them) neither executed on
  a car (``reconcile`` or ``actuation``) nor final "failed"/"expired" in ``reconcile.commands``;
  an accepted command without an id cannot be traced and counts as lost.
- revocations_lost: accepted ``revocation`` events whose key id the target car does not enforce
  at reconcile (so all of them when there is no ``reconcile`` event).
- detect_s: first fault start → the first breaker opening or the first remote command (a
  ``command`` event, from afar) that did not execute, at or after it, whichever comes first;
  None without either (a fault no defence has to notice and nobody far away felt).
- recover_s: last fault end → the first remote command executed after every breaker is closed for
  good (each breaker's last state is closed; from its last change on); None if that never
  happened.
- wait_at_car, remote_commands, cpu: ``lab.drill.waits`` (p50 / p99 / max in ms, nearest
  rank, and n; the wait at the car over the window, the fault window and per path).

A drill passes only if unlock_ok / unlock_attempts >= 99.9 % (and there was an attempt), the wait
at the car is at most 1 s at p99 over the window and over the fault window, with at least
``MIN_FAULT_SAMPLES`` intents in the fault window (fewer and its p99 is one person's bad luck),
nothing invalid was accepted, no 5xx, no command lost or doubled, no revocation lost, the
experiment's status is "completed" without deviating, and no activity of it failed
(``errors``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from lab.drill.waits import cpu_use, remote_commands, wait_at_car
from lab.events import Event, of_kind

MARK_BASELINE = "drill: baseline"
MARK_END = "drill: end"
MIN_UNLOCK_RATE = Fraction(999, 1000)  # exact: no float rounding at the bar
OPEN_STATES = frozenset({"open", "forced_open"})
CLOSED_STATES = frozenset({"closed", "disabled"})  # a disabled breaker lets every call through
FINAL_NOT_EXECUTED = frozenset({"failed", "expired"})
MAX_WAIT_P99_MS = 1000.0  # G8: a person at the car never waits on the cloud
MIN_FAULT_SAMPLES = 100  # intents at the car inside the fault window: p99 is then a real rank
MAX_LISTED = 20  # ids listed in the report for a person to look up; the counts are exact


@dataclass(frozen=True)
class FaultWindow:
    name: str
    start: float
    end: float | None  # None: the fault was never marked cleared


@dataclass
class DrillReport:
    drill: str
    passed: bool
    unlock_attempts: int
    unlock_ok: int
    unlock_failures: dict[str, int]  # "path: reason" -> failed valid unlocks of the window
    invalid_attempts: int
    invalid_accepted: int
    http_5xx: int
    commands_accepted: int
    commands_lost: int
    commands_doubled: int
    revocations_accepted: int
    revocations_lost: int
    detect_s: float | None
    recover_s: float | None
    wait_at_car: dict[str, Any]  # window / fault / paths: {"p50", "p99", "max" (ms), "n"}
    remote_commands: dict[str, Any]  # from afar: n, by status and path, executed latency
    cpu: dict[str, Any]  # "window" / "fault": the machine's busy %, mean and max
    fault_window: list[float | None] | None  # [start, end], unix seconds
    window: list[float]  # the measured window, unix seconds
    experiment_status: str  # chaoslib's journal status
    deviated: bool
    reconciled: bool  # the world's reconcile event was found
    errors: list[str] = field(default_factory=list)  # failed activities, a failed world stop
    failures: list[str] = field(default_factory=list)  # why it did not pass, one line each
    lost_commands: list[str] = field(default_factory=list)
    doubled_commands: list[str] = field(default_factory=list)
    lost_revocations: list[str] = field(default_factory=list)
    unlock_presses: int = 0  # button presses of the window's valid unlock intents
    unlock_second_press: int = 0  # intents that needed a second press

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def measured_window(events: Sequence[Event]) -> tuple[float, float]:
    marks = of_kind(events, "mark")
    starts = [e["t"] for e in marks if e.get("text") == MARK_BASELINE]
    ends = [e["t"] for e in marks if e.get("text") == MARK_END]
    times = [float(e["t"]) for e in events] or [0.0]
    start = float(starts[0]) if starts else min(times)
    end = float(ends[-1]) if ends else max(times)
    return start, end


def fault_windows(events: Iterable[Event]) -> list[FaultWindow]:
    """Each fault from its start to the next end of the same name, in order of start."""
    windows: list[FaultWindow] = []
    open_faults: dict[str, float] = {}
    for event in sorted(of_kind(events, "fault"), key=lambda e: float(e["t"])):
        name, t = str(event["name"]), float(event["t"])
        if event.get("phase") == "start" and name not in open_faults:
            open_faults[name] = t
        elif event.get("phase") == "end" and name in open_faults:
            windows.append(FaultWindow(name, open_faults.pop(name), t))
    windows.extend(FaultWindow(name, start, None) for name, start in open_faults.items())
    return sorted(windows, key=lambda w: w.start)


def valid_unlocks(events: Iterable[Event], start: float, end: float) -> list[Event]:
    return [
        e
        for e in of_kind(events, "unlock")
        if e.get("key") == "valid" and start <= float(e["t"]) <= end
    ]


def _executions(events: Sequence[Event], reconcile: Event | None) -> Counter[str]:
    """Times each command id was executed: the larger of the car's count and the actuations."""
    by_car: Counter[str] = Counter()
    if reconcile is not None:
        for car in dict(reconcile.get("cars") or {}).values():
            for command_id, times in dict(car.get("executed") or {}).items():
                by_car[str(command_id)] += int(times)
    actuated = Counter(
        str(e["command_id"]) for e in of_kind(events, "actuation") if e.get("command_id")
    )
    return Counter({cid: max(by_car[cid], actuated[cid]) for cid in by_car.keys() | actuated})


def _lost_commands(
    events: Sequence[Event], executed: Counter[str], reconcile: Event | None
) -> tuple[int, list[str], int]:
    """(accepted commands, ids lost, accepted commands without an id)."""
    final = dict(reconcile.get("commands") or {}) if reconcile is not None else {}
    accepted = [e for e in of_kind(events, "command") if e.get("accepted")]
    ids = {str(e["command_id"]) for e in accepted if e.get("command_id")}
    untraced = sum(1 for e in accepted if not e.get("command_id"))
    lost = sorted(
        cid for cid in ids if executed[cid] < 1 and final.get(cid) not in FINAL_NOT_EXECUTED
    )
    return len(ids) + untraced, lost, untraced


def _lost_revocations(events: Sequence[Event], reconcile: Event | None) -> tuple[int, list[str]]:
    cars = dict(reconcile.get("cars") or {}) if reconcile is not None else {}
    accepted = {
        (str(e["vin"]), str(e["key_id"])) for e in of_kind(events, "revocation") if e["accepted"]
    }
    lost = sorted(
        f"{vin}/{key_id}"
        for vin, key_id in accepted
        if key_id not in {str(k) for k in (cars.get(vin) or {}).get("revoked_keys") or ()}
    )
    return len(accepted), lost


def detect_after(events: Sequence[Event], fault_start: float) -> float | None:
    opened = [
        float(e["t"])
        for e in of_kind(events, "breaker")
        if e.get("state") in OPEN_STATES and float(e["t"]) >= fault_start
    ]
    felt = [
        float(e["t"])
        for e in of_kind(events, "command")
        if e.get("status") != "executed" and float(e["t"]) >= fault_start
    ]
    first = min(opened + felt, default=None)
    return None if first is None else round(first - fault_start, 3)


def recover_after(events: Sequence[Event], fault_end: float) -> float | None:
    last_change: dict[tuple[str, str], Event] = {}
    for event in sorted(of_kind(events, "breaker"), key=lambda e: float(e["t"])):
        last_change[(str(event["source"]), str(event["name"]))] = event
    if any(e.get("state") not in CLOSED_STATES for e in last_change.values()):
        return None
    closed_for_good = max([fault_end, *(float(e["t"]) for e in last_change.values())])
    served = [
        float(e["t"])
        for e in of_kind(events, "command")
        if e.get("status") == "executed" and float(e["t"]) >= closed_for_good
    ]
    return round(min(served) - fault_end, 3) if served else None


def compute_report(
    drill: str,
    events: Sequence[Event],
    *,
    experiment_status: str = "completed",
    deviated: bool = False,
    errors: Sequence[str] = (),
    min_fault_samples: int = MIN_FAULT_SAMPLES,
    max_wait_p99_ms: float | None = MAX_WAIT_P99_MS,
) -> DrillReport:
    """The report of one drill from every event of its stack's log (any order)."""
    events = sorted(events, key=lambda e: float(e["t"]))
    start, end = measured_window(events)
    unlocks = valid_unlocks(events, start, end)
    invalid = [e for e in of_kind(events, "unlock") if e.get("key") != "valid"]
    reconciles = of_kind(events, "reconcile")
    reconcile = reconciles[-1] if reconciles else None
    executed = _executions(events, reconcile)
    commands_accepted, lost, _untraced = _lost_commands(events, executed, reconcile)
    revocations_accepted, lost_revocations = _lost_revocations(events, reconcile)
    doubled = sorted(cid for cid, times in executed.items() if times > 1)
    windows = fault_windows(events)
    fault_end = max((w.end for w in windows if w.end is not None), default=None)
    fault = (windows[0].start, fault_end if fault_end is not None else end) if windows else None
    report = DrillReport(
        drill=drill,
        passed=False,
        unlock_attempts=len(unlocks),
        unlock_ok=sum(1 for e in unlocks if e.get("ok")),
        unlock_failures=dict(
            Counter(f"{e.get('path')}: {e.get('reason')}" for e in unlocks if not e.get("ok"))
        ),
        invalid_attempts=len(invalid),
        invalid_accepted=sum(1 for e in invalid if e.get("ok")),
        http_5xx=sum(int(dict(e["counts"]).get("5xx", 0)) for e in of_kind(events, "http")),
        commands_accepted=commands_accepted,
        commands_lost=len(lost) + _untraced,
        commands_doubled=len(doubled),
        revocations_accepted=revocations_accepted,
        revocations_lost=len(lost_revocations),
        detect_s=detect_after(events, windows[0].start) if windows else None,
        recover_s=recover_after(events, fault_end) if fault_end is not None else None,
        wait_at_car=wait_at_car(unlocks, fault, events),
        remote_commands=remote_commands(events, start, end),
        cpu={"window": cpu_use(events, (start, end)), "fault": cpu_use(events, fault)},
        fault_window=[windows[0].start, fault_end] if windows else None,
        window=[start, end],
        experiment_status=experiment_status,
        deviated=deviated,
        reconciled=reconcile is not None,
        errors=list(errors),
        lost_commands=lost[:MAX_LISTED],
        doubled_commands=doubled[:MAX_LISTED],
        lost_revocations=lost_revocations[:MAX_LISTED],
        unlock_presses=sum(_presses(e) for e in unlocks),
        unlock_second_press=sum(1 for e in unlocks if _presses(e) > 1),
    )
    report.failures = failures(
        report, min_fault_samples=min_fault_samples, max_wait_p99_ms=max_wait_p99_ms
    )
    report.passed = not report.failures
    return report


def _presses(unlock: Event) -> int:
    presses = unlock.get("presses", 1)
    return presses if isinstance(presses, int) and not isinstance(presses, bool) else 1


def failures(
    report: DrillReport,
    *,
    min_fault_samples: int = MIN_FAULT_SAMPLES,
    max_wait_p99_ms: float | None = MAX_WAIT_P99_MS,
) -> list[str]:
    """Why the report does not pass; empty when it does."""
    found: list[str] = []
    if report.unlock_attempts == 0:
        found.append("no valid unlock attempt in the measured window")
    elif Fraction(report.unlock_ok, report.unlock_attempts) < MIN_UNLOCK_RATE:
        found.append(f"valid unlocks {report.unlock_ok}/{report.unlock_attempts} under 99.9 %")
    for span in ("window", "fault"):
        p99 = report.wait_at_car[span]["p99"]
        if max_wait_p99_ms is not None and p99 is not None and p99 > max_wait_p99_ms:
            found.append(
                f"wait at the car p99 {p99:.0f} ms over the {span}: over {max_wait_p99_ms:g} ms"
            )
    in_fault = report.wait_at_car["fault"]["n"]
    if report.fault_window is not None and in_fault < min_fault_samples:
        found.append(
            f"{in_fault} intents at the car in the fault window, under {min_fault_samples}"
        )
    for name in ("invalid_accepted", "http_5xx", "commands_lost", "commands_doubled"):
        if getattr(report, name):
            found.append(f"{name} = {getattr(report, name)}")
    if report.revocations_lost:
        found.append(f"revocations_lost = {report.revocations_lost}")
    if report.experiment_status != "completed":
        found.append(f"experiment status {report.experiment_status}")
    if report.deviated:
        found.append("the steady state deviated after the fault")
    found.extend(report.errors)
    return found


SUMMARY_COLUMNS = (
    "drill", "passed", "unlock ok/attempts", "wait at car p50/p99/max ms (n)",
    "in fault p99 ms (n)", "p99 by path ms (n)", "remote executed/sent, p99 ms",
    "CPU % in fault mean/max", "invalid accepted", "5xx", "commands lost/doubled",
    "revocations lost", "detect s", "recover s", "second presses",
    "agent down: restart s, waits (n)",
)  # fmt: skip


def summary_table(reports: Iterable[DrillReport]) -> str:
    """A Markdown table with one row per drill."""
    rows = [
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|",
    ]
    for r in reports:
        cells = (
            r.drill,
            "yes" if r.passed else "**no**",
            f"{r.unlock_ok}/{r.unlock_attempts}",
            _wait(r.wait_at_car["window"]),
            f"{_ms(r.wait_at_car['fault']['p99'])} ({r.wait_at_car['fault']['n']})",
            _by_path(r.wait_at_car["paths"]),
            _remote(r.remote_commands),
            _cpu(r.cpu["fault"]),
            str(r.invalid_accepted),
            str(r.http_5xx),
            f"{r.commands_lost}/{r.commands_doubled}",
            str(r.revocations_lost),
            _figure(r.detect_s),
            _figure(r.recover_s),
            str(r.unlock_second_press),
            _agent_down(r.wait_at_car),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _figure(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _ms(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _wait(stats: dict[str, Any]) -> str:
    return f"{_ms(stats['p50'])}/{_ms(stats['p99'])}/{_ms(stats['max'])} ({stats['n']})"


def _by_path(paths: dict[str, Any]) -> str:
    shown = [f"{path} {_ms(stats['p99'])} ({stats['n']})" for path, stats in paths.items()
             if stats["n"]]  # fmt: skip
    return " · ".join(shown) or "n/a"


def _remote(remote: dict[str, Any]) -> str:
    executed = remote["executed"]
    return f"{executed['n']}/{remote['n']}, {_ms(executed['p99'])}"


def _cpu(cpu: dict[str, Any]) -> str:
    return "n/a" if cpu["mean"] is None else f"{cpu['mean']:.0f}/{cpu['max']:.0f}"


def _agent_down(wait: dict[str, Any]) -> str:
    restarts = wait["agent_restart_s"]
    if not restarts:
        return "–"
    down = wait["agent_down"]
    seconds = ", ".join(f"{s:.2f}" for s in restarts)
    return f"{seconds}; max {_ms(down['max'])} ms ({down['n']})"
