"""The drills' probes for the steady-state hypothesis: plain synchronous functions taking the
stack's directory, reading the world's status and the stack's event log.

The steady state is what an owner notices: the world is warm, valid keys unlock (the fraction over
the last ``seconds``), and no request got a 5xx in that time.
"""

from __future__ import annotations

from lab.drill.chaos.access import ChaosError, call_world, recent_events


def world_warm(stack_dir: str) -> bool:
    """Whether the world says it is set up and working."""
    return call_world(stack_dir, "GET", "/status").get("warm") is True


def valid_unlock_rate(stack_dir: str, seconds: float) -> float:
    """The fraction of valid-key unlock attempts that unlocked in the last ``seconds``; an error
    if there was none (no traffic is not a steady state)."""
    unlocks = [e for e in recent_events(stack_dir, seconds, "unlock") if e.get("key") == "valid"]
    if not unlocks:
        raise ChaosError(f"no valid-key unlock attempt in the last {seconds:g} s")
    return sum(1 for e in unlocks if e.get("ok")) / len(unlocks)


def http_5xx(stack_dir: str, seconds: float) -> int:
    """The world's clients' 5xx answers in the last ``seconds``."""
    events = recent_events(stack_dir, seconds, "http")
    return sum(int(dict(e["counts"]).get("5xx", 0)) for e in events)
