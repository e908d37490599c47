"""The channel hub across keyserver instances: Redis pub/sub between the hubs of every process.

With several instances on one Redis, a car holds its channel to one of them, while the revocation
or the command meant for it may be accepted by another. So each instance publishes a small notice
for every event its hub relays (keyserver.hub) on the store's hub channel (``<prefix>hub``), and
every instance subscribes and delivers the notices to the cars connected to it. A notice names
the vehicle and the event — ``{"from", "kind": "revoked", "vin", "seq"}`` or
``{"from", "kind": "command", "vin", "id"}`` — never a document or a secret: the instance that
holds the car reads what it needs from the store (the delta after what the car holds, the signed
command), exactly as for its own events.

- The local push is not delayed: the hub delivers to its own cars first, and publishing is a
  bounded queue drained by one background task (a full queue drops the notice and counts it).
- Each instance ignores its own notices (``from``); delivering one twice is harmless anyway (the
  car merges lists, and a connection never sends a command twice).
- One subscriber connection per process, on the store's pool (with Sentinel, on the master). It
  sends a PING whenever it has heard nothing for ``ping_interval_s`` and reconnects when nothing at
  all has come for ``dead_after_s`` (a hung Redis keeps the socket open), or the connection
  fails; reconnects wait with full jitter, ``uniform(0, min(max, first × 2^failures))``.
- Pub/sub is fire-and-forget: whatever is published while an instance is not subscribed (Redis
  restarted, killed the connection, or a Sentinel failover moved the master) never reaches it.
  So on every (re)subscription the instance resyncs each car connected to it: the revocation delta
  after what the car holds, and its pending commands, from the store.
- Where each car is connected (keyserver.hub_presence), so a command's answer says the car is
  unreachable only when no instance holds its channel.
- With the embedded SQLite store (one node) there is no bridge: nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from keycore.token import check_vin
from keyserver.clock import Clock, process_clock
from keyserver.errors import KeyserverError, StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.hub_presence import CarPresence, PresencePolicy
from keyserver.models import CommandStatus
from keyserver.observability import Metrics
from keyserver.store import Store
from keyserver.store.guarded import GuardedHub
from resilience.waiting import PredicateWaiters

log = logging.getLogger("keyserver.hub_bridge")
REVOKED, COMMAND = "revoked", "command"
MAX_NOTICE_BYTES = 512
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_PENDING = (CommandStatus.QUEUED, CommandStatus.DELIVERED)


@dataclass(frozen=True)
class BridgePolicy:
    ping_interval_s: float = 5.0  # idle this long: PING, to find out whether Redis still answers
    dead_after_s: float = 12.0  # nothing at all heard this long: the connection is dead
    first_wait_s: float = 0.1  # reconnect: uniform(0, min(max_wait_s, first_wait_s × 2^n))
    max_wait_s: float = 5.0
    stable_after_s: float = 30.0  # a subscription this old starts the waits over from n = 0
    queue_size: int = 1024  # notices waiting to be published, and deliveries waiting for a read

    def reconnect_wait(self, failures: int) -> float:
        window = min(self.first_wait_s * 2 ** min(failures, 32), self.max_wait_s)
        return random.uniform(0, window)  # noqa: S311 — jitter, not a secret


@dataclass(frozen=True)
class Notice:
    origin: str
    kind: str
    vin: str
    sequence: int = 0  # revoked: the ledger's sequence after the change (0: not known)
    command_id: str = ""  # command

    def encode(self) -> bytes:
        body: dict[str, Any] = {"from": self.origin, "kind": self.kind, "vin": self.vin}
        if self.kind == REVOKED:
            body["seq"] = self.sequence
        else:
            body["id"] = self.command_id
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: object) -> Notice | None:
        """The notice in a pub/sub message, or None if it is not a well-formed one."""
        if not isinstance(data, bytes) or len(data) > MAX_NOTICE_BYTES:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        origin, kind, vin = body.get("from"), body.get("kind"), body.get("vin")
        if not isinstance(origin, str) or not isinstance(vin, str) or not _is_vin(vin):
            return None
        if kind == REVOKED and set(body) == {"from", "kind", "vin", "seq"}:
            seq = body["seq"]
            if type(seq) is int and 0 <= seq < 2**63:
                return cls(origin, REVOKED, vin, sequence=seq)
        if kind == COMMAND and set(body) == {"from", "kind", "vin", "id"}:
            command_id = body["id"]
            if isinstance(command_id, str) and _ID.fullmatch(command_id):
                return cls(origin, COMMAND, vin, command_id=command_id)
        return None


def _is_vin(value: str) -> bool:
    try:
        check_vin(value)
    except ValueError:
        return False
    return True


class HubBridge:
    """This process's end of the bridge: the hub's relay, and the tasks that publish, subscribe
    and deliver. ``publish(channel, data)`` and ``pubsub()`` come from the Redis store."""

    def __init__(
        self,
        hub: ChannelHub,
        store: Store,
        metrics: Metrics,
        *,
        channel: str,
        publish: Callable[[str, bytes], Any],
        pubsub: Callable[[], Any],
        policy: BridgePolicy | None = None,
        presence: CarPresence | None = None,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Clock = process_clock,
    ) -> None:
        self.hub = hub
        self.wall_clock = wall_clock
        self.presence = presence
        self.store = store
        self.metrics = metrics
        self.channel = channel
        self.policy = policy or BridgePolicy()
        self.instance = instance or secrets.token_hex(8)
        self._publish = publish
        self._pubsub = pubsub
        self._clock = clock
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(self.policy.queue_size)
        # deliveries that read the store: (vin, command id), or None for "resync every car"
        self._deliveries: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(
            self.policy.queue_size
        )
        self._waiters = PredicateWaiters()
        self._confirmed_at: float | None = None  # when the current subscription was confirmed
        self.subscribed = False
        self.subscriptions = 0  # confirmed (re)subscriptions, for tests and drills to wait on
        self.resyncs = 0
        self.received = 0  # notices from other instances

    # the hub's relay: never blocks

    def revoked(self, vin: str, sequence: int) -> None:
        self._send(Notice(self.instance, REVOKED, vin, sequence=sequence))

    def command(self, vin: str, command_id: str) -> None:
        self._send(Notice(self.instance, COMMAND, vin, command_id=command_id))

    def attached(self, vin: str) -> None:
        if self.presence is not None:
            self.presence.attached(vin)

    def detached(self, vin: str) -> None:
        if self.presence is not None:
            self.presence.detached(vin)

    async def elsewhere(self, vin: str) -> bool:
        return self.presence is not None and await self.presence.elsewhere(vin)

    def _send(self, notice: Notice) -> None:
        try:
            self._outbox.put_nowait(notice.encode())
        except asyncio.QueueFull:
            self._count("out", "dropped")

    # the tasks

    async def publish_forever(self) -> None:
        while True:
            data = await self._outbox.get()
            try:
                await self._publish(self.channel, data)
            except StoreUnavailable:  # those subscribed missed it too, and resync when back
                self._count("out", "failed")
            except Exception:  # a bug must not end the task
                log.exception("hub publish failed")
                self._count("out", "failed")
            else:
                self._count("out", "published")

    async def subscribe_forever(self) -> None:
        failures = 0  # attempts since the last stable subscription: the waits grow with it
        while True:
            try:
                await self._subscribe_once()
            except (RedisError, OSError, TimeoutError, ConnectionLost) as error:
                fields = {"error": type(error).__name__, "attempt": failures}
                if self.subscribed:  # once per outage; the attempts after it are quiet
                    log.warning("hub subscription lost", extra={"fields": fields})
                else:
                    log.debug("hub subscription failed", extra={"fields": fields})
            except Exception:  # a bug must not end the task: subscribe again
                log.exception("hub subscriber failed")
            finally:
                self._set_subscribed(False)
            confirmed = self._confirmed_at
            if confirmed is not None and self._clock() - confirmed >= self.policy.stable_after_s:
                failures = 0
            await asyncio.sleep(self.policy.reconnect_wait(failures))
            failures += 1

    async def deliver_forever(self) -> None:
        while True:
            item = await self._deliveries.get()
            try:
                if item is None:
                    await self._resync()
                else:
                    await self._deliver_command(*item)
            except StoreUnavailable:  # the car gets it when it reconnects, or at the next resync
                self._count("in", "unavailable")
            except Exception:  # a bug must not end the task
                log.exception("hub delivery failed")

    # subscribing

    async def _subscribe_once(self) -> None:
        self._confirmed_at = None
        pubsub = self._pubsub()
        try:
            await pubsub.subscribe(self.channel)
            heard = self._clock()
            while True:
                message = await pubsub.get_message(timeout=self.policy.ping_interval_s)
                now = self._clock()
                if message is not None:
                    heard = now
                    self._on_message(message)
                elif now - heard > self.policy.dead_after_s:
                    raise ConnectionLost("no answer from Redis")
                else:
                    await pubsub.ping()  # its pong is heard like any message
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            self._confirmed_at = self._clock()
            self._set_subscribed(True)
            self.subscriptions += 1
            self._queue_delivery(None)  # whatever was published while not subscribed
            self._notify()
        elif kind == "message":
            self._on_notice(Notice.decode(message.get("data")))

    def _on_notice(self, notice: Notice | None) -> None:
        if notice is None:
            self._count("in", "malformed")
            return
        if notice.origin == self.instance:
            return  # delivered here already, before it was published
        self.received += 1
        if not self.hub.connected(notice.vin):
            self._count("in", "not_here")
        elif notice.kind == REVOKED:
            pushed = self.hub.deliver_revoked(notice.vin, notice.sequence)
            self._count("in", "delivered" if pushed else "held")
        else:
            self._queue_delivery((notice.vin, notice.command_id))
        self._notify()

    def _queue_delivery(self, item: tuple[str, str] | None) -> None:
        try:
            self._deliveries.put_nowait(item)
        except asyncio.QueueFull:
            self._count("in", "dropped")

    # delivering what needs the store

    async def _deliver_command(self, vin: str, command_id: str) -> None:
        command = await self.store.command(command_id)
        if (
            command is None
            or command.vin != vin
            or command.status not in _PENDING
            or command.expires_at <= self.wall_clock()
        ):
            self._count("in", "stale")
            return
        sent = self.hub.deliver_command(vin, command_id, command.document)
        self._count("in", "delivered" if sent else "not_here")
        self._notify()

    async def _resync(self) -> None:
        """Every car connected here gets what it may have missed: the revocation delta after
        what it holds, and its pending commands (each connection sends a command once)."""
        for vin in self.hub.vins():
            self.hub.deliver_revoked(vin)
            for command in await self.store.pending_commands(vin, now=self.wall_clock()):
                self.hub.deliver_command(vin, command.command_id, command.document)
        self.resyncs += 1
        self._notify()

    # state, for metrics and for tests to wait on

    def _set_subscribed(self, subscribed: bool) -> None:
        self.subscribed = subscribed
        self.metrics.hub_subscribed.set(1 if subscribed else 0)
        self._notify()

    def _count(self, direction: str, outcome: str) -> None:
        self.metrics.hub_notices.labels(direction, outcome).inc()
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; checked after every change here."""
        await self._waiters.wait_for(predicate)

    def _notify(self) -> None:
        self._waiters.notify()


class ConnectionLost(KeyserverError):
    """The subscriber heard nothing from Redis for too long."""


HUB_BRIDGE = web.AppKey("hub_bridge", HubBridge)
# set before start-up to change the defaults (tests)
HUB_POLICY = web.AppKey("hub_policy", BridgePolicy)
HUB_PRESENCE_POLICY = web.AppKey("hub_presence_policy", PresencePolicy)


@asynccontextmanager
async def running_bridge(
    hub: ChannelHub,
    store: Store,
    guarded: GuardedHub,
    metrics: Metrics,
    *,
    policy: BridgePolicy | None = None,
    presence_policy: PresencePolicy | None = None,
) -> AsyncIterator[HubBridge]:
    """The bridge and its tasks, for the hub of a process on the Redis store (``guarded``: its
    hub operations behind the store's breaker and retries)."""
    instance = secrets.token_hex(8)
    presence = CarPresence(  # every store call here is behind the store's breaker and retries
        instance,
        mark_online=guarded.mark_cars_online,
        mark_offline=guarded.mark_car_offline,
        lookup=guarded.car_instance,
        local=hub.vins,
        policy=presence_policy,
    )
    bridge = HubBridge(
        hub,
        store,
        metrics,
        channel=guarded.channel,
        publish=guarded.publish,
        pubsub=guarded.pubsub,
        policy=policy,
        presence=presence,
        instance=instance,
    )
    hub.relay = bridge
    tasks = [
        asyncio.create_task(bridge.publish_forever(), name="hub-publish"),
        asyncio.create_task(bridge.subscribe_forever(), name="hub-subscribe"),
        asyncio.create_task(bridge.deliver_forever(), name="hub-deliver"),
        asyncio.create_task(presence.run(), name="hub-presence"),
    ]
    try:
        yield bridge
    finally:
        hub.relay = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # the cars closed at shutdown: their entries go now rather than at their expiry
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(1.0):
                await presence.write()
