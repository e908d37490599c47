"""One chaos drill end to end: bring a staging stack up, measure a baseline, run the drill's
Chaos Toolkit experiment (``lab/drill/chaos/NAME.json``) through chaoslib while a thread records the
keyservers' breaker states and another the machine's CPU use, give the system a recover window
(then wait, bounded, until every car is online and nothing the phones left unfinished is still
queued), stop the world (which reconciles every car), compute the report from the event log,
plot it, and take the stack down — always.

Phases are written to the event log as ``mark`` events; the report's measured window runs from
"drill: baseline" to "drill: end".
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.drill.breakers import BreakerScraper
from lab.drill.chaos import DRILLS, experiment_path
from lab.drill.chaos.access import STOP_TIMEOUT_S, ChaosError, call_world
from lab.drill.cpu import CpuSampler
from lab.drill.report import (
    MARK_BASELINE,
    MARK_END,
    MAX_WAIT_P99_MS,
    MIN_FAULT_SAMPLES,
    DrillReport,
    compute_report,
    fault_windows,
    recover_after,
)
from lab.errors import LabError
from lab.events import EventLog, read_events
from lab.stack.spec import StackError, StackSpec
from lab.stack.stack import Stack

POLL_S = 0.25
SETTLE_POLL_S = 1.0
# Rollbacks run whatever happened to the method (chaoslib's default skips them after a failed
# steady state, which would leave Redis killed for the rest of the drill).
CHAOS_SETTINGS = {"runtime": {"rollbacks": {"strategy": "always"}}}


class DrillError(LabError, RuntimeError):
    """The drill could not be run (unknown name, bad settings); one line for a person."""


@dataclass(frozen=True)
class DrillSettings:
    fault_s: float = 20.0  # how long each fault is held
    baseline_s: float = 10.0  # steady traffic before the fault; also the hypothesis' window
    recover_s: float = 10.0  # after the experiment, at least this long …
    recover_max_s: float = 60.0  # … and until recovery is seen, at most this long
    settle_max_s: float = 120.0  # then until every car is online with nothing left queued
    cars: int = 8
    phones: int = 16
    #: the pass bars on the wait at the car: ≥ this many intents in the fault window, and a p99
    #: at most this (None: not judged — the test suite's short drills assert no timings)
    min_fault_samples: int = MIN_FAULT_SAMPLES
    max_wait_p99_ms: float | None = MAX_WAIT_P99_MS

    def __post_init__(self) -> None:
        if min(self.fault_s, self.baseline_s, self.recover_s) <= 0:
            raise DrillError("fault, baseline and recover seconds must be positive")
        if self.settle_max_s < 0:
            raise DrillError("settle_max_s must not be negative")
        if self.recover_max_s < self.recover_s:
            raise DrillError("recover_max_s must be at least recover_s")


@dataclass
class DrillOutcome:
    report: DrillReport
    events: list[dict[str, Any]]
    journal: dict[str, Any]


def load_experiment(name: str) -> dict[str, Any]:
    if name not in DRILLS:
        raise DrillError(f"unknown drill {name!r} (one of: {', '.join(DRILLS)})")
    experiment: dict[str, Any] = json.loads(experiment_path(name).read_text())
    return experiment


def run_drill(name: str, directory: Path, settings: DrillSettings | None = None) -> DrillOutcome:
    """Run drill ``name`` with its stack in ``directory``; the stack is down when this returns."""
    settings = settings or DrillSettings()
    experiment = load_experiment(name)
    configuration = experiment["configuration"]
    configuration.update(
        stack_dir=str(Path(directory).resolve()),
        fault_seconds=settings.fault_s,
        window_s=settings.baseline_s,
    )
    spec = StackSpec(variant=configuration["variant"], cars=settings.cars, phones=settings.phones)
    stack = Stack.up(spec, directory)
    errors: list[str] = []
    try:
        with (
            EventLog(Path(stack.state.events)) as log,
            BreakerScraper(stack.directory, log),
            CpuSampler(log),
        ):
            log.emit("mark", text=MARK_BASELINE)
            time.sleep(settings.baseline_s)  # the baseline is a span of time, not an event
            journal = _run_experiment(experiment, stack.directory)
            log.emit("mark", text="drill: recover")
            _recover_window(Path(stack.state.events), settings)
            log.emit("mark", text=_until_settled(stack.directory, settings.settle_max_s))
            log.emit("mark", text=MARK_END)
        try:
            call_world(stack.directory, "POST", "/stop", {}, timeout=STOP_TIMEOUT_S)
        except ChaosError as error:
            errors.append(f"world /stop: {error}")
    finally:
        _down(stack)
    events = list(read_events(Path(stack.state.events)))
    report = compute_report(
        name,
        events,
        experiment_status=str(journal.get("status")),
        deviated=bool(journal.get("deviated")),
        errors=[*activity_failures(journal), *errors],
        min_fault_samples=settings.min_fault_samples,
        max_wait_p99_ms=settings.max_wait_p99_ms,
    )
    return DrillOutcome(report, events, journal)


def _down(stack: Stack) -> None:
    """Take the stack down as stack.json has it now: the actions restarted processes through
    their own ``Stack``, so this object's record may name pids that are gone."""
    try:
        current = Stack.load(stack.directory)
    except StackError:
        current = stack
    current.down()


def _run_experiment(experiment: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    from chaoslib.experiment import run_experiment

    with _chaos_log(stack_dir / "logs" / "chaos.log"):
        journal: dict[str, Any] = run_experiment(experiment, settings=CHAOS_SETTINGS)
    (stack_dir / "journal.json").write_text(json.dumps(journal, indent=2, default=str))
    return journal


@contextlib.contextmanager
def _chaos_log(path: Path) -> Iterator[None]:
    """chaoslib's log lines go to the stack's logs, not to the drill's terminal."""
    logger = logging.getLogger("chaostoolkit")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    previous, logger.propagate = logger.propagate, False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous
        handler.close()


def _recover_window(events_file: Path, settings: DrillSettings) -> None:
    """At least ``recover_s``; longer (up to ``recover_max_s``) until recovery is seen."""
    began = time.monotonic()
    time.sleep(settings.recover_s)
    while time.monotonic() - began < settings.recover_max_s:
        events = list(read_events(events_file, live=True))
        ends = [w.end for w in fault_windows(events) if w.end is not None]
        if not ends or recover_after(events, max(ends)) is not None:
            return
        time.sleep(POLL_S)


def _until_settled(stack_dir: Path, seconds: float) -> str:
    """Wait (bounded) until every car of the world is online and no accepted command the phones
    left unfinished is still open at the keyserver: a car still backing off after the fault is
    late, not lost. The ``mark`` text saying how it ended."""
    began = time.monotonic()
    answer: dict[str, Any] = {}
    while True:
        with contextlib.suppress(ChaosError):
            answer = call_world(stack_dir, "GET", "/pending")
            if answer.get("cars_online") == answer.get("cars") and not answer.get(
                "pending_commands"
            ):
                return f"drill: settled after {time.monotonic() - began:.1f} s"
        if time.monotonic() - began >= seconds:
            return (
                f"drill: not settled after {seconds:g} s: {answer.get('cars_online')}/"
                f"{answer.get('cars')} cars online, pending {answer.get('pending')}"
            )
        time.sleep(SETTLE_POLL_S)


def activity_failures(journal: dict[str, Any]) -> list[str]:
    """One line per activity of the experiment that failed (method, hypothesis or rollback)."""
    states = journal.get("steady_states") or {}
    phases = [
        ("steady state before the fault", (states.get("before") or {}).get("probes")),
        ("method", journal.get("run")),
        ("steady state after the fault", (states.get("after") or {}).get("probes")),
        ("rollback", journal.get("rollbacks")),
    ]
    found = []
    for phase, runs in phases:
        for run in runs or ():
            if run.get("status") == "failed" or run.get("tolerance_met") is False:
                name = run.get("activity", {}).get("name", "?")
                tolerance = "outside its tolerance: " + repr(run.get("output"))
                detail = str((run.get("exception") or [tolerance])[-1]).strip()
                found.append(f"{phase}: {name}: {detail}")
    return found
