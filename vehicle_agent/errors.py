"""Errors raised by the vehicle agent.

AgentError           base; the message is one line for an operator
└── StateError       the durable state cannot be opened or read (damaged, newer, missing)
"""

from __future__ import annotations


class AgentError(Exception):
    pass


class StateError(AgentError):
    pass
