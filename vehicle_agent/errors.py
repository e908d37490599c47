"""Errors raised by the vehicle agent.

AgentError               base; the message is one line for an operator
├── StateError           the durable state cannot be opened or read (damaged, newer, missing)
├── ConfigError          a configuration value or file is refused (vehicle_agent.config)
├── ProvisioningError    provisioning with the keyserver failed (vehicle_agent.provision)
├── ActuatorError        the car refused or failed to move; ``may_have_moved`` says whether that
│                        is unknown (vehicle_agent.actuator)
└── LinkError            the cloud channel could not be opened (a retry with backoff may work)
    └── LinkPaced        the keyserver gave the car a slot to reconnect at (429 reconnect_paced)
"""

from __future__ import annotations


class AgentError(Exception):
    pass


class StateError(AgentError):
    pass


class LinkError(AgentError):
    """Connecting to the keyserver failed. Always temporary from the car's point of view: the
    car retries with backoff. ``retry_after`` is the server's Retry-After, in seconds, if any."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status the upgrade was refused with, if it was answered


class LinkPaced(LinkError):
    """The keyserver admits reconnects at the rate it can carry and gave this car a slot
    ``retry_after`` seconds from now. Not a failure: the car comes back then, without backing
    off further, and neither its throttle nor its link breaker counts it."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"reconnect paced: come back in {retry_after:g} s", retry_after=retry_after, status=429
        )
        self.slot_s = retry_after
