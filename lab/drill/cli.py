"""``phonekey drill NAME|all``: the command line of the chaos drills (``lab.drill.drill``).

``phonekey drill NAME [--json PATH] [--plot PATH]`` runs one drill and prints its figures;
``phonekey drill all [--out DIR]`` runs every drill and writes DIR/NAME.json, DIR/NAME.png and
DIR/summary.md. Exit 0 only if every drill run passed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lab.cli_types import seconds_up_to
from lab.drill.chaos import DRILLS
from lab.drill.chaos.access import ChaosError
from lab.drill.drill import DrillError, DrillOutcome, DrillSettings, run_drill
from lab.drill.report import DrillReport, summary_table
from lab.processes.base import ProcessError
from lab.stack.spec import StackError

DEFAULT_OUT = Path("docs/drills")
MAX_SECONDS = 600.0
SECONDS = seconds_up_to(MAX_SECONDS)


def add_parser(commands: Any) -> None:
    drill = commands.add_parser(
        "drill",
        help="run a chaos drill (or all of them) against a fresh staging stack",
        description="Bring up a staging stack, run the drill's Chaos Toolkit experiment "
        "(lab/drill/chaos/NAME.json), measure, plot, take the stack down. Drills: "
        + ", ".join(DRILLS),
    )
    drill.add_argument("name", help="a drill's name, or 'all'")
    drill.add_argument("--json", type=Path, help="one drill: write its report here")
    drill.add_argument("--plot", type=Path, help="one drill: write its PNG timeline here")
    drill.add_argument("--out", type=Path, help=f"all: the reports' directory ({DEFAULT_OUT})")
    drill.add_argument("--seconds", type=SECONDS, default=20.0, help="how long each fault holds")
    drill.add_argument("--baseline", type=SECONDS, default=10.0, help="seconds before the fault")
    drill.add_argument("--recover", type=SECONDS, default=10.0, help="seconds after it, at least")
    drill.add_argument("--keep", action="store_true", help="keep each stack's directory")


def run(args: argparse.Namespace) -> int:
    if args.name != "all" and args.name not in DRILLS:
        print(
            f"phonekey: unknown drill {args.name!r}; drills: all, {', '.join(DRILLS)}",
            file=sys.stderr,
        )
        return 2
    if args.name == "all" and (args.json or args.plot):
        print("phonekey: --json and --plot are for one drill; use --out with all", file=sys.stderr)
        return 2
    if args.name != "all" and args.out:
        print("phonekey: --out is for 'drill all'; use --json and --plot", file=sys.stderr)
        return 2
    try:
        settings = DrillSettings(
            fault_s=args.seconds,
            baseline_s=args.baseline,
            recover_s=args.recover,
            recover_max_s=max(60.0, args.recover),
        )
    except DrillError as error:
        print(f"phonekey: {error}", file=sys.stderr)
        return 2
    if args.name == "all":
        return _run_all(args.out or DEFAULT_OUT, settings, keep=args.keep)
    outcome = _run_one(args.name, settings, keep=args.keep)
    if outcome is None:
        return 1
    if args.json:
        _write(args.json, outcome.report.to_json() + "\n")
    if args.plot:
        _plot(outcome, args.plot)
    print(summary_table([outcome.report]), end="")
    _print_failures(outcome.report)
    return 0 if outcome.report.passed else 1


def _run_one(name: str, settings: DrillSettings, *, keep: bool) -> DrillOutcome | None:
    directory = Path(tempfile.mkdtemp(prefix=f"phonekey-drill-{name}-"))
    print(f"drill {name}: stack in {directory}", file=sys.stderr)
    try:
        outcome = run_drill(name, directory, settings)
    except (DrillError, StackError, ProcessError, ChaosError) as error:
        print(
            f"phonekey: drill {name}: {error} (stack directory kept: {directory})", file=sys.stderr
        )
        return None
    if outcome.report.passed and not keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"drill {name}: stack directory kept: {directory}", file=sys.stderr)
    return outcome


def _run_all(out: Path, settings: DrillSettings, *, keep: bool) -> int:
    reports: list[DrillReport] = []
    broken: list[str] = []
    for name in DRILLS:
        outcome = _run_one(name, settings, keep=keep)
        if outcome is None:
            broken.append(name)
            continue
        _write(out / f"{name}.json", outcome.report.to_json() + "\n")
        _plot(outcome, out / f"{name}.png")
        _print_failures(outcome.report)
        reports.append(outcome.report)
    table = summary_table(reports)
    if broken:
        table += f"\nCould not run: {', '.join(broken)}.\n"
    _write(out / "summary.md", table)
    print(table, end="")
    return 0 if all(r.passed for r in reports) and not broken else 1


def _plot(outcome: DrillOutcome, path: Path) -> None:
    from lab.drill.timeline import plot

    verdict = "passed" if outcome.report.passed else "FAILED"
    plot(outcome.events, path, f"drill {outcome.report.drill}: {verdict}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _print_failures(report: DrillReport) -> None:
    for line in report.failures:
        print(f"drill {report.drill}: {line}", file=sys.stderr)
