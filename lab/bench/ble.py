"""``phonekey bench ble``: an unlock over the simulated BLE link against the keycore decision alone.

Each iteration times one complete unlock over a zero-latency simulated link — from the moment
the car accepts the connection to the phone holding the car's Result: the challenge, the
phone's proof, the request, the car's decision and the result, every message encoded, framed,
chunked and reassembled, on a real asyncio loop. Interleaved with it, ``keycore.decide`` runs on
the same kind of inputs (same token, same car state, a fresh challenge and proof). ``ratio`` is
unlock / decision (medians); ``overhead_ratio`` is (unlock − decision) / decision: what the
protocol itself adds — the phone's proof, encoding, framing, chunking, the event loop — per unit
of the decision it carries (the issue's target: at most 2).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO

from ble_fallback.car import CarEndpoint
from ble_fallback.link import LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.phone import unlock_over_ble
from ble_fallback.protocol import CarState
from keycore import (
    Action,
    ChallengeBook,
    IssuerKeyRing,
    RevocationLedger,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    UnlockRequest,
    decide,
    issue,
    prove,
)
from lab.stats import percentile

VIN = "5YJ3E1EA7KF000001"
NOW = 1_800_000_000
REVOKED_ENTRIES = 1_000
WARMUP = 20


@dataclass(frozen=True)
class BleBench:
    iterations: int
    mtu: int
    unlock_ms_median: float
    unlock_ms_p99: float
    decision_ms_median: float
    decision_ms_p99: float
    round_trips: int
    chunks: int
    bytes_on_air: int
    ratio: float  # unlock / decision, medians
    overhead_ms_median: float  # unlock − decision: what the protocol adds, the phone's proof too
    overhead_ratio: float  # overhead / decision: the issue's target is at most 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def bench_ble(iterations: int = 500, *, mtu: int = 185) -> BleBench:
    """Time ``iterations`` unlocks over the simulated link and as many bare decisions."""
    return asyncio.run(_bench(iterations, mtu))


async def _bench(iterations: int, mtu: int) -> BleBench:
    loop = asyncio.get_running_loop()
    root = SoftwareSigner.generate()
    ring = IssuerKeyRing.create(now=NOW - 3600)
    trust = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=NOW))
    issuer = ring.active.signer
    ledger = RevocationLedger(VIN)
    for _ in range(REVOKED_ENTRIES):  # the same realistic list as `bench verify`
        ledger.revoke_token(os.urandom(16), NOW + 86_400)
    revocations = RevocationState(VIN).apply(ledger.document(issuer, now=NOW), trust=trust, now=NOW)
    phone = SoftwareSigner.generate()
    token = issue(
        signer=issuer,
        vin=VIN,
        holder=phone.public_key,
        role=Role.OWNER,
        now=NOW,
        expires=NOW + 86_400,
    )
    clock = TrustedClock.provisioned(now=NOW, mono=loop.time(), boot_id="bench")
    car = CarState(VIN, trust, revocations, clock, ChallengeBook())
    endpoint = CarEndpoint(car, max_connections=1)
    policy = LinkPolicy(mtu=mtu)
    alone = ChallengeBook()

    unlocks: list[float] = []
    decisions: list[float] = []
    round_trips = chunks = bytes_on_air = 0
    gc.disable()
    try:
        for i in range(WARMUP + iterations):
            rng = random.Random(i)  # noqa: S311 - the simulated radio, not cryptography
            phone_end, car_end = SimulatedLink.pair(policy, LinkConditions(), rng=rng)
            start = time.perf_counter_ns()
            serving = loop.create_task(endpoint.serve(car_end))
            result = await unlock_over_ble(phone_end, token, phone, Action.UNLOCK, vin=VIN)
            unlock_ns = time.perf_counter_ns() - start
            await phone_end.close()
            await serving
            if not result.granted:
                raise RuntimeError(f"benchmark unlock denied: {result.code}")
            challenge = alone.issue(mono=loop.time())
            proof = prove(phone, challenge=challenge, vin=VIN, action=Action.UNLOCK, token=token)
            request = UnlockRequest(token, Action.UNLOCK, challenge, proof)
            start = time.perf_counter_ns()
            decision = decide(
                request,
                vin=VIN,
                trust=trust,
                revocations=revocations,
                clock=clock,
                challenges=alone,
                mono=loop.time(),
            )
            decision_ns = time.perf_counter_ns() - start
            if not decision.allowed:
                raise RuntimeError(f"benchmark decision denied: {decision.code}")
            if i >= WARMUP:
                unlocks.append(unlock_ns / 1e6)
                decisions.append(decision_ns / 1e6)
                round_trips = max(round_trips, result.round_trips)
                chunks, bytes_on_air = phone_end.stats.chunks_sent, phone_end.stats.bytes_on_air
    finally:
        gc.enable()
    unlock_median, decision_median = statistics.median(unlocks), statistics.median(decisions)
    return BleBench(
        iterations=iterations,
        mtu=mtu,
        unlock_ms_median=round(unlock_median, 4),
        unlock_ms_p99=round(_p99(unlocks), 4),
        decision_ms_median=round(decision_median, 4),
        decision_ms_p99=round(_p99(decisions), 4),
        round_trips=round_trips,
        chunks=chunks,
        bytes_on_air=bytes_on_air,
        ratio=round(unlock_median / decision_median, 3),
        overhead_ms_median=round(unlock_median - decision_median, 4),
        overhead_ratio=round((unlock_median - decision_median) / decision_median, 3),
    )


def _p99(samples: list[float]) -> float:
    return percentile(samples, 0.99)


def run(*, iterations: int, as_json: bool, out: TextIO | None = None) -> int:
    """The ``phonekey bench ble`` command: print the report; exit 0."""
    out = sys.stdout if out is None else out
    result = bench_ble(iterations)
    if as_json:
        print(result.to_json(), file=out)
        return 0
    print(
        f"unlock over BLE (sim)  median {result.unlock_ms_median:8.3f} ms"
        f"  p99 {result.unlock_ms_p99:8.3f} ms\n"
        f"keycore decision       median {result.decision_ms_median:8.3f} ms"
        f"  p99 {result.decision_ms_p99:8.3f} ms\n"
        f"ratio (medians)        {result.ratio:.3f}"
        f"   protocol overhead {result.overhead_ms_median:.3f} ms ="
        f" {result.overhead_ratio:.3f} × the decision\n"
        f"round trips {result.round_trips}, {result.chunks} chunks,"
        f" {result.bytes_on_air} bytes on air at MTU {result.mtu}",
        file=out,
    )
    return 0
