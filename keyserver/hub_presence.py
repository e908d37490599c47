"""Where each car is connected, across keyserver instances: so that the answer to a remote command
says "the car is unreachable" only when no instance holds its channel (keyserver.routes.commands).

Each instance keeps ``P car:{vin}`` = its id for the cars connected to it
(keyserver.store.redis.hub), written soon after a car connects, refreshed for every car connected
here each ``interval_s`` with a lifetime of ``ttl_s`` (so an instance that dies leaves nothing
behind for longer), and deleted when the car goes — only if it still names this instance: a car
that moved to another instance keeps that one's entry. Writes happen in one background task, never
in a request; a failed write is tried again at the next round. A look-up (one GET, in the request)
that fails or takes longer than ``lookup_timeout_s`` answers "not known to be connected" (the
phone is told to use Bluetooth: the safe side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from keyserver.errors import StoreUnavailable
from resilience.waiting import PredicateWaiters

log = logging.getLogger("keyserver.hub_presence")


@dataclass(frozen=True)
class PresencePolicy:
    interval_s: float = 10.0
    ttl_s: int = 30
    # a look-up is one GET; a slow Redis must not slow a command's answer with it
    lookup_timeout_s: float = 0.05


class CarPresence:
    def __init__(
        self,
        instance: str,
        *,
        mark_online: Callable[..., Awaitable[None]],  # (vins, instance, *, ttl_s)
        mark_offline: Callable[[str, str], Awaitable[None]],  # (vin, instance)
        lookup: Callable[[str], Awaitable[str | None]],
        local: Callable[[], Iterable[str]],  # the cars connected here now
        policy: PresencePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance = instance
        self.policy = policy or PresencePolicy()
        self._mark_online = mark_online
        self._mark_offline = mark_offline
        self._lookup = lookup
        self._local = local
        self._clock = clock
        self._arrived: set[str] = set()
        self._left: set[str] = set()
        self._wake = asyncio.Event()
        self._waiters = PredicateWaiters()
        self.rounds = 0  # completed write rounds, for tests and drills to wait on

    @property
    def pending(self) -> bool:
        """Whether arrivals or departures wait to be written."""
        return bool(self._arrived or self._left)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; checked after every round."""
        await self._waiters.wait_for(predicate)

    def attached(self, vin: str) -> None:
        self._left.discard(vin)
        self._arrived.add(vin)
        self._wake.set()

    def detached(self, vin: str) -> None:
        self._arrived.discard(vin)
        self._left.add(vin)
        self._wake.set()

    async def elsewhere(self, vin: str) -> bool:
        """Whether another instance holds the car's channel, as far as Redis says."""
        try:
            async with asyncio.timeout(self.policy.lookup_timeout_s):
                found = await self._lookup(vin)
        except (StoreUnavailable, TimeoutError):
            return False
        return found is not None and found != self.instance

    async def run(self) -> None:
        refresh_at = self._clock()
        while True:
            timeout = max(0.0, refresh_at - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            full = self._clock() >= refresh_at
            if full:
                refresh_at = self._clock() + self.policy.interval_s
            try:
                await self.write(full=full)
            except StoreUnavailable:
                pass  # kept: tried again at the next round
            except Exception:  # a bug must not end the task
                log.exception("car presence update failed")

    async def write(self, *, full: bool = False) -> None:
        """One round: the cars that left, then the ones that arrived (or all here, if ``full``).
        What fails stays to be written at the next round."""
        left, self._left = self._left, set()
        arrived, self._arrived = self._arrived, set()
        here = set(self._local())
        try:
            for vin in sorted(left - here):
                await self._mark_offline(vin, self.instance)
                left.discard(vin)
            online = sorted(here if full else arrived & here)
            if online:
                await self._mark_online(online, self.instance, ttl_s=self.policy.ttl_s)
            arrived.clear()
        finally:
            self._left |= left - here
            self._arrived |= arrived
        self.rounds += 1
        self._waiters.notify()
