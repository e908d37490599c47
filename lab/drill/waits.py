"""The waits a drill reports, from the event log: the wait at the car (one person's intent, first
press to the car moving), remote commands (from afar, through the cloud), the machine's CPU use
beside them, and an agent's restarts — each as p50 / p99 / max and the sample count.

- wait at the car: ``latency_s`` of the valid ``unlock`` events (per intent: connect time, busy
  retries and a second press included), over the measured window, over the fault window (an
  intent counts there when its first press fell inside it), and per path (the path of the press
  that moved the car, or of the last answer). An intent at a car whose agent was down when it
  began (between a ``mark`` with agent "killed" and the next with agent "restarted" for that
  VIN) is reported apart: it measures the agent's restart, which is reported too.
- remote commands: the ``command`` events (a person far from the car), by status, and the
  latency of those executed.
- CPU: the ``cpu`` events (the share of the machine's time not idle, per second, from
  /proc/stat), mean and max over the window and the fault window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from lab.events import Event, of_kind
from lab.stats import percentile

Stats = dict[str, float | int | None]
WAIT_PATHS = ("ble", "cloud", "none")


def stats(samples_ms: Sequence[float]) -> Stats:
    """p50 / p99 (nearest rank) / max in ms, and n."""
    if not samples_ms:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": round(percentile(list(samples_ms), 0.50), 3),
        "p99": round(percentile(list(samples_ms), 0.99), 3),
        "max": round(max(samples_ms), 3),
        "n": len(samples_ms),
    }


def pressed_at(unlock: Event) -> float:
    """When the intent's first press came: the event is written when it ended."""
    return float(unlock["t"]) - float(unlock["latency_s"])


def agent_down(events: Sequence[Event]) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
    """(VIN -> the spans its agent was down, every restart's duration in seconds)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    killed: dict[str, float] = {}
    for mark in sorted(of_kind(events, "mark"), key=lambda e: float(e["t"])):
        vin, agent = mark.get("vin"), mark.get("agent")
        if not isinstance(vin, str):
            continue
        if agent == "killed":
            killed[vin] = float(mark["t"])
        elif agent == "restarted" and vin in killed:
            spans.setdefault(vin, []).append((killed.pop(vin), float(mark["t"])))
    for vin, began in killed.items():  # never restarted within the log
        spans.setdefault(vin, []).append((began, float("inf")))
    restarts = [round(end - begin, 3) for s in spans.values() for begin, end in s if end < 1e300]
    return spans, restarts


def wait_at_car(
    unlocks: Sequence[Event], fault: tuple[float, float] | None, events: Sequence[Event]
) -> dict[str, Any]:
    """The wait at the car: see the module docstring. ``unlocks``: the window's valid intents."""
    spans, restarts = agent_down(events)

    def down(e: Event) -> bool:
        at = pressed_at(e)
        return any(a <= at <= b for a, b in spans.get(str(e.get("vin")), ()))

    counted = [e for e in unlocks if not down(e)]

    def ms(chosen: Iterable[Event]) -> list[float]:
        return [float(e["latency_s"]) * 1000.0 for e in chosen]

    in_fault = (
        [] if fault is None else [e for e in counted if fault[0] <= pressed_at(e) <= fault[1]]
    )
    return {
        "window": stats(ms(counted)),
        "fault": stats(ms(in_fault)),
        "paths": {p: stats(ms(e for e in counted if e.get("path") == p)) for p in WAIT_PATHS},
        "agent_down": stats(ms(e for e in unlocks if down(e))),
        "agent_restart_s": restarts,
    }


def remote_commands(events: Sequence[Event], start: float, end: float) -> dict[str, Any]:
    """The window's remote commands: how many, by status, and the executed ones' latency."""
    sent = [e for e in of_kind(events, "command") if start <= float(e["t"]) <= end]
    executed = [float(e["latency_s"]) * 1000.0 for e in sent if e.get("status") == "executed"]
    by_path = Counter(str(e.get("path")) for e in sent)
    return {
        "n": len(sent),
        "status": dict(Counter(str(e.get("status")) for e in sent)),
        "paths": dict(by_path),
        "executed": stats(executed),
    }


def cpu_use(events: Sequence[Event], span: tuple[float, float] | None) -> dict[str, Any]:
    """Mean and max busy share (percent of the whole machine) over ``span``; None without data."""
    samples = [
        float(e["busy"]) * 100.0
        for e in of_kind(events, "cpu")
        if span is not None and span[0] <= float(e["t"]) <= span[1]
    ]
    cores = max((int(e["cores"]) for e in of_kind(events, "cpu")), default=None)
    if not samples:
        return {"mean": None, "max": None, "n": 0, "cores": cores}
    mean = round(sum(samples) / len(samples), 1)
    return {"mean": mean, "max": round(max(samples), 1), "n": len(samples), "cores": cores}
