"""``phonekey demo`` (``make demo``): the staging demo on the embedded default.

A keyserver process on SQLite, a car with its vehicle agent and two phones come up; the owner
pairs the car and shares a time-limited key with a friend; both unlock through the cloud; the cloud
is killed and both keep unlocking over Bluetooth while the owner's revocation of the friend reaches
the car by courier; the cloud returns and the car's audit trail catches up. Every step checks what
it did (``lab.demo.script``); the run exits 0 only if every step did what it should.

While it runs: a line per step and a live status line (``lab.demo.view``). At the end: a short
report, and in ``--out`` (default ./demo-report/) report.json, the event log (events.jsonl) and
the timeline plot (timeline.png). ``--json`` prints the report as JSON (the live view then goes to
stderr). Every wait is bounded, and nothing it started is left running, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from lab.demo import plot as demo_plot
from lab.demo.script import PHASES, DemoScript, StepFailed
from lab.demo.view import DemoReport, LiveView, StepResult
from lab.events import EventLog, read_events

DEFAULT_OUT = Path("demo-report")
STEP_LIMIT_S = 45.0  # a hang guard; above the 30 s keyserver start bound, so a start ends first
LIVE_PACE_S = 0.5  # between steps on a terminal, so a person can follow them
MAX_PACE_S = 10.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="the staging demo: cloud, outage, Bluetooth fallback, courier, recovery"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the report and plot go (./demo-report)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--pace",
        type=_pace,
        default=None,
        help="seconds between steps, for people watching (default: 0.5 on a terminal, else 0)",
    )


def _pace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= MAX_PACE_S:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_PACE_S:g}]")
    return value


def run_cli(args: argparse.Namespace) -> int:
    return run(args.out, as_json=args.json, pace=args.pace)


def run(
    out: Path = DEFAULT_OUT,
    *,
    as_json: bool = False,
    stdout: TextIO | None = None,
    live: bool | None = None,
    pace: float | None = None,
) -> int:
    """The whole demo; 0 only if every step did what it should."""
    stdout = sys.stdout if stdout is None else stdout
    view_out = sys.stderr if as_json else stdout
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"phonekey demo: cannot write to {out}: {error.strerror}", file=sys.stderr)
        return 2
    report = DemoReport()
    view_live = view_out.isatty() if live is None else live
    pace = (LIVE_PACE_S if view_live else 0.0) if pace is None else pace
    try:
        with _sigterm_as_interrupt(), _logs_to(out / "demo.log"):
            asyncio.run(_demo(out, report, view_out, view_live, pace))
    except KeyboardInterrupt:
        print("\nphonekey demo: interrupted; what it started is stopped", file=sys.stderr)
        return 130
    _write_results(out, report)
    if as_json:
        print(report.to_json(), file=stdout)
    else:
        _print_summary(report, out, stdout)
    return 0 if report.passed else 1


async def _demo(out: Path, report: DemoReport, stream: TextIO, live: bool, pace: float) -> None:
    events_path = out / "events.jsonl"
    events_path.unlink(missing_ok=True)
    report.events = str(events_path)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phonekey-demo-") as work, EventLog(events_path) as log:
        script = DemoScript(Path(work), log, report)
        view = LiveView(stream, lambda: _status(script, report), live=live)
        view.say("phonekey demo — the staging stack on the embedded default")
        refresher = asyncio.create_task(view.refresh())
        try:
            await _run_steps(script, view, log, pace)
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            view.close()  # the last status line shows the stack as the steps left it
            if script.stack is not None:
                await script.stack.close()
            report.seconds = round(time.monotonic() - started, 2)


async def _run_steps(script: DemoScript, view: LiveView, log: EventLog, pace: float) -> None:
    report = script.report
    phase, failed = "", False
    for number, title, action in script.steps():
        if number.split(".")[0] != phase:
            phase = number.split(".")[0]
            view.say(f"{phase}. {PHASES[phase]}")
        if failed:
            report.skipped.append(f"{number} {title}")
            view.skipped(number, title)
            continue
        await asyncio.sleep(pace)  # only for people watching: 0 off a terminal
        began = time.monotonic()
        try:
            async with asyncio.timeout(STEP_LIMIT_S):
                detail, ok = await action(), True
        except StepFailed as failure:
            detail, ok = str(failure), False
        except TimeoutError:
            detail, ok = f"not done within {STEP_LIMIT_S:g} s", False
        except Exception as error:  # any failure is this step's ✗, not a traceback
            detail, ok = f"{type(error).__name__}: {error}", False
        result = StepResult(number, title, ok, detail, round(time.monotonic() - began, 3))
        report.steps.append(result)
        log.emit("mark", text=f"{number} {title}: {'ok' if ok else 'failed'}")
        view.step(result)
        failed = not ok


def _status(script: DemoScript, report: DemoReport) -> str:
    stack = script.stack
    cloud = "-" if stack is None else "up" if stack.cloud_up() else "down"
    link = stack.car.link.state.value if stack is not None and stack.car is not None else "-"
    unlocks, denied = report.unlocks(), sum(report.denied().values())
    return (
        f"cloud {cloud} · car link {link} · unlocks: cloud {unlocks['cloud']},"
        f" ble {unlocks['ble']}, denied {denied}"
    )


def _write_results(out: Path, report: DemoReport) -> None:
    """The plot (a failure to draw it fails the demo) and report.json."""
    title = f"phonekey demo — cloud outage, Bluetooth fallback, courier ({report.vin or 'no car'})"
    began = time.monotonic()
    try:
        events = list(read_events(out / "events.jsonl"))
        report.plot = str(demo_plot.plot(events, out / "timeline.png", title))
        ok, detail = True, f"timeline written to {report.plot}"
    except Exception as error:  # reported as the plot step's failure
        ok, detail = False, f"no plot: {type(error).__name__}: {error}"
    report.steps.append(StepResult("6.1", "plot", ok, detail, round(time.monotonic() - began, 3)))
    (out / "report.json").write_text(report.to_json() + "\n")


def _print_summary(report: DemoReport, out: Path, stdout: TextIO) -> None:
    plot = report.steps[-1]
    mark = "✓" if plot.ok else "✗"
    print(f" {mark} {plot.number:4s} {plot.title}: {plot.detail}", file=stdout)
    print("\nreport", file=stdout)
    for line in report.summary():
        print(line, file=stdout)
    print(f"  plot             {report.plot or '-'}", file=stdout)
    print(f"  report           {out / 'report.json'}", file=stdout)
    print(f"  events           {report.events}", file=stdout)
    print(f"  logs             {out / 'demo.log'}", file=stdout)
    failed = [s for s in report.steps if not s.ok]
    if failed:
        first = failed[0]
        print(f"\nFAILED at {first.number} {first.title}: {first.detail}", file=stdout)
    else:
        print("\nevery step did what it should", file=stdout)


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The parts' own logs (the car's link, the phone client) go to a file, not over the view."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does, so its cleanup runs and stops what it started."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
