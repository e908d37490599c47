"""Errors raised by resilience.

    ResilienceError         base
    └── CallNotPermitted    a circuit breaker refused the call without running it: nothing was
                            sent, retrying is safe after ``retry_after_s`` (resilience.breaker)

A refused call never reached the dependency, so it never "may have succeeded". The parts map it at
their boundary: the keyserver's store to ``CircuitOpen``, the phone to a failure not in doubt.
"""

from __future__ import annotations


class ResilienceError(Exception):
    """Base of resilience errors."""
