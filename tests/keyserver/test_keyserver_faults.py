"""The whole keyserver on a real redis-server that fails — killed, hung (SIGSTOP), slow (every
reply delayed by the fault proxy) — while phones keep refreshing tokens, reading their keys and
sending commands, and the owner revokes a key in the middle of the fault.

Asserted: zero 5xx while the fault lasts and after; no answer waited on the fault (none past
``HUNG_CALL_S``); the Redis breaker opens during the fault and closes after recovery (awaited as
events); the revocation accepted during the fault (202, journaled) is in the store once it is
back — no accepted write lost; during the fault phones still got fresh tokens and their keys.
Every answer is also checked against the OpenAPI document by the harness. How fast (p99 of the
answers, time to open and to close) is printed and measured by the drills, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keyserver.app import STORE_GUARD, create_app
from keyserver.config import build
from keyserver.models import KeyStatus
from keyserver.store.redis import RedisStore
from lab.processes.base import LOOPBACK
from lab.processes.redis_ha import SentinelGroup, start_sentinel_group
from lab.processes.redis_server import RedisServer
from lab.proxy.faultproxy import FaultProxy
from resilience.breaker import BreakerState
from tests.keyserver.cut_connections import finalize_cut_connections
from tests.keyserver.keys_harness import REVOKE, TOKEN, VIN, Api, Clock, Person
from tests.keyserver.test_redis_faults import HUNG_CALL_S, Transitions

KEYS = "/v1/vehicles/{vin}/keys"
COMMANDS = "/v1/vehicles/{vin}/commands"
HANG_GUARD_S = 30.0  # only against a hang: never a timing assertion
WORKERS = 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    # as in production: an append-only file fsynced on every write, so a killed Redis comes
    # back with every write it acknowledged
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    with RedisServer(tmp_path / "redis", extra_args=durable) as running_server:
        yield running_server


@asynccontextmanager
async def keyserver(
    tmp_path: Path,
    aiohttp_client: Any,
    clock: Clock,
    redis_port: int = 0,
    group: SentinelGroup | None = None,
) -> AsyncIterator[Api]:
    # the owner sends a command every few milliseconds: the store is what is under test here,
    # not the per-account rate limit
    settings = {"data_dir": str(tmp_path / "keyserver"), "account_writes_per_minute": "1000000"}
    if group is None:
        store = await RedisStore.connect(f"redis://{LOOPBACK}:{redis_port}/0", prefix="k:")
        settings["redis_url"] = "redis://unused"  # the store is given: only its kind matters
    else:
        addresses = group.sentinel_addresses
        store = await RedisStore.connect_sentinel(
            addresses, group.service, prefix="k:", wait_replicas=1
        )
        settings["redis_sentinels"] = ",".join(f"{h}:{p}" for h, p in addresses)
    app = create_app(build(settings), store=store)
    client = await aiohttp_client(app)
    try:
        yield Api(app, client, clock)
    finally:
        await client.close()  # the app first (its hub bridge holds a connection), then its store
        await store.close()
        finalize_cut_connections()  # connections the fault cut, finalized while the loop is open


@dataclass
class Phones:
    """Phones doing their usual work in a loop; every answer's status and time is kept."""

    api: Api
    owner: Person
    driver: Person
    key: dict[str, Any]
    answers: list[tuple[float, float, int, str]] = field(default_factory=list)
    _n: int = 0

    async def _one(self) -> None:
        self._n += 1
        kind = ("refresh", "keys", "command")[self._n % 3]
        started = time.monotonic()
        async with asyncio.timeout(HANG_GUARD_S):
            if kind == "refresh":
                body = {"token": self.key["token"]}
                reply = await self.api.call(
                    self.driver, "POST", TOKEN, body, key_id=self.key["key_id"]
                )
            elif kind == "keys":
                reply = await self.api.call(self.owner, "GET", KEYS, proof=False, vin=VIN)
            else:
                body = {"action": "lock", "idempotency_key": f"lock-{self._n:08d}"}
                reply = await self.api.call(self.owner, "POST", COMMANDS, body, vin=VIN)
        self.answers.append((started, time.monotonic() - started, reply.status, kind))

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._one()
            await asyncio.sleep(0.01)

    def during(self, since: float, until: float) -> list[tuple[float, float, int, str]]:
        return [a for a in self.answers if since <= a[0] <= until]


async def _run(
    api: Api,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    inject: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
    *,
    heals_itself: bool = False,  # a failover: no probe need fail, the revoke may land at once
) -> None:
    owner = await api.person("owner")
    await api.vehicle(owner)
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    victim = await api.share(owner, await api.person("guest"), role="guest")
    refreshed = await api.call(driver, "POST", TOKEN, key_id=key["key_id"])  # known here
    assert refreshed.status == 200
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # last known data for the outage
    phones = Phones(api, owner, driver, dict(refreshed.body))
    transitions = Transitions(api.app[STORE_GUARD])
    stop = asyncio.Event()
    workers = [asyncio.create_task(phones._worker(stop)) for _ in range(WORKERS)]
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            while len(phones.answers) < 30:  # steady state first  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        started = time.monotonic()
        await inject()
        opened = await transitions.next(BreakerState.OPEN, after=started)
        revoked = await api.call(owner, "POST", REVOKE, key_id=victim["key_id"])
        assert revoked.status in ((200, 202) if heals_itself else (202,)), revoked.data
        if not heals_itself:
            probing = await transitions.next(BreakerState.HALF_OPEN, after=opened)
            await transitions.next(BreakerState.OPEN, after=probing)  # a probe failed: down
        await recover()
        recovered = time.monotonic()
        closed = await transitions.next(BreakerState.CLOSED, after=opened)
        async with asyncio.timeout(HANG_GUARD_S):  # the journal replays: the write is not lost
            while not await _revoked(api, victim["key_id"]):  # noqa: ASYNC110 — polls Redis
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    during = phones.during(started, recovered)
    times = sorted(d for _, d, _, _ in during)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    statuses = sorted({s for _, _, s, _ in phones.answers})
    with capsys.disabled():
        print(
            f"\n[keyserver, redis {fault}] answers during fault={len(during)}"
            f" p99={p99 * 1000:.0f} ms max={times[-1] * 1000:.0f} ms"
            f" breaker open after {opened - started:.3f} s,"
            f" closed {max(0.0, closed - recovered):.3f} s after recovery"
            f" (recovery {recovered - started:.3f} s after the fault); statuses seen {statuses}"
        )
    assert all(status < 500 for _, _, status, _ in phones.answers), statuses
    assert started <= opened <= closed
    assert times[-1] < HUNG_CALL_S
    # during the fault the phones still got useful answers: fresh tokens and last known keys
    useful = {kind for _, _, status, kind in during if status == 200}
    assert {"refresh", "keys"} <= useful


async def _revoked(api: Api, key_id: str) -> bool:
    record = await api.store.key(key_id)
    assert record is not None, "the key itself was lost"
    return record.status is KeyStatus.REVOKED


async def test_keyserver_with_redis_killed(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    port = server.port

    async def kill() -> None:
        server.kill()

    async def restart() -> None:
        await asyncio.to_thread(server.start, port=port)

    async with keyserver(tmp_path, aiohttp_client, clock, port) as api:
        await _run(api, capsys, "killed", kill, restart)


async def test_keyserver_with_redis_hung(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    async def pause() -> None:
        server.pause()

    async def resume() -> None:
        server.resume()

    async with keyserver(tmp_path, aiohttp_client, clock, server.port) as api:
        await _run(api, capsys, "hung (SIGSTOP)", pause, resume)


async def test_keyserver_with_redis_slow(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    async with FaultProxy(LOOPBACK, server.port) as proxy:

        async def slow() -> None:
            proxy.set(latency_down_s=0.12)  # every reply slower than a slow call (100 ms)

        async def fast() -> None:
            proxy.clear()

        async with keyserver(tmp_path, aiohttp_client, clock, proxy.port) as api:
            await _run(api, capsys, "slow (replies +120 ms)", slow, fast)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    # two replicas: the promoted one still has a replica to confirm writes (WAIT 1)
    with start_sentinel_group(tmp_path / "ha", replicas=2) as group:
        yield group


@pytest.mark.slow  # ~10 s of Sentinel set-up; the store-level failover test runs by default
async def test_keyserver_through_a_sentinel_failover(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, sentinel_group: SentinelGroup,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    group = sentinel_group
    old = group.primary.port

    async def kill_primary() -> None:
        group.primary.kill()

    async def promoted() -> None:
        port = await asyncio.to_thread(group.wait_for_master, other_than=old)
        assert port in {replica.port for replica in group.replicas}

    async with keyserver(tmp_path, aiohttp_client, clock, group=group) as api:
        await _run(api, capsys, "sentinel failover", kill_primary, promoted, heals_itself=True)
