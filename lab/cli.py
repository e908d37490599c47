"""The ``phonekey`` command: the demo, the benchmarks, the fleet and world simulators, the staging
stack, the fault proxy and the chaos drills; each subpackage brings its own subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lab.bench import cli as bench_cli
from lab.demo import demo
from lab.drill import cli as drill_cli
from lab.fleet import cli as fleet_cli
from lab.proxy import cli as proxy_cli
from lab.stack import cli as stack_cli
from lab.world import cli as world_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phonekey", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(commands)
    bench_cli.add_parser(commands)
    fleet_cli.add_parser(commands)
    world_cli.add_parser(commands)
    drill_cli.add_parser(commands)
    proxy_cli.add_parser(commands)
    stack_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo.run_cli(args)
    if args.command == "fleet":
        return fleet_cli.run(args)
    if args.command == "world":
        return world_cli.run(args)
    if args.command == "drill":
        return drill_cli.run(args)
    if args.command == "proxy":
        return proxy_cli.run(args)
    if args.command == "stack":
        return stack_cli.run(args)
    return bench_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
