"""``phonekey stack up|status|down``: the staging stack's command line (``lab.stack.stack``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lab.stack.spec import (
    DEFAULT_DIR,
    MAX_CARS,
    MAX_KEYSERVERS,
    MAX_PHONES,
    VARIANTS,
    StackError,
    StackSpec,
)
from lab.stack.stack import Stack


def add_parser(commands: Any) -> None:
    stack = commands.add_parser(
        "stack",
        help="the local staging stack: up, status, down",
        description="Start, inspect and stop every process of a staging deployment on this "
        "machine (loopback ports, detached, described by DIR/stack.json).",
    )
    which = stack.add_subparsers(dest="stack_command", required=True)
    up = which.add_parser("up", help="start the stack and wait until it is ready")
    status = which.add_parser("status", help="each process: pid, alive, port, log, metrics")
    down = which.add_parser("down", help="stop every process of the stack")
    for sub in (up, status, down):
        sub.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help=f"stack directory ({DEFAULT_DIR})"
        )
    up.add_argument("--variant", choices=VARIANTS, default="embedded")
    up.add_argument(
        "--keyservers", type=_bounded(1, MAX_KEYSERVERS), help="default: 1 embedded, 2 ha"
    )
    up.add_argument("--cars", type=_bounded(1, MAX_CARS), default=8, help="the world's cars")
    up.add_argument("--phones", type=_bounded(1, MAX_PHONES), default=16, help="its phones")
    up.add_argument("--no-world", action="store_true", help="start without the world")
    status.add_argument("--json", action="store_true", help="print stack.json with liveness")


def run(args: argparse.Namespace) -> int:
    try:
        if args.stack_command == "up":
            try:
                spec = StackSpec(
                    variant=args.variant,
                    keyservers=args.keyservers,
                    cars=args.cars,
                    phones=args.phones,
                    world=not args.no_world,
                )
            except StackError as error:
                print(f"phonekey stack: {error}", file=sys.stderr)
                return 2
            stack = Stack.up(spec, args.dir)
            print(_table(stack))
            return 0
        stack = Stack.load(args.dir)
        if args.stack_command == "down":
            stack.down()
            print(f"stack in {stack.directory} is down")
            return 0
        if args.json:
            record = asdict(stack.state)
            record["processes"] = stack.status()
            print(json.dumps(record, indent=2))
        else:
            print(_table(stack))
        return 0
    except (StackError, OSError) as error:
        print(f"phonekey stack: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # up has stopped what it started
        print("phonekey stack: interrupted", file=sys.stderr)
        return 130


def _table(stack: Stack) -> str:
    lines = [f"{stack.variant} stack in {stack.directory}"]
    for url_name, url in stack.urls.items():
        lines.append(f"  {url_name:7s} {url}")
    lines.append(f"  {'name':12s} {'pid':>7s} {'alive':5s} {'port':>5s}  metrics / log")
    for process in stack.status():
        alive = "yes" if process["alive"] else "DEAD"
        port = "" if process["port"] is None else str(process["port"])
        lines.append(
            f"  {process['name']:12s} {process['pid'] or '':>7} {alive:5s} {port:>5s}"
            f"  {process['metrics'] or '-'}  {process['log']}"
        )
    return "\n".join(lines)


def _bounded(lo: int, hi: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}…{hi}")
        return value

    return parse
