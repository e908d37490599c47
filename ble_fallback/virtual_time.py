"""An asyncio event loop on virtual time: when nothing is ready, the clock jumps to the next timer.

Everything built on the loop's clock — ``asyncio.sleep``, ``asyncio.timeout``, ``call_later``,
the simulated link's delivery — runs at once in real time, in the order real time would give.
Tests and drills run BLE scenarios with seconds of latency, retries and idle timeouts this way
and never sleep for real.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from ble_fallback.errors import BleError, BleReason

T = TypeVar("T")

#: With no timer pending, only another thread can wake the loop: wait this long (real seconds).
IDLE_REAL_WAIT = 5.0


class SimulationDeadlock(BleError, RuntimeError):
    """Nothing is ready, no timer is pending and no thread woke the loop: it would hang."""

    def __init__(self, detail: str) -> None:
        super().__init__(BleReason.SIMULATION_DEADLOCK, detail)


class _VirtualSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; a wait becomes a jump of the virtual clock."""

    def __init__(self, start: float, idle_wait: float) -> None:
        self._real = selectors.DefaultSelector()
        self.now = start
        self.idle_wait = idle_wait

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            ready = self._real.select(self.idle_wait)
            if not ready:
                raise SimulationDeadlock("no task can make progress and no timer is pending")
            return ready
        self.now += timeout
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual, starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0, *, idle_wait: float = IDLE_REAL_WAIT) -> None:
        self._virtual = _VirtualSelector(start, idle_wait)
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_simulated(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh VirtualTimeLoop and close it."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
