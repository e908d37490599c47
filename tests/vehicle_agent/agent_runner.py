"""A vehicle agent as a process of its own, for the kill -9 tests (test_channel.py).

    python -m tests.vehicle_agent.agent_runner STATE MOVES BOOT_ID [--die-after finish|actuate]

It runs the real ``Vehicle`` and ``CloudLink`` over a provisioned state file. Its actuator writes
each movement to MOVES (fsync'd), so movements can be counted across the agent's lives.
``--die-after`` makes it SIGKILL itself at one exact point of a command: ``actuate`` once the car
has moved (before the outcome is recorded), ``finish`` once the outcome is recorded (before the
keyserver has acknowledged it). Test-only: the daemon's own CLI is ``vehicle-agent run``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from keycore import Action
from tests.vehicle_agent.channel_harness import FAST
from vehicle_agent.channel import CloudLink
from vehicle_agent.state import AgentState
from vehicle_agent.vehicle import Vehicle


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FileActuator:
    def __init__(self, path: Path, *, die_after_moving: bool) -> None:
        self.path = path
        self.die_after_moving = die_after_moving

    async def perform(self, action: Action) -> None:
        with self.path.open("a") as log:
            log.write(action.name.lower() + "\n")
            log.flush()
            os.fsync(log.fileno())
        if self.die_after_moving:
            die()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state", type=Path)
    parser.add_argument("moves", type=Path)
    parser.add_argument("boot_id")
    parser.add_argument("--die-after", choices=["finish", "actuate"])
    args = parser.parse_args()
    state = AgentState.open(args.state)
    if args.die_after == "finish":
        record = state.finish_command

        def finish_then_die(command_id: str, status: str, detail: str, *, at: float) -> None:
            record(command_id, status, detail, at=at)
            die()

        state.finish_command = finish_then_die  # type: ignore[method-assign]
    actuator = FileActuator(args.moves, die_after_moving=args.die_after == "actuate")
    vehicle = Vehicle.load(state, actuator, boot_id=args.boot_id)
    asyncio.run(CloudLink(vehicle, policy=FAST).run())


if __name__ == "__main__":
    main()
