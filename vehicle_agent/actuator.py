"""The actuator: what actually locks, unlocks and starts the car. One interface, a simulation.

The real actuator (CAN bus, body controller) plugs in behind ``Actuator``; the simulated one
records every movement, so tests and drills can count how often a command really ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from keycore import Action
from vehicle_agent.errors import AgentError

ACTUATED = frozenset({Action.UNLOCK, Action.LOCK, Action.START, Action.TRUNK, Action.CLIMATE})


class ActuatorError(AgentError):
    """The car refused or failed to move; ``may_have_moved`` tells whether it is unknown."""

    def __init__(self, message: str, *, may_have_moved: bool) -> None:
        super().__init__(message)
        self.may_have_moved = may_have_moved


class Actuator(Protocol):
    async def perform(self, action: Action) -> None:
        """Move the car; raise ActuatorError if it could not."""


@dataclass
class SimulatedActuator:
    """Records each action performed, in order; optionally refuses some."""

    performed: list[Action] = field(default_factory=list)
    refuse: frozenset[Action] = frozenset()
    locked: bool = True
    running: bool = False

    async def perform(self, action: Action) -> None:
        if action not in ACTUATED:
            raise ActuatorError(f"{action.name.lower()} is not an actuation", may_have_moved=False)
        if action in self.refuse:
            raise ActuatorError(f"{action.name.lower()} refused by the car", may_have_moved=False)
        self.performed.append(action)
        if action is Action.UNLOCK:
            self.locked = False
        elif action is Action.LOCK:
            self.locked = True
        elif action is Action.START:
            self.running = True
