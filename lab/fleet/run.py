"""One fleet run: cars connect, a revocation and a remote command go to every car, the keyserver
restarts and the cars come back, Redis restarts under them — with the figures of each step
(``FleetReport``).

The cars live in worker processes (``lab.fleet.worker``, ``--processes``), each with its share
on its own event loop, so one core's worth of Python is not what limits a large fleet; this
process conducts them (``lab.fleet.pool``) and does the arithmetic (``lab.fleet.report``).
Without a keyserver URL the run starts its own (embedded SQLite store, or with ``store="redis"``
a redis-server of its own on a free loopback port, persisted so it can restart) and stops
everything afterwards. Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from keycore.cose import point_bytes
from lab.errors import LabError
from lab.fleet.fleet import HTTP_TIMEOUT, SETUP_CONCURRENCY, Operator, create_operator
from lab.fleet.pool import (
    WorkerError,
    WorkerPool,
    cpu_between,
    cpu_snapshot,
    first_listen,
    load_average,
)
from lab.fleet.redis_restart import OwnRedis, restart_redis
from lab.fleet.report import (
    CarRestart,
    RedisRestartReport,
    RestartReport,
    restart_report,
)
from lab.fleet.worker import WorkerConfig
from lab.processes.keyserver import OwnKeyserver, own_keyserver
from lab.stats import percentile
from vehicle_agent.backoff import ReconnectPolicy

ROUND_CONCURRENCY = 32  # API calls in flight during a round, over all workers
STEP_LIMIT_S = 300.0  # no step of a run may take longer: a hang guard, not a measurement
SETUP_LIMIT_PER_CAR_S = 0.2  # on top of STEP_LIMIT_S: 10,000 cars may take half an hour
ROUND_LIMIT_PER_CAR_S = 0.05  # a round (connect, revocations, commands) grows with the fleet too
MAX_PROCESSES = 16
Store = Literal["embedded", "redis"]


class FleetError(LabError, RuntimeError):
    """The run could not do what it was asked; one line for a person."""


@dataclass(frozen=True)
class FleetSettings:
    vehicles: int
    keyserver_url: str | None = None  # None: start an embedded keyserver of our own
    root_key: ec.EllipticCurvePublicKey | None = field(default=None, repr=False)
    provisioning_secret: str = field(default="", repr=False)
    first_jitter_s: float = ReconnectPolicy.first_jitter_s
    revoke: bool = True
    command: bool = True
    restart: bool = False  # only with a keyserver of our own
    restart_redis: bool = False  # only with store="redis" (and a keyserver of our own)
    store: Store = "embedded"
    processes: int = 1  # worker processes the cars are spread over
    back_limit_s: float = STEP_LIMIT_S  # how long a restart waits for every car, at most
    state_dir: Path | None = None
    work_dir: Path | None = None  # the keyserver's data, Redis's files, the workers' logs


@dataclass
class FleetReport:
    vehicles: int
    processes: int = 1
    store: str = "embedded"
    online: int = 0
    setup_s: float = 0.0
    connect_s: float = 0.0  # from the first car started to all online
    memory_per_vehicle_kib: float = 0.0
    revocations_sent: int = 0
    revocations_reached: int = 0
    revocations_enforced: int = 0  # cars that then denied the revoked key (code "revoked")
    revocation_p50_ms: float = 0.0
    revocation_p99_ms: float = 0.0
    revocation_max_ms: float = 0.0
    revocation_after_answer_p50_ms: float = 0.0  # from the keyserver's 200 to the car
    revocation_after_answer_p99_ms: float = 0.0
    commands_sent: int = 0
    commands_executed: int = 0
    commands_doubled: int = 0
    command_p50_ms: float = 0.0
    command_p99_ms: float = 0.0
    restart: RestartReport | None = None
    redis_restart: RedisRestartReport | None = None
    first_jitter_s: float = 0.0
    worker_pids: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_fleet(settings: FleetSettings) -> FleetReport:
    """The whole run, on a fresh event loop."""
    if settings.vehicles < 1:
        raise FleetError("a fleet needs at least one vehicle")
    if not 1 <= settings.processes <= MAX_PROCESSES:
        raise FleetError(f"--processes must be in 1…{MAX_PROCESSES}")
    if settings.processes > settings.vehicles:
        raise FleetError("more processes than cars")
    if (settings.restart or settings.store == "redis") and settings.keyserver_url is not None:
        raise FleetError(
            "--restart and --store need the fleet's own keyserver (no --keyserver URL)"
        )
    if settings.restart_redis and settings.store != "redis":
        raise FleetError("--restart-redis needs --store redis")
    with ExitStack() as stack:
        work = settings.work_dir
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phonekey-fleet-")))
        settings = _with_work_dir(settings, work)
        if settings.keyserver_url is not None:
            return asyncio.run(_run(settings, None, None))
        redis = None
        if settings.store == "redis":
            redis = stack.enter_context(OwnRedis.running(work / "redis"))
        own = stack.enter_context(
            own_keyserver(work, redis_url=None if redis is None else redis.url)
        )
        return asyncio.run(_run(settings, own, redis))


def _with_work_dir(settings: FleetSettings, work: Path) -> FleetSettings:
    return replace(settings, work_dir=work)


async def _run(
    settings: FleetSettings, own: OwnKeyserver | None, redis: OwnRedis | None
) -> FleetReport:
    report = FleetReport(
        settings.vehicles, first_jitter_s=settings.first_jitter_s, processes=settings.processes,
        store="redis" if redis is not None else "embedded",
    )  # fmt: skip
    if own is not None:
        url, root, secret = own.url, own.root(), own.secret
    else:
        assert settings.keyserver_url is not None
        if settings.root_key is None or not settings.provisioning_secret:
            raise FleetError("an outside keyserver needs --root-key and a provisioning secret")
        url, root, secret = settings.keyserver_url, settings.root_key, settings.provisioning_secret
    started = time.monotonic()
    async with aiohttp.ClientSession(base_url=url, timeout=HTTP_TIMEOUT) as api:
        operator = await _bounded(create_operator(api), "logging the operator in")
    assert settings.work_dir is not None
    pool = WorkerPool(settings.work_dir)
    try:
        await pool.start(_worker_configs(settings, url, root, secret, operator))
        # provisioning takes a few API calls per car: its bound grows with the fleet
        setup_limit_s = STEP_LIMIT_S + settings.vehicles * SETUP_LIMIT_PER_CAR_S
        await _step(pool, "setup", "provisioning the cars", limit_s=setup_limit_s)
        report.setup_s = round(time.monotonic() - started, 2)
        round_limit_s = STEP_LIMIT_S + settings.vehicles * ROUND_LIMIT_PER_CAR_S
        connected = await _step(pool, "connect", "connecting", limit_s=round_limit_s)
        report.connect_s = round(time.monotonic() - started, 2)
        report.online = sum(int(a["online"]) for a in connected)
        growth = sum(int(a["rss_growth"]) for a in connected)
        report.memory_per_vehicle_kib = round(growth / 1024 / settings.vehicles, 1)
        report.worker_pids = [w.pid for w in pool.workers]
        if settings.revoke:
            revoked = await _step(pool, "revoke", "the revocation round", limit_s=round_limit_s)
            _revocation_figures(report, revoked)
        if settings.command:
            commanded = await _step(pool, "command", "the command round", limit_s=round_limit_s)
            _command_figures(report, commanded)
        if settings.restart and own is not None:
            report.restart = await _restart(pool, own, settings)
            report.online = report.restart.spread.reconnected
        if settings.restart_redis and redis is not None and own is not None:
            report.redis_restart = await _restart_redis(pool, own, redis, settings)
    finally:
        await pool.close()
    return report


def _worker_configs(
    settings: FleetSettings, url: str, root: ec.EllipticCurvePublicKey, secret: str,
    operator: Operator,
) -> list[WorkerConfig]:  # fmt: skip
    share, extra = divmod(settings.vehicles, settings.processes)
    configs, first = [], 0
    for index in range(settings.processes):
        count = share + (index < extra)
        configs.append(
            WorkerConfig(
                url=url,
                root=base64.urlsafe_b64encode(point_bytes(root)).decode().rstrip("="),
                secret=secret,
                bearer=operator.bearer,
                device_pem=operator.device.to_pem().decode(),
                device_id=operator.device_id,
                first=first,
                count=count,
                first_jitter_s=settings.first_jitter_s,
                setup_concurrency=max(2, SETUP_CONCURRENCY // settings.processes),
                round_concurrency=max(4, ROUND_CONCURRENCY // settings.processes),
                state_dir=None if settings.state_dir is None else str(settings.state_dir),
            )
        )
        first += count
    return [c for c in configs if c.count > 0]


async def _step(
    pool: WorkerPool, op: str, doing: str, *, limit_s: float = STEP_LIMIT_S, **args: Any
) -> list[dict[str, Any]]:
    try:
        return await pool.ask(op, limit_s=limit_s, **args)
    except WorkerError as error:
        raise FleetError(f"{doing}: {error}") from None


async def _bounded(step: Awaitable[Any], doing: str) -> Any:
    try:
        async with asyncio.timeout(STEP_LIMIT_S):
            return await step
    except TimeoutError:
        raise FleetError(f"{doing} took more than {STEP_LIMIT_S:.0f} s") from None


def _revocation_figures(report: FleetReport, answers: list[dict[str, Any]]) -> None:
    delays = [d for a in answers for d in a["delays_ms"]]
    after = [d for a in answers for d in a["after_answer_ms"]]
    report.revocations_sent = report.revocations_reached = len(delays)
    report.revocations_enforced = sum(int(a["enforced"]) for a in answers)
    if delays:
        report.revocation_p50_ms = round(statistics.median(delays), 1)
        report.revocation_p99_ms = round(percentile(delays, 0.99), 1)
        report.revocation_max_ms = round(max(delays), 1)
        report.revocation_after_answer_p50_ms = round(statistics.median(after), 1)
        report.revocation_after_answer_p99_ms = round(percentile(after, 0.99), 1)


def _command_figures(report: FleetReport, answers: list[dict[str, Any]]) -> None:
    delays = [d for a in answers for d in a["delays_ms"]]
    report.commands_sent = len(delays)
    report.commands_executed = sum(int(a["executed"]) for a in answers)
    report.commands_doubled = sum(int(a["doubled"]) for a in answers)
    if delays:
        report.command_p50_ms = round(statistics.median(delays), 1)
        report.command_p99_ms = round(percentile(delays, 0.99), 1)


# restarts


async def _restart(pool: WorkerPool, own: OwnKeyserver, settings: FleetSettings) -> RestartReport:
    """Stop the keyserver (SIGTERM: it closes every channel), start it again on the same port,
    and see how the cars come back, timed from the moment the new process listens."""
    load = load_average()
    await _step(pool, "mark", "marking the restart")
    down = time.monotonic()
    await asyncio.to_thread(own.stop)
    await _step(pool, "wait_offline", "the cars noticing the restart")
    listening = asyncio.ensure_future(first_listen(own.port, STEP_LIMIT_S))
    try:
        await asyncio.to_thread(own.start)
        ready = time.monotonic()
        listen_at = await listening
    finally:
        listening.cancel()
    processes = _processes(pool, keyserver=own, redis=None)
    before = cpu_snapshot(processes)
    try:
        answers = await pool.ask(
            "wait_back", limit_s=settings.back_limit_s, listen_at=listen_at,
            within_s=settings.back_limit_s,
        )  # fmt: skip
    except WorkerError as error:
        raise FleetError(f"reconnecting: {error}") from None
    end = time.monotonic()
    cpu = cpu_between(before, cpu_snapshot(processes), end - listen_at)
    cars = [CarRestart(**c) for a in answers for c in a["cars"]]
    result = restart_report(cars, fleet_size=settings.vehicles)
    result.down_to_listen_s = round(listen_at - down, 3)
    result.listen_to_ready_s = round(max(0.0, ready - listen_at), 3)
    result.server = await _server_counts(own.url)
    result.cpu = cpu
    result.load_before = load
    return result


def _processes(
    pool: WorkerPool, *, keyserver: OwnKeyserver | None, redis: OwnRedis | None
) -> dict[str, int]:
    """The run's processes by name, for their CPU time."""
    named = {f"worker {w.index}": w.pid for w in pool.workers}
    if keyserver is not None and keyserver.pid is not None:
        named["keyserver"] = keyserver.pid
    if redis is not None and redis.pid is not None:
        named["redis"] = redis.pid
    return named


async def _server_counts(url: str) -> dict[str, float]:
    """The restarted keyserver's own counts of channel upgrade answers (its /metrics)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
            http.get(f"{url}/metrics") as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    return channel_counts(text)


CHANNEL_ROUTE = "/v1/vehicles/{vin}/channel"
UPGRADES = "keyserver_channel_upgrades_"  # keyserver.pacing's counters


def channel_counts(text: str) -> dict[str, float]:
    """From Prometheus text: the channel route's answers by status ("status 429": n; a 101 is
    counted when its connection ends), and the pacer's upgrades ("admitted": n, "paced slot": n)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.name == "keyserver_requests_total":
                if sample.labels.get("route") == CHANNEL_ROUTE:
                    key = f"status {sample.labels.get('status', '?')}"
                    counts[key] = counts.get(key, 0.0) + sample.value
            elif sample.name.startswith(UPGRADES):
                what = sample.name.removeprefix(UPGRADES).removesuffix("_total")
                reason = sample.labels.get("reason")
                key = f"{what} {reason}" if reason else what
                counts[key] = counts.get(key, 0.0) + sample.value
    return dict(sorted(counts.items()))


async def _restart_redis(
    pool: WorkerPool, own: OwnKeyserver, redis: OwnRedis, settings: FleetSettings
) -> RedisRestartReport:
    try:
        return await restart_redis(
            pool, redis, processes=lambda: _processes(pool, keyserver=own, redis=redis),
            step_limit_s=STEP_LIMIT_S + settings.vehicles * ROUND_LIMIT_PER_CAR_S,
            within_s=settings.back_limit_s,
        )  # fmt: skip
    except WorkerError as error:
        raise FleetError(f"the Redis restart: {error}") from None
