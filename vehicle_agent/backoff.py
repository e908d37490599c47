"""How the car reconnects to the keyserver: full-jitter exponential backoff, bounded everywhere.

One tenacity ``AsyncRetrying`` per connect (``connect_retrying``): ``wait_random_exponential``
between attempts, a bounded number of attempts, and the server's Retry-After honoured — as that
many seconds *plus* the jittered wait, so cars told the same thing do not come back together.
A paced refusal (429 ``reconnect_paced``) is different: its Retry-After is a slot the keyserver
reserved for this car, so the car comes back in [T, T + ``retry_after_jitter_s``] — not later,
with no backoff of its own on top, and a fresh retrier afterwards (``ReconnectPolicy.paced_wait``).
Every Retry-After is capped at ``max_retry_after_s``: a hostile or buggy server cannot park a car.
After a connection drops, the first attempt also waits: ``uniform(0, first_jitter × 2^drops)``
(``after_drop``), so a restarted keyserver sees its cars spread out, and a flapping one sees them
further apart each time. The sleep is injected, so tests never wait.

``ConnectThrottle`` is the SRE book's adaptive client throttling on connects: while the keyserver
refuses upgrades for overload (429, 503), the car refuses a growing share of its own attempts
locally, before they cost the server anything — never all of them: one attempt in every probe
interval reaches the server (resilience.overload explains why a car needs that).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from resilience.breaker import BreakerConfig
from resilience.overload import AdaptiveThrottle
from vehicle_agent.errors import LinkError, LinkPaced

CLOUD_LINK_BREAKER = BreakerConfig(
    window_size=5,
    minimum_calls=3,
    failure_rate_threshold=50.0,
    slow_call_rate_threshold=100.0,
    slow_call_duration_s=10.0,  # a connect is slow only at the attempt timeout
    wait_in_open_s=10.0,
    open_jitter=0.5,  # cars that lost the cloud together probe it apart
    permitted_calls_in_half_open=1,
    max_wait_in_half_open_s=0.0,
)


MIN_PACED_WAIT_S = 1.0  # a paced refusal saying 0 (the keyserver never does) waits this


@dataclass(frozen=True)
class ReconnectPolicy:
    """Every wait is full jitter and every bound is finite."""

    first_jitter_s: float = 1.0  # after a drop: uniform(0, this × 2^drops), capped at max_wait_s
    stable_after_s: float = 60.0  # a connection this old resets the drop count
    multiplier_s: float = 1.0  # wait_random_exponential(multiplier, max) between attempts
    max_wait_s: float = 60.0
    attempts: int = 8  # per AsyncRetrying; then a rest of uniform(0, max_wait_s), and again
    attempt_timeout_s: float = 10.0  # one TCP connect + upgrade
    # the longest wait a server's Retry-After can impose: a hostile or buggy one cannot park the
    # car for hours (the keyserver's pacing never asks for more than keyserver.pacing.HORIZON_S)
    max_retry_after_s: float = 600.0
    retry_after_jitter_s: float = 1.0  # a paced car comes back in [T, T + this]
    heartbeat_s: float = 30.0  # WebSocket ping; a silent server is dropped after it
    flush_interval_s: float = 5.0  # audit outbox upload, at the latest
    # the cloud-link breaker: after 3 failed connects of the last 5, no socket is opened for
    # 5–15 s (then one probe), so a dead cloud costs the car a timer, not a stream of connects
    breaker: BreakerConfig = field(default_factory=lambda: CLOUD_LINK_BREAKER)

    def after_drop(self, drops: int) -> float:
        """The wait before reconnecting after the ``drops``-th short-lived connection in a row."""
        window = min(self.first_jitter_s * 2 ** min(drops, 32), self.max_wait_s)
        return random.uniform(0, window)  # noqa: S311 — jitter, not a secret

    def rest(self) -> float:
        """The wait after a whole cycle of attempts failed, before the next cycle."""
        return random.uniform(0, self.max_wait_s)  # noqa: S311

    def paced_wait(self, retry_after: float) -> float:
        """The wait after a paced refusal with ``Retry-After: retry_after``: the slot, capped at
        ``max_retry_after_s`` (and at least MIN_PACED_WAIT_S), plus a little jitter — never more,
        whatever the attempts before it."""
        slot = min(max(retry_after, MIN_PACED_WAIT_S), self.max_retry_after_s)
        return slot + random.uniform(0, self.retry_after_jitter_s)  # noqa: S311


class wait_retry_after(wait_base):  # named like tenacity's own strategies
    """``fallback``'s wait; after a refusal with Retry-After, that many seconds plus it."""

    def __init__(self, fallback: wait_base, *, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.fallback(retry_state))
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, LinkError) and error.retry_after is not None:
            return min(error.retry_after + wait, self.cap)
        return wait


def _retryable(error: BaseException) -> bool:
    # a paced refusal leaves the retrier at once: the caller waits for the slot (paced_wait)
    return isinstance(error, LinkError) and not isinstance(error, LinkPaced)


def connect_retrying(
    policy: ReconnectPolicy, sleep: Callable[[float], Awaitable[None]]
) -> AsyncRetrying:
    """A fresh retrier for one connect: retries ``LinkError`` only, re-raises the last one; a
    ``LinkPaced`` is re-raised at once, without a wait or an attempt spent on it."""
    return AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_retry_after(
            wait_random_exponential(multiplier=policy.multiplier_s, max=policy.max_wait_s),
            cap=policy.max_retry_after_s,
        ),
        retry=retry_if_exception(_retryable),
        sleep=sleep,
        reraise=True,
    )


OVERLOAD_STATUSES = frozenset({429, 503})  # refusals that say "too much", not "not you"


class ConnectThrottle:
    """Adaptive throttling of the car's connects (K = 2, a two-minute window, a probe every 5 s).

    ``admit()`` raises ``LinkError`` for an attempt refused locally — the retrier backs off from
    it like from a refused upgrade. Only the server's overload answers are recorded: a connect
    that fails without an answer is the circuit breaker's business, and a paced refusal (a slot
    to come back at) is the server doing its own pacing, not an overload signal.
    """

    def __init__(self, throttle: AdaptiveThrottle | None = None) -> None:
        self.throttle = throttle or AdaptiveThrottle()
        self.rejected = 0

    def allow(self) -> bool:
        if self.throttle.allow():
            return True
        self.rejected += 1
        return False

    def admit(self) -> None:
        """Raise ``LinkError`` for an attempt refused locally; its Retry-After is the time until
        the throttle's next probe, so the retrier's next attempt is not refused the same way."""
        if not self.allow():
            raise LinkError(
                "connect throttled locally: the keyserver is refusing for overload",
                retry_after=self.throttle.until_probe(),
            )

    def record(self, accepted: bool) -> None:
        self.throttle.record(accepted)

    def record_status(self, status: int) -> None:
        """The server answered the upgrade with ``status`` (101 when it was accepted)."""
        self.throttle.record(status not in OVERLOAD_STATUSES)
