"""One small async interface for a BLE link, its policy, and a simulated link pair.

A ``Link`` moves chunks — one GATT write or notification each, at most ``policy.chunk_size``
bytes — between a phone and a car. The simulated pair models MTU, latency, jitter (order kept,
as on a real connection), loss, duplicated chunks and disconnects. Its randomness is an injected
``random.Random`` and its clock is the running event loop's, so tests run it on
``ble_fallback.virtual_time`` and never wait for real.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Protocol

from ble_fallback.errors import BleReason, LinkClosed, LocalProtocolError
from ble_fallback.framing import chunk_size_for

_TICK = 1e-6  # seconds between two chunks that would otherwise arrive at the same time


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """How one link is used: its MTU and the timing the protocol keeps on it."""

    mtu: int = 185
    #: Longest time from the car sending a challenge to the answer's arrival (relay limit).
    allowed_latency: float = 0.5
    #: Send an unanswered frame again after this long.
    retry_interval: float = 0.15
    #: Sends of one frame (the first and the retransmissions) before giving up.
    max_attempts: int = 8
    #: The car closes a connection idle this long (BLE links drop after ~30–40 s anyway).
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        if min(self.allowed_latency, self.retry_interval, self.idle_timeout) <= 0:
            raise ValueError("timings must be positive")
        if self.mtu < 1 or self.max_attempts < 1:
            raise ValueError("mtu and max_attempts must be positive")

    @property
    def chunk_size(self) -> int:
        return chunk_size_for(self.mtu)

    @property
    def gap_timeout(self) -> float:
        """A partial frame is kept long enough for two retransmissions to fill its holes."""
        return 3 * self.retry_interval


class Link(Protocol):
    """A connected BLE link, from either end. ``receive`` raises LinkClosed once it drops."""

    @property
    def policy(self) -> LinkPolicy: ...

    async def send(self, chunk: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """The radio, as the simulated link models it. Times in seconds, rates per chunk."""

    latency: float = 0.0
    jitter: float = 0.0  # each chunk is delayed by a further uniform 0 … jitter, order kept
    loss: float = 0.0
    duplicate: float = 0.0
    disconnect_after: int | None = None  # the link drops when this many chunks have been sent

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0 <= self.loss < 1:
            raise ValueError("latency and jitter must be >= 0, loss in [0, 1)")
        if not 0 <= self.duplicate <= 1:
            raise ValueError("duplicate must be in [0, 1]")


@dataclass(slots=True)
class LinkStats:
    chunks_sent: int = 0
    bytes_on_air: int = 0  # every chunk sent, header included, lost or not
    lost: int = 0
    duplicated: int = 0


class _Air:
    """What both ends of a simulated pair share."""

    def __init__(self, conditions: LinkConditions, rng: random.Random) -> None:
        self.conditions = conditions
        self.rng = rng
        self.stats = LinkStats()
        self.closing = False  # no more sends; chunks in flight still arrive
        self.closed = False
        self.ends: list[SimulatedLink] = []

    def disconnect(self) -> None:
        if not self.closed:
            self.closing = self.closed = True
            for end in self.ends:
                end.inbox.put_nowait(None)


class SimulatedLink:
    """One end of a simulated BLE connection; make both with ``SimulatedLink.pair``."""

    def __init__(self, air: _Air, policy: LinkPolicy, name: str) -> None:
        self._air = air
        self._policy = policy
        self.name = name
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: SimulatedLink | None = None
        self._last_arrival = 0.0

    @classmethod
    def pair(
        cls,
        policy: LinkPolicy | None = None,
        conditions: LinkConditions | None = None,
        *,
        rng: random.Random,
    ) -> tuple[SimulatedLink, SimulatedLink]:
        """``(phone end, car end)`` of one connection."""
        air = _Air(conditions or LinkConditions(), rng)
        policy = policy or LinkPolicy()
        phone, car = cls(air, policy, "phone"), cls(air, policy, "car")
        phone.peer, car.peer = car, phone
        air.ends.extend((phone, car))
        return phone, car

    @property
    def policy(self) -> LinkPolicy:
        return self._policy

    @property
    def stats(self) -> LinkStats:
        return self._air.stats

    @property
    def closed(self) -> bool:
        return self._air.closed

    async def send(self, chunk: bytes) -> None:
        air, peer = self._air, self.peer
        if air.closing or peer is None:
            raise LinkClosed(f"{self.name}: link is down")
        if len(chunk) > self._policy.chunk_size:
            raise LocalProtocolError(BleReason.BAD_CHUNK, "chunk larger than the MTU allows")
        cond, stats = air.conditions, air.stats
        stats.chunks_sent += 1
        stats.bytes_on_air += len(chunk)
        if cond.disconnect_after is not None and stats.chunks_sent > cond.disconnect_after:
            air.disconnect()
            raise LinkClosed(f"{self.name}: disconnected")
        if cond.loss and air.rng.random() < cond.loss:
            stats.lost += 1
            return
        copies = 1
        if cond.duplicate and air.rng.random() < cond.duplicate:
            stats.duplicated += 1
            copies = 2
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            if not cond.latency and not cond.jitter:
                peer.arrive(bytes(chunk))  # an instant radio: in the peer's inbox at once
                continue
            delay = cond.latency + air.rng.uniform(0.0, cond.jitter)
            # Strictly after the previous chunk: the loop does not order equal times.
            at = max(loop.time() + delay, peer._last_arrival + _TICK)
            peer._last_arrival = at
            loop.call_at(at, peer.arrive, bytes(chunk))

    def arrive(self, chunk: bytes) -> None:
        if not self._air.closed:  # chunks in flight when the link drops are lost
            self.inbox.put_nowait(chunk)

    async def receive(self) -> bytes:
        """The next chunk; chunks that arrived before a disconnect are still read first."""
        chunk = await self.inbox.get()
        if chunk is None:
            self.inbox.put_nowait(None)  # every later receive fails too
            raise LinkClosed(f"{self.name}: link is down")
        return chunk

    async def close(self) -> None:
        """Close gracefully: chunks already sent still arrive, then both ends see it closed."""
        air = self._air
        if air.closing:
            return
        air.closing = True
        loop = asyncio.get_running_loop()
        last = max(end._last_arrival for end in air.ends)
        if last <= loop.time():
            loop.call_soon(air.disconnect)  # after the chunks queued with call_soon
        else:
            loop.call_at(last + _TICK, air.disconnect)

    def disconnect(self) -> None:
        """Drop the connection now, as a radio would: chunks in flight are lost."""
        self._air.disconnect()
