"""The guarded Redis store against real redis-server processes that fail: killed, hung
(SIGSTOP), slow (every reply delayed by the fault proxy), and a Sentinel failover; and against a
healthy one while our own event loop stalls, which must not open the breaker.

Asserted: while the fault lasts every call returns a result or StoreUnavailable (anything else
fails) and no call waits on the fault (a hung attempt is cut at 150 ms, so a call past
``HUNG_CALL_S`` waited on Redis instead); the breaker opens during the fault, probes, and closes
after recovery (each transition awaited as an event); no acknowledged write is lost in the
failover. How fast (p99 of the calls, time to open and to close) is a figure, printed here and
measured by the drills (``detect_s``, ``recover_s``), never asserted: on a loaded 2-core machine a
timed bound is a coin toss.
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

from keyserver.errors import StoreUnavailable
from keyserver.models import Session
from keyserver.store.guarded import GuardedStore, is_outage, store_breaker
from keyserver.store.redis import RedisStore
from lab.processes.base import LOOPBACK
from lab.processes.redis_ha import SentinelGroup, start_sentinel_group
from lab.processes.redis_server import RedisServer
from lab.proxy.faultproxy import FaultProxy
from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker, StateTransition
from tests.keyserver.cut_connections import finalize_cut_connections

NOW = 1_800_000_000
# A call this long waited on the fault rather than being cut (150 ms per attempt, at most two):
# a hang detector with room for a loaded machine, not a speed bound.
HUNG_CALL_S = 2.0
HANG_GUARD = 20.0  # only against a hang: never a timing assertion


def session(n: int) -> Session:
    return Session(n.to_bytes(32, "big"), f"acc{n}", NOW + 3600)


@dataclass
class Load:
    """A few workers calling the store in a loop: every call's start, duration and outcome."""

    store: GuardedStore
    writes_only: bool = False
    calls: list[tuple[float, float, bool]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)
    _next: int = 0
    _acked: asyncio.Event = field(default_factory=asyncio.Event)

    async def _call(self) -> None:
        self._next += 1
        n = self._next
        write = self.writes_only or n % 2 == 0
        started = time.monotonic()
        ok = True
        try:
            async with asyncio.timeout(HANG_GUARD):
                if write:
                    await self.store.put_session(session(n))
                    self.acked.append(n)
                    self._acked.set()
                else:
                    await self.store.session(session(n - 1).token_hash, now=NOW)
        except StoreUnavailable:
            ok = False
        except Exception as error:  # anything else fails the test (G2: never a 5xx)
            self.unexpected.append(error)
            ok = False
        self.calls.append((started, time.monotonic() - started, ok))

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._call()
            await asyncio.sleep(0.005)

    async def acknowledged(self, count: int) -> None:
        """Until ``count`` more writes than now have been acknowledged."""
        target = len(self.acked) + count
        async with asyncio.timeout(HANG_GUARD):
            while len(self.acked) < target:
                self._acked.clear()
                await self._acked.wait()

    def latencies(self, since: float, until: float) -> tuple[float, float]:
        """(p99, max) of the calls that started in [since, until]."""
        during = sorted(d for s, d, _ in self.calls if since <= s <= until)
        if not during:
            return 0.0, 0.0
        return during[min(len(during) - 1, int(0.99 * len(during)))], during[-1]

    def first_success(self, since: float) -> float:
        return min(s + d for s, d, ok in self.calls if ok and s >= since)


@asynccontextmanager
async def running(load: Load, workers: int = 4) -> AsyncIterator[Load]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load._worker(stop)) for _ in range(workers)]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert not load.unexpected, load.unexpected[:3]


class Transitions:
    def __init__(self, store: GuardedStore) -> None:
        self.events: list[StateTransition] = []
        self._changed = asyncio.Event()
        store.breaker.add_listener(self._record)

    def _record(self, event: StateTransition) -> None:
        self.events.append(event)
        self._changed.set()

    async def next(self, state: BreakerState, *, after: float) -> float:
        """When the breaker next entered ``state`` at or after ``after``."""
        async with asyncio.timeout(HANG_GUARD):
            while True:
                for event in self.events:
                    if event.to_state is state and event.at >= after:
                        return event.at
                self._changed.clear()
                await self._changed.wait()


async def guarded(store: RedisStore, name: str = "redis") -> GuardedStore:
    return GuardedStore(store, store_breaker(name))


async def until_ok(store: GuardedStore) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while True:
            try:
                await store.ping()
                return
            except StoreUnavailable:
                await asyncio.sleep(0.02)


def report(capsys: pytest.CaptureFixture[str], fault: str, figures: dict[str, float]) -> None:
    with capsys.disabled():
        shown = ", ".join(f"{k}={v:.3f}" for k, v in figures.items())
        print(f"\n[redis fault] {fault}: {shown}")


async def drill(
    capsys: pytest.CaptureFixture[str],
    fault: str,
    store: GuardedStore,
    inject: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
) -> None:
    """Steady state, the fault until a probe has failed (the breaker reopened), then recovery."""
    transitions = Transitions(store)
    async with running(Load(store)) as load:
        await until_ok(store)
        started = time.monotonic()
        await inject()
        opened = await transitions.next(BreakerState.OPEN, after=started)
        probing = await transitions.next(BreakerState.HALF_OPEN, after=opened)
        reopened = await transitions.next(BreakerState.OPEN, after=probing)
        recovering = time.monotonic()
        await recover()
        recovered = time.monotonic()
        closed = await transitions.next(BreakerState.CLOSED, after=recovering)
    p99, slowest = load.latencies(started, recovering)
    report(
        capsys,
        fault,
        {
            "open_after_fault_s": opened - started,
            "reopened_after_probe_s": reopened - opened,
            "closed_after_recovery_s": closed - recovered,
            "p99_call_during_fault_s": p99,
            "max_call_during_fault_s": slowest,
            "calls": len(load.calls),
        },
    )
    assert started <= opened <= reopened <= recovering <= closed  # the breaker's whole cycle
    assert slowest < HUNG_CALL_S


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running_server:
        yield running_server


@pytest.fixture
async def redis_store(server: RedisServer) -> AsyncIterator[RedisStore]:
    store = await RedisStore.connect(server.url, prefix="f:")
    try:
        yield store
    finally:
        await store.close()
        finalize_cut_connections()


async def test_redis_killed(
    server: RedisServer, redis_store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    port = server.port

    async def kill() -> None:
        server.kill()

    async def restart() -> None:
        await asyncio.to_thread(server.start, port=port)

    await drill(capsys, "killed", await guarded(redis_store), kill, restart)


async def test_redis_hung(
    server: RedisServer, redis_store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    async def pause() -> None:
        server.pause()

    async def resume() -> None:
        server.resume()

    await drill(capsys, "hung (SIGSTOP)", await guarded(redis_store), pause, resume)


async def test_redis_slow(server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    async with FaultProxy(LOOPBACK, server.port) as proxy:
        store = await RedisStore.connect(f"redis://{LOOPBACK}:{proxy.port}/0", prefix="f:")
        try:

            async def slow() -> None:
                proxy.set(latency_down_s=0.12)  # every reply: slower than a slow call (100 ms)

            async def fast() -> None:
                proxy.clear()

            await drill(capsys, "slow (replies +120 ms)", await guarded(store), slow, fast)
        finally:
            await store.close()
            finalize_cut_connections()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    # two replicas: the promoted one still has a replica to confirm writes (WAIT 1)
    with start_sentinel_group(tmp_path / "ha", replicas=2) as group:
        yield group


async def test_sentinel_failover_loses_no_acknowledged_write(
    sentinel_group: SentinelGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    group = sentinel_group
    redis_store = await RedisStore.connect_sentinel(
        group.sentinel_addresses, group.service, prefix="f:", wait_replicas=1
    )
    try:
        store = await guarded(redis_store, "redis-primary")
        transitions = Transitions(store)
        async with running(Load(store, writes_only=True)) as load:
            await until_ok(store)
            await load.acknowledged(200)  # writes in flight when the primary dies
            old = group.primary.port
            started = time.monotonic()
            group.primary.kill()
            opened = await transitions.next(BreakerState.OPEN, after=started)
            promoted_port = await asyncio.to_thread(group.wait_for_master, other_than=old)
            promoted = time.monotonic()
            closed = await transitions.next(BreakerState.CLOSED, after=opened)
            await load.acknowledged(200)  # on the promoted replica
        writes_back = load.first_success(started)
        p99, slowest = load.latencies(started, writes_back)
        readable = 0
        for n in load.acked:
            readable += await redis_store.session(session(n).token_hash, now=NOW) is not None
    finally:
        await redis_store.close()
        finalize_cut_connections()
    lost = len(load.acked) - readable
    report(
        capsys,
        "sentinel failover (primary killed)",
        {
            "open_after_fault_s": opened - started,
            "sentinels_agree_after_s": promoted - started,
            "writes_succeed_after_s": writes_back - started,
            "closed_after_recovery_s": closed - promoted,
            "p99_call_during_fault_s": p99,
            "max_call_during_fault_s": slowest,
            "acknowledged_writes": len(load.acked),
            "lost": lost,
        },
    )
    assert promoted_port in {r.port for r in group.replicas}
    assert started <= opened <= closed
    assert slowest < HUNG_CALL_S
    assert lost == 0
    assert len(load.acked) > 0


async def test_a_write_no_replica_confirms_is_not_acknowledged(server: RedisServer) -> None:
    store = await RedisStore.connect(server.url, prefix="w:", wait_replicas=1, wait_timeout_s=0.01)
    try:
        with pytest.raises(StoreUnavailable) as failed:
            await store.put_session(session(1))
        assert failed.value.may_have_succeeded  # applied on the primary, on no replica
        assert await store.session(session(1).token_hash, now=NOW) == session(1)  # reads: no WAIT
        await store.ping()
    finally:
        await store.close()
        finalize_cut_connections()


class StallingCaller:
    """A healthy Redis store whose caller — our own loop — stalls while each command is in
    flight, as a CPU-bound storm of requests makes it: the command is sent, then the loop is
    blocked for ``stall_s`` before anyone reads the reply."""

    def __init__(self, inner: RedisStore, stall_s: float) -> None:
        self._inner = inner
        self._stall_s = stall_s

    async def _stalled(self, call: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0)  # the command goes out ...
        time.sleep(self._stall_s)  # noqa: ASYNC251 — ... and our loop, not Redis, is stuck
        return await task

    async def ping(self) -> None:
        await self._stalled(self._inner.ping())

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        result: Session | None = await self._stalled(self._inner.session(token_hash, now=now))
        return result

    async def put_session(self, value: Session) -> None:
        await self._stalled(self._inner.put_session(value))


async def stalled_run(store: GuardedStore, calls: int) -> list[StateTransition]:
    """``calls`` or more calls through ``store``: the breaker's transitions meanwhile."""
    transitions = Transitions(store)
    load = Load(store)
    async with asyncio.timeout(HANG_GUARD):
        while len(load.calls) < calls:
            await load._call()
    assert not load.unexpected, load.unexpected[:3]
    return transitions.events


async def test_our_own_stalled_loop_does_not_open_the_breaker(redis_store: RedisStore) -> None:
    # 120 ms: a slow call on the wall clock (over 100 ms), often cut off by the 150 ms limit
    stalling = StallingCaller(redis_store, 0.12)
    # the control: timed on the wall clock, the breaker opens on a healthy Redis
    config = BreakerConfig(record_exception=is_outage)
    wall_timed = GuardedStore(stalling, CircuitBreaker("redis", config))
    assert BreakerState.OPEN in {e.to_state for e in await stalled_run(wall_timed, 12)}
    # the store's breaker times calls on the lag clock: our own stalls are not Redis's
    lag_timed = await guarded(stalling)  # type: ignore[arg-type]
    assert await stalled_run(lag_timed, 30) == []
    m = lag_timed.breaker.metrics
    assert m.successful > 0
    assert (m.slow_successful, m.failed) == (0, 0)
