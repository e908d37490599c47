"""Reconnects paced by the server (issue 14): the channel upgrade is admitted at a rate the
keyserver can carry, and a car refused gets a slot — the next free one — to come back at.

After a restart every car reconnects at once. ``ReconnectPacer`` is a GCRA (a token bucket kept
as one "theoretical arrival time"): ``channel_upgrades_per_s`` a second, with a burst of one
second's worth. A car over the rate is not told a constant: it is given the next free slot in time
and the schedule moves on by one interval, so the cars refused come back at the admitted rate
(429 ``reconnect_paced`` with Retry-After, docs/protocol.md §17.2). A car that asks again before
its slot gets the same slot, not a new later one; at its slot (or after) it is admitted without
spending the rate again — its slot was spent when it was given.

Bounded by construction: slots are spaced one interval apart and lie at most ``HORIZON_S`` ahead;
a slot more than ``GRACE_S`` in the past is forgotten (the car did not come). So at most
(HORIZON_S + GRACE_S) × rate + 1 cars hold a slot; ``max_entries`` is that number, checked before
each reservation. A car that finds the schedule full (all HORIZON_S of it) is told to come back at
its end without a slot. Only a car that proved it is that car (the channel's vehicle proof) is
paced, so nobody can fill the schedule with other cars' VINs.

Before the proof, a storm meets admission control: when upgrades in flight pass their limit,
admission asks ``overflow()`` instead of answering "overloaded". The cars refused there have not
proved anything, so none gets a slot of its own; they are spread along a second tail that moves
one interval per refusal (one float, nothing per car, at most ``HORIZON_S`` ahead) and told
``reconnect_paced`` too — a car honours it as a slot rather than escalating its own backoff.

Time is injected; no I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from keycore.channel import RECONNECT_PACED, REFUSAL_HEADER

HORIZON_S = 120.0  # no slot is given further ahead than this
GRACE_S = 10.0  # a slot is kept this long after its time for a car that is late to it
EPSILON_S = 1e-6  # slots are sums of 1/rate: float error must not move one into the next second


class Paced(StrEnum):
    """Why a car was refused, for metrics."""

    SLOT = "slot"  # given the next free slot
    EARLY = "early"  # asked again before its slot: the same slot
    FULL = "full"  # the whole horizon is booked: come back at its end, no slot
    OVERFLOW = "overflow"  # refused before its proof by admission's in-flight limit: no slot


@dataclass(frozen=True)
class Decision:
    """``retry_after_s`` is None when admitted; else whole seconds to wait (at least 1)."""

    retry_after_s: int | None
    reason: Paced | None = None

    @property
    def admitted(self) -> bool:
        return self.retry_after_s is None


ADMITTED = Decision(None)


class ReconnectPacer:
    """Admits ``rate_per_s`` upgrades a second (a burst of ``burst``) and gives the others slots."""

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: int | None = None,
        horizon_s: float = HORIZON_S,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0 or horizon_s <= 0 or grace_s < 0:
            raise ValueError("rate_per_s and horizon_s must be positive, grace_s not negative")
        self.interval = 1.0 / rate_per_s
        self.burst = max(1, math.ceil(rate_per_s) if burst is None else burst)
        self.horizon_s = horizon_s
        self.grace_s = grace_s
        self.max_entries = math.ceil((horizon_s + grace_s) * rate_per_s) + 1
        self._clock = clock
        self._tolerance = self.burst * self.interval
        self._tat = -math.inf  # the theoretical arrival time of the next request at the rate
        # VIN -> its slot, in the order given, which is also the order of the slots
        self._slots: dict[str, float] = {}
        self._overflow_tat = -math.inf  # the tail along which unproven overflow is spread

    def __len__(self) -> int:
        return len(self._slots)

    def ask(self, vin: str) -> Decision:
        now = self._clock()
        self._forget(now)
        slot = self._slots.get(vin)
        if slot is not None:
            if (
                now + EPSILON_S >= slot
            ):  # its slot: admitted; the rate was spent when the slot was given
                del self._slots[vin]
                return ADMITTED
            return Decision(_seconds(slot - now), Paced.EARLY)
        start = max(self._tat, now)
        if start - now < self._tolerance - EPSILON_S:
            self._tat = start + self.interval
            return ADMITTED
        slot = start + self.interval - self._tolerance  # when the bucket has room for it
        if slot - now > self.horizon_s + EPSILON_S or len(self._slots) >= self.max_entries:
            return Decision(_seconds(self.horizon_s), Paced.FULL)
        self._tat = start + self.interval
        self._slots[vin] = slot
        return Decision(_seconds(slot - now), Paced.SLOT)

    def overflow(self) -> Decision:
        """An upgrade refused before its proof (admission's limit): the next place on the
        overflow tail, one interval after the last, at most ``horizon_s`` ahead; no slot kept."""
        now = self._clock()
        start = min(max(self._overflow_tat, now) + self.interval, now + self.horizon_s)
        self._overflow_tat = start
        return Decision(_seconds(start - now), Paced.OVERFLOW)

    def _forget(self, now: float) -> None:
        """Drop slots past their grace: the oldest first, as they are ordered."""
        while self._slots:
            vin, slot = next(iter(self._slots.items()))
            if slot + self.grace_s >= now:
                return
            del self._slots[vin]


def _seconds(delay: float) -> int:
    # Retry-After is whole seconds: rounded up, so a car that honours it is never early
    return max(1, math.ceil(delay - EPSILON_S))


@dataclass(frozen=True)
class PacingMetrics:
    admitted: Counter
    paced: Counter
    slots: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PacingMetrics:
        return cls(
            admitted=Counter(
                "keyserver_channel_upgrades_admitted",
                "Channel upgrades let through by the reconnect pacer",
                registry=registry,
            ),
            paced=Counter(
                "keyserver_channel_upgrades_paced",
                "Channel upgrades refused 429 reconnect_paced, by why: slot, early, full, overflow",
                ["reason"],
                registry=registry,
            ),
            slots=Gauge(
                "keyserver_channel_pacing_slots",
                "Cars holding a reconnect slot now",
                registry=registry,
            ),
        )


class PacedChannel:
    """One app's pacer and its metrics."""

    def __init__(self, rate_per_s: float, registry: CollectorRegistry) -> None:
        self.pacer = ReconnectPacer(rate_per_s)
        self.metrics = PacingMetrics.create(registry)

    def ask(self, vin: str) -> Decision:
        return self._count(self.pacer.ask(vin))

    def overflow(self) -> Decision:
        return self._count(self.pacer.overflow())

    def _count(self, decision: Decision) -> Decision:
        if decision.reason is None:
            self.metrics.admitted.inc()
        else:
            self.metrics.paced.labels(decision.reason.value).inc()
        self.metrics.slots.set(len(self.pacer))
        return decision


PACING = web.AppKey("reconnect_pacing", PacedChannel)
PACED_MESSAGE = "reconnects are paced: come back after Retry-After seconds, at your slot"


def paced_headers(retry_after_s: int) -> dict[str, str]:
    """The headers of a 429 ``reconnect_paced``: the wait, and the code where a WebSocket client
    reads it (it does not read a refused upgrade's body)."""
    return {"Retry-After": str(retry_after_s), REFUSAL_HEADER: RECONNECT_PACED}
