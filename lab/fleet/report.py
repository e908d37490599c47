"""The figures of a fleet restart, from what each car saw (``CarRestart``): pure arithmetic, no I/O.

A restart is timed from the moment the restarted server *listens* (``t = 0``): each car's time
back is its first channel after that moment. Answers the cars received are split three ways:
upgrades (101), refusals (429: the server pacing reconnects, ``reconnect_paced``, counted apart
from the others, e.g. ``overloaded``) and errors (anything else after the server listened: other
statuses, connections that failed or timed out). Connections refused while the server was down
are expected and counted apart. A car's own local refusals (its adaptive throttle) and its
breaker are per-car state, reported for the slowest cars.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lab.stats import percentile

BUCKET_S = 0.1  # the reconnect rate is counted in windows of this length
SLOWEST = 10  # cars shown by name with their last error
PACED = "reconnect_paced"  # the keyserver's code for a paced upgrade refusal


@dataclass
class CarRestart:
    """One car through one restart, as its worker saw it."""

    vin: str
    back_s: float | None  # first channel after the server listened; None: not back in time
    attempts: int = 0  # upgrade requests sent since the server went down
    answers: dict[str, int] = field(default_factory=dict)  # "101", "429 reconnect_paced", …
    errors_after_listen: int = 0  # failed attempts after t = 0 that were not a 429
    refused_while_down: int = 0  # connections that failed before t = 0 (expected)
    throttled_locally: int = 0  # attempts the car's adaptive throttle refused itself
    breaker: str = ""  # the car's cloud-link breaker state at the end
    last_error: str = ""  # the link's last error (before it came back, or still)
    retry_after_max_s: float = 0.0  # the largest Retry-After the car was given


@dataclass
class Spread:
    """How the cars came back: times from the server listening, and the reconnect rate."""

    vehicles: int = 0
    reconnected: int = 0
    all_back_s: float | None = None  # the last car's time back; None if some never came back
    first_s: float = 0.0
    p50_s: float = 0.0
    p90_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = 0.0
    bucket_s: float = BUCKET_S
    peak_per_bucket: int = 0
    peak_per_s: float = 0.0  # the busiest window, as a rate
    peak_per_s_1s: int = 0  # the busiest whole second
    steady_per_s: float = 0.0  # reconnected / (last − first): the rate had it been even
    peak_over_steady: float = 0.0
    peak_share: float = 0.0  # peak_per_bucket / fleet size: 1.0 would be a synchronized burst


def spread(offsets: list[float], *, fleet_size: int, bucket_s: float = BUCKET_S) -> Spread:
    """The reconnect figures from each returning car's time back (seconds after t = 0)."""
    if not offsets:
        return Spread(vehicles=fleet_size)
    buckets: dict[int, int] = {}
    seconds: dict[int, int] = {}
    for offset in offsets:
        index = int(offset // bucket_s)
        buckets[index] = buckets.get(index, 0) + 1
        seconds[int(offset)] = seconds.get(int(offset), 0) + 1
    peak = max(buckets.values())
    first, last = min(offsets), max(offsets)
    # over less than one bucket the even rate is the bucket's: no division by a tiny span
    steady = len(offsets) / max(last - first, bucket_s)
    peak_rate = peak / bucket_s
    return Spread(
        vehicles=fleet_size,
        reconnected=len(offsets),
        all_back_s=round(last, 3) if len(offsets) == fleet_size else None,
        first_s=round(first, 3),
        p50_s=round(percentile(offsets, 0.50), 3),
        p90_s=round(percentile(offsets, 0.90), 3),
        p99_s=round(percentile(offsets, 0.99), 3),
        max_s=round(last, 3),
        bucket_s=bucket_s,
        peak_per_bucket=peak,
        peak_per_s=round(peak_rate, 1),
        peak_per_s_1s=max(seconds.values()),
        steady_per_s=round(steady, 1),
        peak_over_steady=round(peak_rate / steady, 2),
        peak_share=round(peak / fleet_size, 4),
    )


@dataclass
class Answers:
    """What the cars were answered, summed over the fleet."""

    upgrades: int = 0  # 101
    refusals_paced: int = 0  # 429 reconnect_paced: not an error
    refusals_other: int = 0  # 429 with another code (overloaded, rate_limited)
    errors: int = 0  # after the server listened: not a 101, not a 429
    refused_while_down: int = 0
    throttled_locally: int = 0
    by_answer: dict[str, int] = field(default_factory=dict)


def is_paced(answer: str) -> bool:
    return answer == f"429 {PACED}"


def answers(cars: list[CarRestart]) -> Answers:
    total = Answers()
    for car in cars:
        for answer, count in car.answers.items():
            total.by_answer[answer] = total.by_answer.get(answer, 0) + count
            if answer == "101":
                total.upgrades += count
            elif is_paced(answer):
                total.refusals_paced += count
            elif answer.startswith("429"):
                total.refusals_other += count
        total.errors += car.errors_after_listen
        total.refused_while_down += car.refused_while_down
        total.throttled_locally += car.throttled_locally
    total.by_answer = dict(sorted(total.by_answer.items()))
    return total


def slowest(cars: list[CarRestart], count: int = SLOWEST) -> list[CarRestart]:
    """The cars that came back last, those never back first (ties: most attempts first)."""
    never = float("inf")
    return sorted(cars, key=lambda c: (c.back_s if c.back_s is not None else never, c.attempts))[
        ::-1
    ][:count]


@dataclass
class ProcessCpu:
    """One process's CPU over a window: user and system seconds, and their share of the window."""

    name: str
    pid: int
    user_s: float
    sys_s: float
    share: float  # (user + sys) / the window's wall time; 1.0 is one whole core


def process_cpu(
    name: str, pid: int, before: tuple[float, float], after: tuple[float, float], wall_s: float
) -> ProcessCpu:
    user, system = max(0.0, after[0] - before[0]), max(0.0, after[1] - before[1])
    share = (user + system) / wall_s if wall_s > 0 else 0.0
    return ProcessCpu(name, pid, round(user, 2), round(system, 2), round(share, 3))


@dataclass
class OpsRate:
    """A store's operation rate from its total command count, sampled (Redis INFO stats)."""

    samples: int = 0
    peak_per_s: float = 0.0  # the busiest interval between two samples
    mean_per_s: float = 0.0
    total: int = 0
    instantaneous_max: int = 0  # Redis's own instantaneous_ops_per_sec, largest seen


def ops_rate(readings: list[tuple[float, int]], instantaneous: list[int]) -> OpsRate:
    """``readings``: (monotonic time, total commands processed). A counter that goes back (the
    server restarted) starts a new run; our own sampling command is taken off each interval."""
    peak, total, span = 0.0, 0, 0.0
    for (t0, c0), (t1, c1) in itertools.pairwise(readings):
        if c1 < c0 or t1 <= t0:
            continue
        done = max(0, c1 - c0 - 1)  # one INFO per sample is ours
        total += done
        span += t1 - t0
        peak = max(peak, done / (t1 - t0))
    return OpsRate(
        samples=len(readings),
        peak_per_s=round(peak, 1),
        mean_per_s=round(total / span, 1) if span > 0 else 0.0,
        total=total,
        instantaneous_max=max(instantaneous, default=0),
    )


@dataclass
class RestartReport:
    """One keyserver restart under the fleet."""

    down_to_listen_s: float = 0.0  # from SIGTERM to the new process listening
    listen_to_ready_s: float = 0.0  # from listening to its "Running on" line read here
    spread: Spread = field(default_factory=Spread)
    answers: Answers = field(default_factory=Answers)
    server: dict[str, float] = field(default_factory=dict)  # the keyserver's own counts
    slowest: list[CarRestart] = field(default_factory=list)
    cpu: list[ProcessCpu] = field(default_factory=list)  # from listening to every car back
    load_before: str = ""  # /proc/loadavg when the restart began


def restart_report(
    cars: list[CarRestart], *, fleet_size: int, bucket_s: float = BUCKET_S
) -> RestartReport:
    offsets = [c.back_s for c in cars if c.back_s is not None]
    return RestartReport(
        spread=spread(offsets, fleet_size=fleet_size, bucket_s=bucket_s),
        answers=answers(cars),
        slowest=slowest(cars),
    )


@dataclass
class CarCurrent:
    """One car after a Redis restart: when it held a list newer than the outage's, and whether
    that is the ledger's."""

    vin: str
    current_s: float | None  # from Redis listening; None: not within the bound
    sequence: int
    ledger_sequence: int | None
    enforced: bool  # the car denies the key revoked during the outage
    online: bool
    last_error: str = ""
    outage_answer: str = ""  # the keyserver's answer to the revocation during the outage


@dataclass
class RedisRestartReport:
    down_to_listen_s: float = 0.0
    listen_to_ready_s: float = 0.0  # Redis: from its port accepting to "Ready" (data loaded)
    outage_answers: dict[str, int] = field(default_factory=dict)  # the outage's revocations
    reached_in_outage: int = 0  # cars that got the outage's list pushed at once
    retried_after: int = 0  # revocations refused in the outage, asked again once it was back
    vehicles: int = 0
    current: int = 0  # cars holding a newer list within the bound
    all_current_s: float | None = None
    p50_s: float = 0.0
    p90_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = 0.0
    matching_ledger: int = 0  # cars whose sequence is the ledger's, checked after
    enforced: int = 0
    online_after: int = 0
    store_ops: OpsRate = field(default_factory=OpsRate)
    slowest: list[CarCurrent] = field(default_factory=list)
    cpu: list[ProcessCpu] = field(default_factory=list)
    load_before: str = ""


def redis_restart_report(cars: list[CarCurrent]) -> RedisRestartReport:
    times = [c.current_s for c in cars if c.current_s is not None]
    never = float("inf")
    order = sorted(cars, key=lambda c: c.current_s if c.current_s is not None else never)
    return RedisRestartReport(
        vehicles=len(cars),
        current=len(times),
        all_current_s=round(max(times), 3) if times and len(times) == len(cars) else None,
        p50_s=round(percentile(times, 0.5), 3) if times else 0.0,
        p90_s=round(percentile(times, 0.9), 3) if times else 0.0,
        p99_s=round(percentile(times, 0.99), 3) if times else 0.0,
        max_s=round(max(times), 3) if times else 0.0,
        matching_ledger=sum(c.ledger_sequence == c.sequence for c in cars),
        enforced=sum(c.enforced for c in cars),
        online_after=sum(c.online for c in cars),
        slowest=order[::-1][:SLOWEST],
    )
