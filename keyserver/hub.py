"""Which cars are connected to this keyserver process, and the pushes addressed to them.

The cloud↔car channel (keyserver.routes.channel) registers each car's connection here. Two events
must reach a car wherever it is connected: a revocation appended to its ledger
(``revoked``: keyserver.issuance calls it after every append) and a new remote command
(``command``). Each is delivered at once to a car connected to this process
(``deliver_revoked`` / ``deliver_command``) and handed to the ``relay``, if there is one: with
the Redis store, keyserver.hub_bridge publishes it to the other instances, which deliver it to
the car where it is connected; the relay also hears which cars come and go here, so any
instance can tell whether a car is connected somewhere (``elsewhere``, keyserver.hub_presence).
With the embedded SQLite store (one node) there is no relay.
A car gets its revocation delta and pending commands again every time it connects, so a lost
relay costs time, never a revocation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from resilience.waiting import PredicateWaiters


class CarConnection(Protocol):
    """What the hub needs of one connected car (keyserver.routes.channel.CarSession)."""

    @property
    def vin(self) -> str: ...

    def push_revocations(self) -> None:
        """Send the car what was revoked since the sequence it holds (soon, not now)."""

    def push_command(self, command_id: str, document: bytes) -> None:
        """Send the car a signed command (soon, not now)."""

    def held_revocations(self) -> tuple[int, int] | None:
        """(the last ledger sequence the car holds, the sequence it holds, which is higher after
        a list signed during a store outage), or None before the car has synced."""

    def push_revocation_list(self, sequence: int, document: bytes) -> None:
        """Send the car a list signed during a store outage; it now holds ``sequence``."""

    async def close(self, code: int, message: bytes) -> None: ...


class HubRelay(Protocol):
    """Where the hub hands each event for the cars connected to other instances, and which cars
    come and go here. These calls return at once: they must never hold up a request."""

    def revoked(self, vin: str, sequence: int) -> None: ...

    def command(self, vin: str, command_id: str) -> None: ...

    def attached(self, vin: str) -> None: ...

    def detached(self, vin: str) -> None: ...

    async def elsewhere(self, vin: str) -> bool:
        """Whether the car is connected to another instance (one quick look-up)."""
        ...


class ChannelHub:
    """The cars connected to this process, by VIN: at most one connection per car."""

    def __init__(self) -> None:
        self._cars: dict[str, CarConnection] = {}
        self._waiters = PredicateWaiters()
        self.frames_handled = 0  # frames from cars, for tests and metrics to wait on
        self.relay: HubRelay | None = None  # set by keyserver.hub_bridge with the Redis store

    def __len__(self) -> int:
        return len(self._cars)

    def connected(self, vin: str) -> bool:
        return vin in self._cars

    def vins(self) -> list[str]:
        """The cars connected to this process now."""
        return list(self._cars)

    def attach(self, car: CarConnection) -> CarConnection | None:
        """Register ``car``; returns the connection it replaces (the caller closes it)."""
        replaced = self._cars.get(car.vin)
        self._cars[car.vin] = car
        if self.relay is not None:
            self.relay.attached(car.vin)
        self._notify()
        return replaced

    def detach(self, car: CarConnection) -> None:
        if self._cars.get(car.vin) is car:
            del self._cars[car.vin]
            if self.relay is not None:
                self.relay.detached(car.vin)
        self._notify()

    async def elsewhere(self, vin: str) -> bool:
        """Whether the car is connected to another instance (False with one node)."""
        return self.relay is not None and await self.relay.elsewhere(vin)

    # the two events a car must hear of; see the module docstring for several instances

    def revoked(self, vin: str, sequence: int = 0) -> None:
        """The vehicle's revocation ledger grew, to ``sequence`` (0: not known)."""
        self.deliver_revoked(vin)
        if self.relay is not None:
            self.relay.revoked(vin, sequence)

    def command(self, vin: str, command_id: str, document: bytes) -> bool:
        """A new command for the vehicle; True if the car is connected here (it is sent now)."""
        here = self.deliver_command(vin, command_id, document)
        if self.relay is not None:  # even so: an older connection may linger elsewhere
            self.relay.command(vin, command_id)
        return here

    def car(self, vin: str) -> CarConnection | None:
        """The car's connection to this process (for the lists signed during a store outage,
        which only this process can push: keyserver.outage)."""
        return self._cars.get(vin)

    def deliver_revoked(self, vin: str, sequence: int = 0) -> bool:
        """Push the car (if connected here) what it lacks, unless it holds ``sequence`` already
        (0: not known); True if it was pushed."""
        car = self._cars.get(vin)
        if car is None:
            return False
        held = car.held_revocations()
        if held is not None and 0 < sequence <= held[0]:
            return False
        car.push_revocations()
        return True

    def deliver_command(self, vin: str, command_id: str, document: bytes) -> bool:
        car = self._cars.get(vin)
        if car is None:
            return False
        car.push_command(command_id, document)
        return True

    async def close_all(self, code: int, message: bytes) -> None:
        """Close every connection (at shutdown: the cars reconnect elsewhere, with jitter)."""
        cars = list(self._cars.values())
        await asyncio.gather(*(car.close(code, message) for car in cars), return_exceptions=True)

    # waiting, for tests and drills: no polling, no sleeps

    def frame_handled(self) -> None:
        self.frames_handled += 1
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after every change here."""
        await self._waiters.wait_for(predicate)

    def _notify(self) -> None:
        self._waiters.notify()
