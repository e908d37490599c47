"""Waiting for a condition without polling: a predicate re-checked whenever the owner says so.

``asyncio.Condition`` needs its lock to notify, so it cannot be notified from synchronous code;
this can. Used by the keyserver's channel hub and the car's cloud link (tests and drills wait on
them; nothing sleeps). No I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PredicateWaiters:
    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked now and after every ``notify``."""
        if predicate():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, waiter))
        await waiter

    def notify(self) -> None:
        waiting, self._waiters = self._waiters, []
        for predicate, waiter in waiting:
            if waiter.done():
                continue
            try:
                holds = predicate()
            except Exception as error:  # the waiter's bug, raised in the waiter
                waiter.set_exception(error)
                continue
            if holds:
                waiter.set_result(None)
            else:
                self._waiters.append((predicate, waiter))
