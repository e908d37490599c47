"""The state of the car's cloud link and what it has done, for metrics and tests
(vehicle_agent.channel keeps them; vehicle_agent.remote_commands counts its commands here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class LinkState(StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"


@dataclass
class LinkStats:
    """What the link has done, for metrics and tests."""

    state: LinkState = LinkState.OFFLINE
    attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    last_error: str = ""  # the last failure (a paced refusal is not one: see ``paced``)
    paced: int = 0  # upgrades refused 429 reconnect_paced: each a slot the car came back at
    close_codes: list[int | None] = field(default_factory=list)
    revocations_applied: int = 0
    commands_executed: int = 0
    commands_refused: int = 0
    commands_replayed: int = 0
    # monotonic time the car last had a live channel (or was started): the sync lag's origin
    offline_since: float = field(default_factory=time.monotonic)

    def sync_lag(self, mono: float) -> float:
        """Seconds the car may have missed pushes for: 0 while online, else since it went off."""
        return 0.0 if self.state is LinkState.ONLINE else max(0.0, mono - self.offline_since)
