"""One car reconnecting after overload refusals, on a fake clock: how long until it is through.

``python -m lab.fleet.reconnect_sim [--trials N] [--refusals R] [--seed S]`` runs the car's own
connect path — ``CloudLink``'s retrier, ``ConnectThrottle`` (``AdaptiveThrottle``), the cloud-link
breaker, the reconnect policy's waits — against a stand-in keyserver that refuses the first R
upgrades (429 ``overloaded``, ``Retry-After`` 1–3 s, as admission control answers) and accepts
every one after. Time is a fake clock moved by the car's own sleeps, so 2,000 trials take seconds
and nothing waits. It prints the time from the last refusal (the backend is healthy from then
on) until the car is connected — p50/p90/p99/max — and the state of the slowest car: its throttle
counts, breaker state, last error and the answers it got. Issue 14's evidence, before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from keycore import SoftwareSigner
from lab.stats import percentile
from resilience.breaker import CircuitBreaker
from resilience.overload import AdaptiveThrottle
from vehicle_agent.backoff import ConnectThrottle, ReconnectPolicy
from vehicle_agent.channel import CloudLink
from vehicle_agent.vehicle import Vehicle

VIN = "1PKSIM00000000001"
MAX_SIM_S = 3_600.0  # a trial stops here: a hang guard on simulated time
TRACE_ENTRIES = 12


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Trial:
    """What one car saw."""

    through_after_s: float | None = None  # from the last refusal; None: not within MAX_SIM_S
    answers: list[str] = field(default_factory=list)  # each upgrade answer, with its time
    local_rejections: int = 0
    # the throttle at each local rejection: time, requests, accepts, P (the last few)
    rejection_trace: list[str] = field(default_factory=list)
    throttle_requests: int = 0
    throttle_accepts: int = 0
    breaker_state: str = ""
    last_error: str = ""


class RefusingServer:
    """Refuses the first ``refusals`` upgrades that reach it (429 overloaded), accepts the rest."""

    def __init__(self, clock: FakeClock, refusals: int, rng: random.Random) -> None:
        self.clock = clock
        self.left = refusals
        self.rng = rng
        self.healthy_since: float | None = None if refusals else 0.0
        self.answers: list[str] = []

    async def ws_connect(self, url: str, **_: Any) -> object:
        now = self.clock()
        if self.left > 0:
            self.left -= 1
            wait = str(1 + int(self.rng.random() * 3))  # keyserver.admission's spread
            self.answers.append(f"{now:.1f}s 429 Retry-After {wait}")
            if self.left == 0:
                self.healthy_since = now
            headers = CIMultiDictProxy(CIMultiDict({"Retry-After": wait}))
            raise aiohttp.WSServerHandshakeError(
                cast(Any, None), (), status=429, message="overloaded", headers=headers
            )
        self.answers.append(f"{now:.1f}s 101")
        return object()


class TracedThrottle(ConnectThrottle):
    """The car's throttle, noting its counts whenever it refuses an attempt locally."""

    def __init__(self, throttle: AdaptiveThrottle, clock: FakeClock) -> None:
        super().__init__(throttle)
        self.clock = clock
        self.trace: list[str] = []

    def allow(self) -> bool:
        p = self.throttle.reject_probability()
        requests, accepts = self.throttle.requests, self.throttle.accepts
        allowed = super().allow()
        if not allowed:
            self.trace.append(f"{self.clock():.1f}s {requests} req {accepts} acc P={p:.2f}")
            del self.trace[:-TRACE_ENTRIES]
        return allowed


async def one_trial(refusals: int, rng: random.Random) -> Trial:
    clock = FakeClock()
    server = RefusingServer(clock, refusals, rng)

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    identity = SimpleNamespace(
        vin=VIN, vehicle_key=SoftwareSigner.generate(), keyserver_url="http://sim"
    )
    vehicle = cast(Vehicle, SimpleNamespace(vin=VIN, identity=identity))
    policy = ReconnectPolicy()
    throttle = TracedThrottle(AdaptiveThrottle(clock=clock, rng=rng.random), clock)
    breaker = CircuitBreaker("cloud-link", policy.breaker, clock=clock, rng=rng.random)
    link = CloudLink(
        vehicle, policy=policy, url="http://sim", wall=lambda: 1e9, sleep=sleep,
        breaker=breaker, throttle=throttle,
    )  # fmt: skip
    http = cast(aiohttp.ClientSession, server)
    trial = Trial()
    while clock.now < MAX_SIM_S:
        # the car's own loop (CloudLink.run): connect, and after a failed cycle rest, then again
        if await link._connect(http) is not None:
            assert server.healthy_since is not None
            trial.through_after_s = clock.now - server.healthy_since
            break
        await sleep(policy.rest())
    trial.answers = server.answers
    trial.local_rejections = throttle.rejected
    trial.rejection_trace = throttle.trace
    trial.throttle_requests = throttle.throttle.requests
    trial.throttle_accepts = throttle.throttle.accepts
    trial.breaker_state = breaker.state.value
    trial.last_error = link.stats.last_error
    return trial


def _slowness(trial: Trial) -> float:
    return MAX_SIM_S if trial.through_after_s is None else trial.through_after_s


async def simulate(trials: int, refusals: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)  # noqa: S311 — a simulation's draws, seeded to repeat
    random.seed(seed)  # tenacity's and the policy's jitter draw from the module's generator
    results = [await one_trial(refusals, rng) for _ in range(trials)]
    through = sorted(r.through_after_s for r in results if r.through_after_s is not None)
    slowest = max(
        results, key=lambda r: MAX_SIM_S if r.through_after_s is None else r.through_after_s
    )
    return {
        "trials": trials,
        "refusals": refusals,
        "seed": seed,
        "not_through_within_s": {"limit": MAX_SIM_S, "cars": trials - len(through)},
        "through_s": {
            "p50": round(percentile(through, 0.50), 1),
            "p90": round(percentile(through, 0.90), 1),
            "p99": round(percentile(through, 0.99), 1),
            "max": round(through[-1], 1),
        }
        if through
        else None,
        "slowest_car": asdict(slowest),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.fleet.reconnect_sim", description=__doc__)
    parser.add_argument("--trials", type=int, default=2_000)
    parser.add_argument("--refusals", type=int, default=3)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    logging.getLogger("vehicle_agent.channel").setLevel(logging.ERROR)  # a line per failed cycle
    if not 1 <= args.trials <= 100_000 or not 0 <= args.refusals <= 1_000:
        parser.error("--trials must be 1…100000 and --refusals 0…1000")
    print(json.dumps(asyncio.run(simulate(args.trials, args.refusals, args.seed)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
