"""The fleet's Redis restart: the keyserver's store goes away under connected cars and comes back.

``OwnRedis`` is a redis-server of the run's own on a free loopback port (never 6379), with an
append-only file so a restart keeps the data, restartable on the same port. ``restart_redis``
gives the operator a live key on every car, stops Redis (SIGTERM: it writes its file and exits),
revokes that key on every car while the store is down (the keyserver journals each revocation and
pushes a list it signs itself to the connected car), starts Redis again, and times, from the
moment Redis listens, until every car holds a list newer than the outage's — the ledger's, once
the journal is replayed — checked against the ledger afterwards. Meanwhile ``OpsSampler`` reads
Redis's total command count every 100 ms: the store's peak operation rate during the resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lab.fleet.pool import (
    WorkerPool,
    cpu_between,
    cpu_snapshot,
    first_listen,
    load_average,
)
from lab.fleet.report import CarCurrent, RedisRestartReport, ops_rate, redis_restart_report
from lab.processes.base import LOOPBACK
from lab.processes.redis_server import RedisServer

SAMPLE_EVERY_S = 0.1
MAX_SAMPLES = 20_000  # a bound: over half an hour of samples
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "everysec")


@dataclass
class OwnRedis:
    server: RedisServer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return None if self.server.process is None else self.server.pid

    def stop(self) -> None:
        self.server.stop()

    def start_again(self) -> None:
        self.server.start(port=self.server.port)

    @classmethod
    @contextmanager
    def running(cls, workdir: Path) -> Iterator[OwnRedis]:
        server = RedisServer(workdir, extra_args=PERSISTENT)
        server.start()
        try:
            yield cls(server)
        finally:
            server.stop()


@dataclass
class OpsSampler:
    """Redis's ``total_commands_processed`` (and ``instantaneous_ops_per_sec``) every 100 ms,
    across a restart (a refused sample is skipped)."""

    port: int
    readings: list[tuple[float, int]] = field(default_factory=list)
    instantaneous: list[tuple[float, int]] = field(default_factory=list)

    async def run(self) -> None:
        client = aioredis.Redis(host=LOOPBACK, port=self.port, socket_timeout=0.2,
                                socket_connect_timeout=0.2)  # fmt: skip
        try:
            for _ in range(MAX_SAMPLES):
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    stats = await client.info("stats")
                    self.readings.append((time.monotonic(), int(stats["total_commands_processed"])))
                    ops = int(stats.get("instantaneous_ops_per_sec", 0))
                    self.instantaneous.append((time.monotonic(), ops))
                await asyncio.sleep(SAMPLE_EVERY_S)
        finally:
            await client.aclose()


async def restart_redis(
    pool: WorkerPool,
    redis: OwnRedis,
    *,
    processes: Callable[[], dict[str, int]],
    step_limit_s: float,
    within_s: float,
) -> RedisRestartReport:
    await pool.ask("arm", limit_s=step_limit_s)
    load = load_average()
    sampler = OpsSampler(redis.port)
    sampling = asyncio.ensure_future(sampler.run())
    try:
        down = time.monotonic()
        await asyncio.to_thread(redis.stop)
        outage = await pool.ask("revoke_in_outage", limit_s=step_limit_s)
        listening = asyncio.ensure_future(first_listen(redis.port, step_limit_s))
        try:
            await asyncio.to_thread(redis.start_again)
            ready = time.monotonic()
            listen_at = await listening
        finally:
            listening.cancel()
        named = processes()
        before = cpu_snapshot(named)
        answers = await pool.ask(
            "wait_current", limit_s=within_s, listen_at=listen_at, within_s=within_s
        )
        end = time.monotonic()
        cpu = cpu_between(before, cpu_snapshot(named), end - listen_at)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    cars = [CarCurrent(**c) for a in answers for c in a["cars"]]
    report = redis_restart_report(cars)
    report.down_to_listen_s = round(listen_at - down, 3)
    report.listen_to_ready_s = round(max(0.0, ready - listen_at), 3)
    for answer in outage:
        for outcome, count in answer["answers"].items():
            report.outage_answers[outcome] = report.outage_answers.get(outcome, 0) + count
        report.reached_in_outage += int(answer["reached"])
    report.retried_after = sum(int(a["retried"]) for a in answers)
    after = [(t, c) for t, c in sampler.readings if t >= listen_at]
    report.store_ops = ops_rate(after, [n for t, n in sampler.instantaneous if t >= listen_at])
    report.cpu = cpu
    report.load_before = load
    return report
