"""Overload primitives from Google SRE "Handling Overload": adaptive client throttling, a retry
budget and deadlines that travel with a request. Time and randomness are injected; no I/O.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DEADLINE_HEADER = "PK-Deadline-Ms"
MAX_DEADLINE_MS = 30_000  # a caller cannot make us hold work longer than this
_DEADLINE_MS = re.compile(r"[0-9]{1,10}")  # ASCII digits only: no sign, space, '_' or exponent


class SlidingCounts:
    """Sums of a few counters over the last ``window_s`` seconds, kept in ``bucket_s`` buckets.

    Memory is bounded by the number of buckets in the window, whatever the request rate.
    """

    def __init__(self, window_s: float, fields: int, *, bucket_s: float = 1.0) -> None:
        if window_s <= 0 or bucket_s <= 0 or fields < 1:
            raise ValueError("window_s and bucket_s must be positive, fields at least 1")
        self._span = max(1, math.ceil(window_s / bucket_s))
        self._bucket_s = bucket_s
        self._buckets: deque[tuple[int, list[int]]] = deque()
        self._totals = [0] * fields

    def add(self, now: float, *deltas: int) -> None:
        if len(deltas) != len(self._totals):
            raise ValueError(f"expected {len(self._totals)} counts, got {len(deltas)}")
        index = self._expire(now)
        # A clock that steps back (only a fake one can) lands in the newest bucket.
        if not self._buckets or self._buckets[-1][0] < index:
            self._buckets.append((index, [0] * len(self._totals)))
        bucket = self._buckets[-1][1]
        for i, delta in enumerate(deltas):
            bucket[i] += delta
            self._totals[i] += delta

    def totals(self, now: float) -> tuple[int, ...]:
        self._expire(now)
        return tuple(self._totals)

    def _expire(self, now: float) -> int:
        index = math.floor(now / self._bucket_s)
        while self._buckets and self._buckets[0][0] <= index - self._span:
            _, counts = self._buckets.popleft()
            for i, count in enumerate(counts):
                self._totals[i] -= count
        return index


class AdaptiveThrottle:
    """Client-side throttling, the SRE book's formula over a sliding window:
    reject locally with P = max(0, (requests − K·accepts) / (requests + 1)),
    plus two guarantees the book leaves out, for clients that ask rarely (issue 14).

    Every attempt that reaches the backend is counted once, by ``record()``. A local rejection
    counts as a request too, as in the book, but only while the backend's last answer was a
    refusal: then P climbs towards 1 for a busy client, and the backend sees about K times what
    it accepts. Once the backend has accepted again, the client's own caution is no evidence of
    overload: its rejections stop counting and the old refusals age out of the window.

    The probe: whatever P says, a request is let through when none has reached the backend for
    ``probe_interval_s``. The book's formula assumes a client busy enough that a few percent of
    its requests still find out when the backend is back; a client asking every few tens of
    seconds (a car reconnecting) has no such few percent — its own rejections keep P at
    n / (n + 1) and it can lock itself out for many minutes after the backend recovered. With
    the probe it learns within one interval, whatever the draws; a client asking less often than
    that is never throttled, which costs the backend nothing. A busy client pays one request
    per interval above the book's share.
    """

    def __init__(
        self,
        k: float = 2.0,
        window_s: float = 120.0,
        *,
        probe_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        bucket_s: float = 1.0,
    ) -> None:
        if k < 1.0:
            raise ValueError("k below 1 rejects requests a healthy backend would accept")
        if not probe_interval_s > 0:
            raise ValueError("probe_interval_s must be positive (math.inf: no probe)")
        self.k = k
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._rng = rng
        self._counts = SlidingCounts(window_s, 2, bucket_s=bucket_s)  # requests, accepts
        self._last_sent = -math.inf  # when a request was last let through (or answered)
        self._refusing = False  # the backend's last answer was a refusal for overload

    @property
    def requests(self) -> int:
        return self._counts.totals(self._clock())[0]

    @property
    def accepts(self) -> int:
        return self._counts.totals(self._clock())[1]

    def reject_probability(self) -> float:
        requests, accepts = self._counts.totals(self._clock())
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def allow(self) -> bool:
        now = self._clock()
        if now - self._last_sent >= self.probe_interval_s or (
            self._rng() >= self.reject_probability()
        ):
            self._last_sent = now
            return True
        if self._refusing:
            self._counts.add(now, 1, 0)
        return False

    def until_probe(self) -> float:
        """Seconds until a request is let through whatever the draw (0: now)."""
        return max(0.0, self._last_sent + self.probe_interval_s - self._clock())

    def record(self, accepted: bool) -> None:
        """The backend answered: ``accepted`` unless it refused for overload (429, 503, …)."""
        now = self._clock()
        self._last_sent = max(self._last_sent, now)
        self._refusing = not accepted
        self._counts.add(now, 1, int(accepted))


class RetryBudget:
    """A per-process retry budget: retries stay within ``ratio`` of the first attempts in the
    window, plus a floor of ``min_per_s`` so a quiet process can still retry now and then.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        min_per_s: float = 0.2,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 1 or min_per_s < 0:
            raise ValueError("ratio must be in [0, 1] and min_per_s not negative")
        self.ratio = ratio
        self._floor = min_per_s * window_s
        self._clock = clock
        self._window = SlidingCounts(window_s, 2)  # first attempts, retries
        self.requests = 0
        self.retries = 0
        self.denied = 0

    @property
    def retry_ratio(self) -> float:
        """Retries spent per first attempt since this budget was created."""
        return self.retries / self.requests if self.requests else 0.0

    def on_request(self) -> None:
        """Count a first attempt (never a retry): it is what earns retries."""
        self.requests += 1
        self._window.add(self._clock(), 1, 0)

    def try_spend(self) -> bool:
        now = self._clock()
        requests, retries = self._window.totals(now)
        # The epsilon absorbs float error in ratio × requests (0.7 × 90 = 62.99999999999999).
        if retries + 1 > self.ratio * requests + self._floor + 1e-9:
            self.denied += 1
            return False
        self.retries += 1
        self._window.add(now, 0, 1)
        return True


@dataclass(frozen=True)
class Deadline:
    """When a request's work must stop, in monotonic seconds; it travels as remaining time."""

    at: float

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds)

    def remaining(self, clock: Callable[[], float] = time.monotonic) -> float:
        return max(0.0, self.at - clock())

    def expired(self, clock: Callable[[], float] = time.monotonic) -> bool:
        return clock() >= self.at

    def timeout(self, clock: Callable[[], float] = time.monotonic) -> asyncio.Timeout:
        """``async with deadline.timeout():`` raises TimeoutError when the deadline passes."""
        return asyncio.timeout(self.remaining(clock))

    def to_header(self, now: float) -> str:
        """The ``PK-Deadline-Ms`` value: whole milliseconds left at ``now`` (same clock as ``at``).

        Rounded down, so the next hop never believes it has more time than we do.
        """
        return str(min(MAX_DEADLINE_MS, math.floor(max(0.0, self.at - now) * 1000)))

    @classmethod
    def from_header(cls, value: str, now: float, *, max_ms: int = MAX_DEADLINE_MS) -> Deadline:
        """Parse ``PK-Deadline-Ms`` strictly (ASCII digits only); larger values are capped."""
        if not _DEADLINE_MS.fullmatch(value):
            raise ValueError(f"{DEADLINE_HEADER} must be 1 to 10 ASCII digits")
        return cls(now + min(int(value), max_ms) / 1000)
