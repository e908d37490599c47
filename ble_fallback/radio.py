"""The air around cars and phones, simulated: which car a phone is next to, which cars advertise,
and the connections a phone's radio makes — so "is the car in Bluetooth range" is something the
phone's radio finds out, never a flag set beside it.

A car advertises while its BLE endpoint runs (``advertise`` / ``silence``). A phone is next to
one car or far from all (``move``: the world walks its people about). A phone next to an
advertising car sees its advertisement at the car's next advertising event (a uniform wait of up
to ``advertising_interval_s`` after it arrives or the car starts) and keeps seeing it while both
stay. ``reach(phone, vin, scan_s)`` is the phone's radio as ``PhoneClient`` uses it: it looks
for the car's advertisement for up to ``scan_s``, then connects (``connect_s``: the link-layer
connection and the GATT subscription) and returns the phone's end of a ``SimulatedLink``; None
when no advertisement was seen (the car is out of range, or not advertising). A connection that
cannot be made — the phone walked off, the car went silent while it was being made — raises
``LinkClosed`` before anything was sent: trying again (or another path) is safe.

Timers run on the event loop's clock, so ``ble_fallback.virtual_time`` runs this without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from ble_fallback.errors import LinkClosed
from ble_fallback.link import Link
from resilience.waiting import PredicateWaiters

#: What an advertising car does with a phone's new connection: serve it, and hand back the
#: phone's end (None: it cannot take one now, e.g. its agent just died).
Accept = Callable[[], Link | None]


@dataclass(frozen=True, slots=True)
class RadioTiming:
    """How fast the air is. Seconds."""

    advertising_interval_s: float = 0.1  # a car advertises this often (iOS asks for ≤ 152.5 ms)
    connect_s: tuple[float, float] = (0.02, 0.06)  # connection set-up, uniform in [low, high]

    def __post_init__(self) -> None:
        low, high = self.connect_s
        if self.advertising_interval_s <= 0 or not 0 <= low <= high:
            raise ValueError("the advertising interval must be positive, 0 <= low <= high")


class SimulatedRadio:
    """Every car's advertising and every phone's whereabouts, for one simulated world."""

    def __init__(self, *, rng: random.Random, timing: RadioTiming | None = None) -> None:
        self.timing = timing or RadioTiming()
        self._rng = rng
        self._cars: dict[str, Accept] = {}  # advertising cars
        self._near: dict[str, str] = {}  # phone -> the car it stands next to
        self._seen: set[tuple[str, str]] = set()  # (phone, vin): the advertisement reached it
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._changed = PredicateWaiters()

    # -- the world's side --------------------------------------------------------------------

    def advertise(self, vin: str, accept: Accept) -> None:
        """The car's BLE endpoint is up: it advertises and takes connections with ``accept``."""
        self._cars[vin] = accept
        for phone, near in self._near.items():
            if near == vin:
                self._hear_soon(phone, vin)

    def silence(self, vin: str) -> None:
        """The car stops advertising (its endpoint is down): nobody sees it any more."""
        self._cars.pop(vin, None)
        for key in [k for k in self._pending if k[1] == vin]:
            self._pending.pop(key).cancel()
        self._seen = {k for k in self._seen if k[1] != vin}
        self._changed.notify()

    def move(self, phone: str, near: str | None) -> None:
        """``phone`` now stands next to car ``near``, or far from every car (None)."""
        before = self._near.get(phone)
        if before == near:
            return
        if before is not None:
            handle = self._pending.pop((phone, before), None)
            if handle is not None:
                handle.cancel()
            self._seen.discard((phone, before))
            del self._near[phone]
        if near is not None:
            self._near[phone] = near
            if near in self._cars:
                self._hear_soon(phone, near)
        self._changed.notify()

    def where(self, phone: str) -> str | None:
        return self._near.get(phone)

    # -- the phone's side --------------------------------------------------------------------

    def sees(self, phone: str, vin: str) -> bool:
        """Whether ``phone``'s scanner has the car's advertisement now."""
        return (phone, vin) in self._seen

    async def reach(self, phone: str, vin: str, *, scan_s: float) -> Link | None:
        """Look for the car's advertisement for up to ``scan_s``, then connect; None if none."""
        try:
            async with asyncio.timeout(scan_s):
                await self._changed.wait_for(lambda: self.sees(phone, vin))
        except TimeoutError:
            return None
        await asyncio.sleep(self._rng.uniform(*self.timing.connect_s))
        accept = self._cars.get(vin)
        link = accept() if accept is not None and self.sees(phone, vin) else None
        if link is None:  # walked off or the car went quiet mid-connection: nothing was sent
            raise LinkClosed("the connection to the car could not be made")
        return link

    def _hear_soon(self, phone: str, vin: str) -> None:
        key = (phone, vin)
        if key in self._seen or key in self._pending:
            return
        delay = self._rng.uniform(0.0, self.timing.advertising_interval_s)
        self._pending[key] = asyncio.get_running_loop().call_later(delay, self._heard, key)

    def _heard(self, key: tuple[str, str]) -> None:
        self._pending.pop(key, None)
        self._seen.add(key)
        self._changed.notify()
