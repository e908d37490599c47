"""The channel hub across instances (keyserver.hub_bridge): two keyserver apps on one real
redis-server, a car's CloudLink connected to instance B, and the owner's phone talking to
instance A. A revocation or a command accepted by A reaches the car on B with no sync (the car
never reconnects); after Redis kills the subscriber connection, or hangs, the instances
subscribe again, resync their cars, and later events still cross. Waiting is on events; the
timeouts only guard against hangs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from keycore import Action, Reason
from keycore.cose import holder_id
from keyserver.app import HUB, create_app
from keyserver.config import build
from keyserver.degraded import DEGRADED_HEADER
from keyserver.errors import StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.hub_bridge import (
    COMMAND,
    HUB_BRIDGE,
    HUB_POLICY,
    HUB_PRESENCE_POLICY,
    MAX_NOTICE_BYTES,
    REVOKED,
    BridgePolicy,
    HubBridge,
    Notice,
)
from keyserver.hub_presence import CarPresence, PresencePolicy
from keyserver.issuance import MAX_TOKEN_LIFETIME
from keyserver.keyring import KeyRingStore
from keyserver.models import RevocationEntry, RevocationKind
from keyserver.observability import Metrics
from lab.processes.redis_ha import SentinelGroup, start_sentinel_group
from lab.processes.redis_server import RedisServer
from tests.keyserver.keys_harness import DAY, REVOKE, VIN, Api, Clock, Person
from tests.vehicle_agent.channel_harness import (
    HANG_GUARD_S,
    Car,
    applied_results,
    command,
    command_state,
    frames_in,
    hub_until,
    register,
    start_car,
)

OTHER = "1HGCM82633A004352"
QUICK = BridgePolicy(ping_interval_s=0.1, dead_after_s=0.5, first_wait_s=0.02, max_wait_s=0.2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running:
        yield running


@dataclass
class Cluster:
    a: Api
    b: Api
    owner: Person
    car: Car

    def bridge(self, api: Api) -> HubBridge:
        return api.app[HUB_BRIDGE]

    async def until(self, api: Api, predicate: Callable[[HubBridge], bool]) -> None:
        bridge = self.bridge(api)
        async with asyncio.timeout(HANG_GUARD_S):
            await bridge.wait_for(lambda: predicate(bridge))

    async def present(self, api: Api) -> None:
        """Until the instance has written where its cars are (arrivals and departures)."""
        presence = self.bridge(api).presence
        assert presence is not None
        async with asyncio.timeout(HANG_GUARD_S):
            await presence.wait_for(lambda: not presence.pending and presence.rounds > 0)

    async def subscribed(self, times: int = 1) -> None:
        for api in (self.a, self.b):
            await self.until(api, lambda b: b.subscribed and b.subscriptions >= times)


async def instance(
    redis: dict[str, str], tmp_path: Path, name: str, aiohttp_client: Any, clock: Clock
) -> Api:
    keys = KeyRingStore(tmp_path / "keys")
    if not keys.exists():  # one issuer key ring for every instance
        keys.init(now=clock.now - 60, key_lifetime=365 * DAY, max_token_lifetime=30 * DAY)
    config = build(
        {
            "data_dir": str(tmp_path / name),
            "key_dir": str(keys.directory),
            **redis,
        }
    )
    app = create_app(config)
    app[HUB_POLICY] = QUICK
    app[HUB_PRESENCE_POLICY] = PresencePolicy(lookup_timeout_s=HANG_GUARD_S)  # never timed here
    return Api(app, await aiohttp_client(app), clock)


@asynccontextmanager
async def two_instances(
    redis: RedisServer | SentinelGroup, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> AsyncIterator[Cluster]:
    settings = {"redis_prefix": f"h{secrets.token_hex(4)}:"}
    if isinstance(redis, RedisServer):
        settings["redis_url"] = redis.url
    else:
        addresses = ",".join(f"{host}:{port}" for host, port in redis.sentinel_addresses)
        settings |= {
            "redis_sentinels": addresses,
            "redis_service": redis.service,
            "redis_wait_replicas": "1",  # as in production: no acknowledged write is lost
        }
    a = await instance(settings, tmp_path, "a", aiohttp_client, clock)
    b = await instance(settings, tmp_path, "b", aiohttp_client, clock)
    owner = await a.person("owner")
    vehicle_key = await register(a, owner)
    car = await start_car(b, tmp_path, vehicle_key)  # the car's channel is on instance B
    try:
        await hub_until(b, lambda: frames_in(b, "sync") >= 1)
        cluster = Cluster(a, b, owner, car)
        await cluster.subscribed()
        yield cluster
    finally:
        await car.link.stop()


async def test_a_revocation_accepted_by_one_instance_reaches_a_car_on_another(
    server: RedisServer, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    async with two_instances(server, tmp_path, aiohttp_client, clock) as cluster:
        a, b, car = cluster.a, cluster.b, cluster.car
        driver = await a.person("driver")
        key = await a.share(cluster.owner, driver)
        assert car.decide(driver.phone, key["token"]).allowed
        assert not a.app[HUB].connected(VIN)

        reply = await a.call(cluster.owner, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status == 200
        sequence = reply.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED
        assert car.link.stats.connects == 1  # pushed over the open channel: no reconnect, no sync
        assert frames_in(b, "sync") == 1
        assert cluster.bridge(b).received >= 1


async def test_a_command_queued_on_one_instance_runs_on_a_car_connected_to_another(
    server: RedisServer, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    async with two_instances(server, tmp_path, aiohttp_client, clock) as cluster:
        a, b, car = cluster.a, cluster.b, cluster.car
        await cluster.present(b)
        reply = await command(a, cluster.owner, "unlock", "cross-0001")
        assert reply.status == 202
        assert reply.body["hint"] is None  # A knows the car is connected, to B
        assert DEGRADED_HEADER not in reply.headers
        await hub_until(b, lambda: applied_results(b) >= 1)
        assert car.actuator.performed == [Action.UNLOCK]
        state = await command_state(a, cluster.owner, reply.body["command_id"])
        assert state["status"] == "executed"
        assert car.link.stats.connects == 1

        await car.link.stop()  # the car goes away: now A says so
        await hub_until(b, lambda: not b.app[HUB].connected(VIN))
        await cluster.present(b)
        away = await command(a, cluster.owner, "lock", "cross-0002")
        assert away.body["hint"]["code"] == "car_unreachable"
        assert away.headers[DEGRADED_HEADER] == "car_unreachable"


async def test_after_the_subscriber_connection_is_killed_events_still_cross(
    server: RedisServer, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    async with two_instances(server, tmp_path, aiohttp_client, clock) as cluster:
        a, b, car = cluster.a, cluster.b, cluster.car
        driver = await a.person("driver")
        key = await a.share(cluster.owner, driver)
        missed = await a.person("missed")
        missed_key = await a.share(cluster.owner, missed)
        # a revocation whose notice is lost (written while nobody listens): only a resync helps
        cutoff = clock.now + 1
        entry = RevocationEntry(
            RevocationKind.HOLDER, holder_id(missed.phone.xy), cutoff, cutoff + MAX_TOKEN_LIFETIME
        )
        lost = await a.store.append_revocations(VIN, [entry])
        resyncs = cluster.bridge(b).resyncs

        admin = Redis.from_url(server.url)
        try:
            killed = await admin.client_kill_filter(_type="pubsub")
        finally:
            await admin.aclose()
        assert killed == 2  # one subscriber connection per instance
        await cluster.subscribed(times=2)
        await cluster.until(b, lambda bridge: bridge.resyncs > resyncs)
        await car.until(lambda: car.vehicle.revocations.sequence >= lost)
        assert car.decide(missed.phone, missed_key["token"]).reason is Reason.REVOKED

        reply = await a.call(cluster.owner, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status == 200
        sequence = reply.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED
        assert car.link.stats.connects == 1


async def test_a_hung_redis_is_noticed_and_the_subscription_comes_back(
    server: RedisServer, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    async with two_instances(server, tmp_path, aiohttp_client, clock) as cluster:
        a, b, car = cluster.a, cluster.b, cluster.car
        driver = await a.person("driver")
        key = await a.share(cluster.owner, driver)
        server.pause()  # SIGSTOP: the socket stays open, nothing answers
        try:
            await cluster.until(b, lambda bridge: not bridge.subscribed)
        finally:
            server.resume()
        await cluster.subscribed(times=2)
        reply = await a.call(cluster.owner, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status == 200
        sequence = reply.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    # two replicas: the promoted one still has a replica to confirm writes (WAIT 1)
    with start_sentinel_group(tmp_path / "ha", replicas=2) as group:
        yield group


@pytest.mark.slow  # ~10 s of Sentinel set-up
async def test_after_a_sentinel_failover_the_instances_subscribe_on_the_new_master(
    sentinel_group: SentinelGroup, tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    group = sentinel_group
    async with two_instances(group, tmp_path, aiohttp_client, clock) as cluster:
        a, car = cluster.a, cluster.car
        driver = await a.person("driver")
        key = await a.share(cluster.owner, driver)
        held = car.vehicle.revocations.sequence
        old = group.primary.port
        group.primary.kill()
        await asyncio.to_thread(group.wait_for_master, other_than=old)
        await cluster.subscribed(times=2)  # on the promoted replica
        reply = await a.call(cluster.owner, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status in (200, 202), reply.data  # 202: journaled, replayed when it can
        await car.until(lambda: car.vehicle.revocations.sequence > held)
        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED
        assert car.link.stats.connects == 1


# the bridge's own logic, without Redis


@dataclass
class FakeCar:
    """A connected car as the hub sees it: records what it was pushed."""

    vin: str = VIN
    held: tuple[int, int] | None = (3, 3)
    revocation_pushes: int = 0

    def push_revocations(self) -> None:
        self.revocation_pushes += 1

    def push_command(self, command_id: str, document: bytes) -> None:
        raise AssertionError("not in these tests")

    def held_revocations(self) -> tuple[int, int] | None:
        return self.held

    def push_revocation_list(self, sequence: int, document: bytes) -> None:
        raise AssertionError("not in these tests")

    async def close(self, code: int, message: bytes) -> None:
        return None


def offline_bridge(policy: BridgePolicy | None = None) -> tuple[HubBridge, ChannelHub, FakeCar]:
    async def never(channel: str, data: bytes) -> int:
        raise AssertionError("nothing publishes in these tests")

    hub = ChannelHub()
    car = FakeCar()
    hub.attach(car)
    bridge = HubBridge(
        hub, None, Metrics.create(), channel="t:hub", publish=never, pubsub=object, policy=policy
    )  # type: ignore[arg-type]
    hub.relay = bridge
    return bridge, hub, car


def notice_counts(bridge: HubBridge, direction: str) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for family in bridge.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "keyserver_hub_notices_total" and sample.labels["direction"] == direction
    }


def message(data: bytes) -> dict[str, Any]:
    return {"type": "message", "channel": b"t:hub", "data": data}


@pytest.mark.parametrize(
    "notice",
    [
        Notice("a1b2", REVOKED, VIN, sequence=7),
        Notice("a1b2", REVOKED, VIN, sequence=0),
        Notice("a1b2", COMMAND, VIN, command_id="cmd_0123456789"),
    ],
)
def test_a_notice_reads_back_as_it_was_written(notice: Notice) -> None:
    assert Notice.decode(notice.encode()) == notice
    assert len(notice.encode()) <= MAX_NOTICE_BYTES


@pytest.mark.parametrize(
    "data",
    [
        "not bytes",
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"from":"x","kind":"revoked","vin":"' + VIN.encode() + b'"}',  # no seq
        b'{"from":"x","kind":"revoked","vin":"' + VIN.encode() + b'","seq":-1}',
        b'{"from":"x","kind":"revoked","vin":"' + VIN.encode() + b'","seq":true}',
        b'{"from":"x","kind":"revoked","vin":"' + VIN.encode() + b'","seq":1,"doc":"x"}',
        b'{"from":"x","kind":"revoked","vin":"not-a-vin","seq":1}',
        b'{"from":"x","kind":"command","vin":"' + VIN.encode() + b'","id":"short"}',
        b'{"from":1,"kind":"command","vin":"' + VIN.encode() + b'","id":"cmd_0123456789"}',
        b'{"from":"x","kind":"other","vin":"' + VIN.encode() + b'"}',
        b'{"from":"' + b"x" * MAX_NOTICE_BYTES + b'"}',
    ],
)
def test_a_malformed_notice_is_refused(data: Any) -> None:
    assert Notice.decode(data) is None


def test_own_notices_are_ignored_and_others_reach_the_car_unless_it_holds_them() -> None:
    bridge, hub, car = offline_bridge()
    hub.revoked(VIN, 4)  # the local push happens at once, without Redis
    assert car.revocation_pushes == 1
    bridge._on_message(message(Notice(bridge.instance, REVOKED, VIN, sequence=4).encode()))
    assert car.revocation_pushes == 1  # its own notice: delivered already
    bridge._on_message(message(Notice("other", REVOKED, VIN, sequence=3).encode()))
    assert car.revocation_pushes == 1  # the car holds 3 already
    bridge._on_message(message(Notice("other", REVOKED, VIN, sequence=5).encode()))
    assert car.revocation_pushes == 2
    bridge._on_message(message(Notice("other", REVOKED, OTHER, 9).encode()))
    bridge._on_message(message(b"garbage"))
    assert car.revocation_pushes == 2
    assert bridge.received == 3
    assert notice_counts(bridge, "in") == {
        "delivered": 1,
        "held": 1,
        "not_here": 1,
        "malformed": 1,
    }


def test_publishing_never_waits_a_full_queue_drops_and_counts() -> None:
    bridge, hub, car = offline_bridge(BridgePolicy(queue_size=1))
    hub.revoked(VIN, 1)
    hub.revoked(VIN, 2)  # nobody drains the queue here
    assert car.revocation_pushes == 2  # the local pushes happened regardless
    assert notice_counts(bridge, "out") == {"dropped": 1}


async def test_with_the_embedded_store_there_is_no_bridge(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))
    await aiohttp_client(app)
    assert HUB_BRIDGE not in app
    assert app[HUB].relay is None


async def test_car_presence_keeps_what_it_could_not_write_for_the_next_round() -> None:
    written: dict[str, str] = {}
    here: set[str] = set()
    down = True

    async def online(vins: list[str], instance: str, *, ttl_s: int) -> None:
        if down:
            raise StoreUnavailable("down", may_have_succeeded=False)
        written.update(dict.fromkeys(vins, instance))

    async def offline(vin: str, instance: str) -> None:
        if written.get(vin) == instance:
            del written[vin]

    async def lookup(vin: str) -> str | None:
        return written.get(vin)

    presence = CarPresence(
        "me", mark_online=online, mark_offline=offline, lookup=lookup, local=lambda: here
    )
    here.add(VIN)
    presence.attached(VIN)
    with pytest.raises(StoreUnavailable):
        await presence.write()
    assert presence.pending  # kept
    down = False
    await presence.write()
    assert written == {VIN: "me"}
    assert not presence.pending
    assert not await presence.elsewhere(VIN)  # here, not elsewhere
    written[OTHER] = "them"
    assert await presence.elsewhere(OTHER)

    presence.detached(VIN)  # and back before the round: the car stays marked
    presence.attached(VIN)
    await presence.write()
    assert written == {VIN: "me", OTHER: "them"}
    here.clear()
    presence.detached(VIN)
    await presence.write()
    assert written == {OTHER: "them"}
