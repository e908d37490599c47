"""The traffic surge (issue 6; the ``traffic-surge`` drill reuses it): phones and cars against one
keyserver, first at a normal load, then at ``factor`` times it.

Phones run a closed loop of token refreshes and remote commands (critical) and key listings
(sheddable); cars reconnect their channel over and over (critical-plus). Every client behaves as
G6 asks: its deadline in ``PK-Deadline-Ms``; an ``AdaptiveThrottle`` per criticality (so shed
listings do not throttle refreshes); after a 429/503 the Retry-After is honoured — that
criticality is not sent before it passes, and a retry waits it out plus jitter — and retries are
spent from one ``RetryBudget`` for the whole process. A command whose deadline passed may have
acted, so it is never retried. Each phase is bounded in requests and in seconds.

Success means a 2xx in the end; the figures count every attempt, so the retry ratio is measured
here, not taken from the budget's own books.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from keycore.request_proof import HEADER, sign_request
from keyserver.admission import Criticality
from lab.bench.surge_setup import Population
from lab.stats import percentile
from resilience.overload import DEADLINE_HEADER, AdaptiveThrottle, RetryBudget

DEADLINE_MS = 2_000  # what every surge client gives a request
REQUEST_TIMEOUT_S = 5.0  # a hang guard above the deadline
MAX_ATTEMPTS = 3  # a first attempt and at most two retries, each from the budget
PHONE_MIX = ("refresh", "listing", "command", "listing", "refresh")  # 60 % critical
KIND_CRITICALITY = {
    "refresh": Criticality.CRITICAL,
    "command": Criticality.CRITICAL,
    "listing": Criticality.SHEDDABLE,
    "connect": Criticality.CRITICAL_PLUS,
}


@dataclass(frozen=True)
class SurgePlan:
    phones: int = 4  # at the normal load; the surge has ``factor`` times as many, cars too
    cars: int = 1
    factor: int = 10
    requests_per_phone: int = 40
    connects_per_car: int = 20
    max_phase_s: float = 12.0


@dataclass
class Tally:
    """One criticality in one phase: logical requests and what became of every attempt."""

    logical: int = 0
    ok: int = 0
    throttled: int = 0  # refused locally: by the throttle or a pending Retry-After
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer
    shed: int = 0  # 429 overloaded
    without_retry_after: int = 0  # 429/503 that did not say when to come back
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def success(self) -> float:
        return self.ok / self.logical if self.logical else 1.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, object]:
        lat = self.latencies_ms or [0.0]
        return {
            "logical": self.logical, "ok": self.ok, "success_pct": round(100 * self.success, 2),
            "shed_429": self.shed, "throttled_locally": self.throttled,
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms": round(percentile(lat, 0.5), 1), "p99_ms": round(percentile(lat, 0.99), 1),
        }  # fmt: skip


@dataclass
class Phase:
    name: str
    phones: int
    cars: int
    budget: RetryBudget = field(default_factory=RetryBudget)
    tallies: dict[Criticality, Tally] = field(
        default_factory=lambda: {c: Tally() for c in Criticality}
    )
    first_attempts: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def retry_ratio(self) -> float:
        return self.retries / self.first_attempts if self.first_attempts else 0.0

    @property
    def retry_allowance(self) -> float:
        """The budget's ratio plus what its floor allows over this phase's windows."""
        floor = 0.2 * (self.seconds + 10.0)  # RetryBudget's defaults: 0.2/s, 10 s window
        return self.budget.ratio + floor / max(1, self.first_attempts)

    @property
    def rps(self) -> float:
        sent = sum(t.statuses.total() for t in self.tallies.values())
        return sent / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "phase": self.name, "phones": self.phones, "cars": self.cars,
            "seconds": round(self.seconds, 2), "attempts_per_s": round(self.rps, 1),
            "retry_ratio": round(self.retry_ratio, 4),
            "retry_allowance": round(self.retry_allowance, 4),
            **{c.name.lower(): self.tallies[c].summary() for c in Criticality},
        }  # fmt: skip


class _Client:
    """One phone or car: a throttle and a Retry-After per criticality."""

    def __init__(self) -> None:
        self.throttles = {c: AdaptiveThrottle() for c in Criticality}
        self.quiet_until = dict.fromkeys(Criticality, 0.0)


async def run_surge(base_url: str, population: Population, plan: SurgePlan) -> list[Phase]:
    """The normal phase, then the surge; both against ``base_url``."""
    normal = Phase("normal", plan.phones, plan.cars)
    surge = Phase("surge", plan.phones * plan.factor, plan.cars * plan.factor)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:
        for phase in (normal, surge):
            await _run_phase(http, population, plan, phase)
    return [normal, surge]


async def _run_phase(
    http: aiohttp.ClientSession, population: Population, plan: SurgePlan, phase: Phase
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    end = started + plan.max_phase_s
    workers = [_phone(http, population, plan, phase, n, end) for n in range(phase.phones)]
    workers += [_car(http, population, plan, phase, n, end) for n in range(phase.cars)]
    await asyncio.gather(*workers)
    phase.seconds = loop.time() - started


async def _phone(
    http: aiohttp.ClientSession, population: Population, plan: SurgePlan, phase: Phase,
    number: int, end: float,
) -> None:  # fmt: skip
    client = _Client()
    for i in range(plan.requests_per_phone):
        if asyncio.get_running_loop().time() >= end:
            return
        kind = PHONE_MIX[(number + i) % len(PHONE_MIX)]
        await _logical(
            http, population, phase, client, kind, (number + i) % len(population.cars), end
        )


async def _car(
    http: aiohttp.ClientSession, population: Population, plan: SurgePlan, phase: Phase,
    number: int, end: float,
) -> None:  # fmt: skip
    client = _Client()
    for _ in range(plan.connects_per_car):
        if asyncio.get_running_loop().time() >= end:
            return
        await _logical(
            http, population, phase, client, "connect", number % len(population.cars), end
        )


async def _logical(
    http: aiohttp.ClientSession, population: Population, phase: Phase, client: _Client,
    kind: str, car: int, end: float,
) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    criticality = KIND_CRITICALITY[kind]
    tally, throttle = phase.tallies[criticality], client.throttles[criticality]
    tally.logical += 1
    for attempt in range(MAX_ATTEMPTS):
        if attempt == 0:
            if loop.time() < client.quiet_until[criticality] or not throttle.allow():
                tally.throttled += 1
                return
            phase.first_attempts += 1
            phase.budget.on_request()
        else:
            if not phase.budget.try_spend():
                return
            phase.retries += 1
        started = time.perf_counter()
        status, retry_after, code = await _send(http, population, kind, car)
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        tally.statuses[status] += 1
        overloaded = status in (429, 503)
        if status:
            throttle.record(not overloaded)
        if 200 <= status < 300 or status == 101:
            tally.ok += 1
            return
        tally.shed += status == 429 and code == "overloaded"
        tally.without_retry_after += overloaded and retry_after is None
        if not overloaded or (kind == "command" and code == "deadline_exceeded"):
            return  # refused for good, or may have acted: not ours to repeat
        wait = (retry_after or 0) + random.uniform(0, 0.5)  # noqa: S311 — jitter
        client.quiet_until[criticality] = loop.time() + (retry_after or 0)
        if loop.time() + wait >= end:
            return
        await asyncio.sleep(wait)


async def _send(
    http: aiohttp.ClientSession, population: Population, kind: str, car: int
) -> tuple[int, int | None, str | None]:
    """One attempt: (status, or 0 for no answer; Retry-After seconds; error code)."""
    vin, car_key, key_id = population.cars[car]
    phone = (population.device, population.device_id)
    method, path, body, signer = {
        "listing": ("GET", f"/v1/vehicles/{vin}/keys", b"", None),
        "refresh": ("POST", f"/v1/keys/{key_id}/token", b"", phone),
        "command": ("POST", f"/v1/vehicles/{vin}/commands", _command_body(), phone),
        "connect": ("GET", f"/v1/vehicles/{vin}/channel", b"", (car_key, vin)),
    }[kind]
    headers = {DEADLINE_HEADER: str(DEADLINE_MS)}
    if kind != "connect":
        headers["Authorization"] = f"Bearer {population.bearer}"
    if body:
        headers["Content-Type"] = "application/json"
    if signer is not None:
        key, device_id = signer
        headers[HEADER] = sign_request(key, device_id=device_id, method=method, path=path,
                                       body=body, timestamp=int(time.time()))  # fmt: skip
    try:
        if kind == "connect":
            return await _connect(http, path, headers)
        async with http.request(method, path, data=body or None, headers=headers) as response:
            answer = await response.read()
            return response.status, _seconds(response.headers.get("Retry-After")), _code(answer)
    except (aiohttp.ClientError, TimeoutError):
        return 0, None, None


def _command_body() -> bytes:
    return json.dumps({"action": "unlock", "idempotency_key": secrets.token_urlsafe(12)}).encode()


async def _connect(
    http: aiohttp.ClientSession, path: str, headers: dict[str, str]
) -> tuple[int, int | None, str | None]:
    """A car's channel: upgrade, read the server's first frame, leave (a reconnect storm)."""
    try:
        ws = await http.ws_connect(path, headers=headers)
    except aiohttp.WSServerHandshakeError as error:
        seconds = _seconds(None if error.headers is None else error.headers.get("Retry-After"))
        return error.status, seconds, "overloaded" if error.status == 429 else None
    async with ws:
        await ws.receive(timeout=REQUEST_TIMEOUT_S)
    return 101, None, None


def _seconds(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _code(answer: bytes) -> str | None:
    try:
        error = json.loads(answer).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None
