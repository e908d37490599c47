"""How fast the world works: the rate of each activity, the surge factor, and the loop that runs
one person's (or attacker's) activities at their jittered intervals until the world stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from resilience.waiting import PredicateWaiters

log = logging.getLogger("lab.world.world")
Span = tuple[float, float]


@dataclass(frozen=True)
class Rates:
    """Seconds between two of each activity, per phone: uniform in [low, high]."""

    unlock: Span = (1.5, 2.5)  # at the car: ≥ 100 intents in a 20 s fault with 16 phones
    attack: Span = (2.5, 3.5)
    lock: Span = (8.0, 12.0)
    refresh: Span = (15.0, 25.0)
    listing: Span = (8.0, 12.0)
    share: Span = (45.0, 75.0)


class Pace:
    """The surge factor, and sleeps that end early when it changes or the world stops."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stopping = False
        self._factor = 1.0
        self._until = 0.0  # time.monotonic()
        self._generation = 0
        self._waiters = PredicateWaiters()

    @property
    def factor(self) -> float:
        return self._factor if time.monotonic() < self._until else 1.0

    def surge(self, factor: float, seconds: float) -> None:
        self._factor, self._until = factor, time.monotonic() + seconds
        self._changed()

    def stop(self) -> None:
        self.stopping = True
        self._changed()

    def interval(self, span: Span, *, surges: bool = True) -> float:
        return self.rng.uniform(*span) / (self.factor if surges else 1.0)

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the pace changes first: True then."""
        generation = self._generation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._waiters.wait_for(lambda: self._generation != generation)
                return True
        return False

    def _changed(self) -> None:
        self._generation += 1
        self._waiters.notify()


Activity = Callable[[], Awaitable[None]]


async def work(
    pace: Pace, activities: dict[str, tuple[Span, Activity]], *, name: str, surges: bool = True
) -> None:
    """Run each activity at its own jittered interval until the world stops, one at a time, or
    during a surge up to ``ceil(factor)`` at once (an app gone chatty: the request rate really
    grows by the factor, not only as far as answers come back). ``surges=False``: a person's own
    pace, which a surge of app traffic does not change (nobody walks up to their car ten times
    as often). In-flight activities finish before this returns (or are cancelled with it)."""
    now = time.monotonic()

    def interval(span: Span) -> float:
        return pace.interval(span, surges=surges)

    due = {what: now + interval(span) * pace.rng.random() for what, (span, _) in activities.items()}
    busy: set[asyncio.Task[None]] = set()

    async def run(what: str, activity: Activity) -> None:
        try:
            await activity()
        except Exception:  # a bug in one activity must not end the phone's day
            log.exception("event=world_activity_failed phone=%s activity=%s", name, what)

    async with asyncio.TaskGroup() as group:
        while not pace.stopping:
            what = min(due, key=lambda w: due[w])
            if await pace.sleep(due[what] - time.monotonic()):  # surge or stop: reschedule
                now = time.monotonic()
                for other, (span, _) in activities.items():
                    due[other] = min(due[other], now + interval(span))
                continue
            if len(busy) >= math.ceil(pace.factor if surges else 1.0):
                await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                continue
            span, activity = activities[what]
            task = group.create_task(run(what, activity))
            busy.add(task)
            task.add_done_callback(busy.discard)
            due[what] = time.monotonic() + interval(span)
