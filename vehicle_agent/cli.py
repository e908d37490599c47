"""The ``vehicle-agent`` command: ``provision`` a car, show its pairing code, ``run`` the daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from runtime.settings import refuse
from vehicle_agent.config import ConfigError, load
from vehicle_agent.daemon import run_agent
from vehicle_agent.errors import AgentError
from vehicle_agent.provision import PairingCode, pairing_code, provision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vehicle-agent", description="phonekey vehicle agent")
    parser.add_argument("--version", action="version", version=version("phonekey"))
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("provision", "make the car's key, register it, show the owner pairing code"),
        ("pairing-code", "show a new one-time owner pairing code"),
        ("run", "run the agent: offline decisions, cloud link, metrics"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path, help="TOML file; PHONEKEY_AGENT_* override")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        return refuse("vehicle-agent", error)
    try:
        if args.command == "run":
            asyncio.run(run_agent(config))
            return 0
        action = provision if args.command == "provision" else pairing_code
        code = asyncio.run(action(config))
    except AgentError as error:
        print(f"vehicle-agent: {error}", file=sys.stderr)
        return 1
    _show(config.vin, code)
    return 0


def _show(vin: str, code: PairingCode) -> None:
    until = time.strftime("%H:%M:%S UTC", time.gmtime(code.expires_at))
    print(f"vehicle {vin}: owner pairing code {code.shown()} (single use, until {until})")


if __name__ == "__main__":
    sys.exit(main())
