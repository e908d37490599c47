"""How far this process's own event loop runs behind, and a clock that stops while it does: what
a circuit breaker times a dependency's calls on, so that our own lag is not blamed on Redis.

A call's wall time is the dependency's time plus the time our loop was busy elsewhere before it
resumed the caller. Under a storm (thousands of requests ready at once, or a loaded machine that
takes the core away) the second part alone can pass a breaker's slow-call limit while Redis
answers in a millisecond; counted as slow, it opens the breaker and turns our overload into an
outage. A heartbeat every ``interval_s`` measures the loop's lateness: the time past its due
moment before the loop got round to it is time the loop spent on other work (or the process was
not scheduled). ``clock()`` is monotonic time less all such lateness, the current beat's overdue
part included, so it is continuous and never steps back; a duration on it is what remains of a
call once our own stalls are taken out. The discount is a lower bound of our share: the
interval's own time is never counted, so a loop stalled for good still lets a call's clock
advance by about one interval per iteration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 0.02  # 50 wake-ups a second: a stall of a few tens of ms shows


class LoopLag:
    """One per dependency guard (or per process); starts beating on the running loop the first
    time ``clock()`` is read there. Time is injected; ``beat`` is public for fake-clock tests."""

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._clock = clock
        self._autostart = autostart
        self._behind_s = 0.0  # lateness of the beats so far
        self._due: float | None = None  # when the next beat is due (None: not beating)
        self.last_lag_s = 0.0  # the last beat's lateness
        self.worst_lag_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def behind_s(self, now: float) -> float:
        """All the loop's lateness until ``now``, the pending beat's overdue part included."""
        if self._due is None:
            return self._behind_s
        return self._behind_s + max(0.0, now - self._due)

    def clock(self) -> float:
        """Monotonic seconds less the loop's lateness: a call's duration on this clock leaves
        out the time our own loop made the caller wait."""
        if self._autostart:
            self._watch()
        now = self._clock()
        return now - self.behind_s(now)

    def beat(self, now: float) -> None:
        """The heartbeat ran at ``now``: count its lateness, the next one is due an interval on."""
        if self._due is not None:
            late = max(0.0, now - self._due)
            self._behind_s += late
            self.last_lag_s = late
            self.worst_lag_s = max(self.worst_lag_s, late)
        self._due = now + self.interval_s

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop = None
        self._due = None

    def _watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # read outside a loop: nothing to measure
            return
        if loop is self._loop:
            return
        # a new loop (a test's, or after a restart): the gap between loops is no one's lag
        self.stop()
        self._loop = loop
        self._due = None
        self._tick()

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self.beat(self._clock())
        self._handle = loop.call_later(self.interval_s, self._tick)
