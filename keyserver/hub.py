"""Which cars are connected to this keyserver process, and the pushes addressed to them.

The cloud↔car channel (keyserver.routes.channel) registers each car's connection here. Two events
must reach a car wherever it is connected: a revocation appended to its ledger
(``revoked``: keyserver.issuance calls it after every append) and a new remote command
(``command``). Both are local calls today: one keyserver process holds every connection.

The seam for several instances (issue 6): ``revoked`` and ``command`` become a publish on a Redis
channel ``P car:{vin}``; every instance subscribes and hands what it receives to
``deliver_revoked`` / ``deliver_command`` on its own hub, which reach the car only where it is
connected. Nothing is lost if a publish is: the car's state is in the store, and a car gets its
revocation delta and pending commands again every time it connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from keycore.waiting import PredicateWaiters


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


class ChannelHub:
    """The cars connected to this process, by VIN: at most one connection per car."""

    def __init__(self) -> None:
        self._cars: dict[str, CarConnection] = {}
        self._waiters = PredicateWaiters()
        self.frames_handled = 0  # frames from cars, for tests and metrics to wait on

    def __len__(self) -> int:
        return len(self._cars)

    def connected(self, vin: str) -> bool:
        return vin in self._cars

    def attach(self, car: CarConnection) -> CarConnection | None:
        """Register ``car``; returns the connection it replaces (the caller closes it)."""
        replaced = self._cars.get(car.vin)
        self._cars[car.vin] = car
        self._notify()
        return replaced

    def detach(self, car: CarConnection) -> None:
        if self._cars.get(car.vin) is car:
            del self._cars[car.vin]
        self._notify()

    # the two events a car must hear of; see the module docstring for several instances

    def revoked(self, vin: str) -> None:
        """The vehicle's revocation ledger grew."""
        self.deliver_revoked(vin)

    def command(self, vin: str, command_id: str, document: bytes) -> bool:
        """A new command for the vehicle; True if the car is connected here (it is sent now)."""
        return self.deliver_command(vin, command_id, document)

    def car(self, vin: str) -> CarConnection | None:
        """The car's connection to this process (for the lists signed during a store outage,
        which only this process can push: keyserver.outage)."""
        return self._cars.get(vin)

    def deliver_revoked(self, vin: str) -> None:
        car = self._cars.get(vin)
        if car is not None:
            car.push_revocations()

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
