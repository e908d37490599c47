"""Errors raised by the vehicle agent.

AgentError           base; the message is one line for an operator
├── StateError       the durable state cannot be opened or read (damaged, newer, missing)
└── LinkError        the cloud channel could not be opened (a retry with backoff may work)
"""

from __future__ import annotations


class AgentError(Exception):
    pass


class StateError(AgentError):
    pass


class LinkError(AgentError):
    """Connecting to the keyserver failed. Always temporary from the car's point of view: the
    car retries with backoff. ``retry_after`` is the server's Retry-After, in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
