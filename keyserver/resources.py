"""The keyserver's resources and services, built in one place (the aiohttp-demos shape).

``resources_context`` is the app's one ``cleanup_ctx``: it opens the store and wraps it
(``assemble_store``), opens the issuer key ring and the outage journal, builds the services, starts
the journal's replay and, on Redis, the hub bridge; at shutdown it undoes them in reverse order.
Each resource is published under a typed ``web.AppKey``; the services together under
``SERVICES``, which is all a handler reads. A service receives what it uses and nothing else:

    Issuer         store, key ring, metrics, settings     signs tokens and revocation lists
    Holders        store, hub, clock                      creates and withdraws keys
    Acceptor       store, Holders, clock                  accepts invitations (route and replay)
    OutageJournal  journal, last-known store, hub, ring   journals writes during an outage
    Replayer       store, hub, journal, Holders, Acceptor applies the journal once the store is back

Route modules import this module; it imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from keyserver import admission
from keyserver.acceptance import Acceptor
from keyserver.auth import DeviceKeys
from keyserver.clock import CLOCK, Clock
from keyserver.config import Config, sentinel_addresses
from keyserver.errors import StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.hub_bridge import HUB_BRIDGE, HUB_POLICY, HUB_PRESENCE_POLICY, running_bridge
from keyserver.issuance import Holders, Issuer
from keyserver.journal import Journal
from keyserver.keyring_reload import ServedKeyRing
from keyserver.lastknown import LastKnown, LastKnownStore
from keyserver.observability import MeasuredStore, Metrics
from keyserver.outage import OutageJournal
from keyserver.replay import Replayer, announce
from keyserver.store import Store
from keyserver.store.guarded import GuardedHub, GuardedStore, store_breaker
from resilience.breaker_metrics import BreakerCollector

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)  # assembled: last known ∘ metrics ∘ guard ∘ backend
KEYRING = web.AppKey("keyring", ServedKeyRing)
INJECTED_STORE = web.AppKey("injected_store", Store)
OPENAPI = web.AppKey("openapi", dict[str, Any])
DEVICE_KEYS = web.AppKey("device_keys", DeviceKeys)
HUB = web.AppKey("hub", ChannelHub)
STORE_GUARD = web.AppKey("store_guard", GuardedStore)  # set when the store is Redis
LAST_KNOWN = web.AppKey("last_known", LastKnownStore)
JOURNAL = web.AppKey("journal", Journal)
REPLAYER = web.AppKey("replayer", Replayer)
ANNOUNCE_DEADLINE_S = 1.0


@dataclass(frozen=True)
class Services:
    """What a handler uses: the services, and the few resources routes read directly."""

    config: Config
    clock: Clock
    metrics: Metrics
    store: Store
    keyring: ServedKeyRing
    hub: ChannelHub
    device_keys: DeviceKeys
    last_known: LastKnownStore
    issuer: Issuer
    holders: Holders
    acceptor: Acceptor
    outage: OutageJournal
    replayer: Replayer


SERVICES = web.AppKey("services", Services)


@dataclass(frozen=True)
class AssembledStore:
    """The store as the app uses it, and the wrappers other parts hold on to."""

    store: Store  # the outermost wrapper: what every service receives
    guard: GuardedStore | None  # the breaker and retry layer (Redis only)
    hub: GuardedHub | None  # the hub's Redis operations behind the same guard: the bridge's
    last_known: LastKnownStore  # the degraded refresh and the outage journal read its cache


def assemble_store(
    backend: Store, config: Config, metrics: Metrics, clock: Clock
) -> AssembledStore:
    """Wrap ``backend`` for the app, innermost first; each wrapper is a ``ForwardingStore``
    (keyserver.store.forwarding) that hands every operation to the one inside it.

    1. the guard (Redis only): its circuit breaker and the one retry layer; SQLite is local and
       stays as it is (keyserver.store.guarded says why); the hub's operations get the same guard;
    2. the metrics, outside the guard, so they see every call as the app does, retries included;
    3. last known data, outermost, so it sees what the breaker and the retries finally made of a
       call and answers reads from its cache while the store is down (keyserver.lastknown).
    """
    from keyserver.store.redis import RedisStore

    guard = hub = None
    if isinstance(backend, RedisStore):
        name = "redis-primary" if config.redis_sentinels else "redis"
        guard = GuardedStore(backend, store_breaker(name), deadline=admission.current_deadline.get)
        hub = GuardedHub(backend.hub, guard)
        metrics.registry.register(BreakerCollector([guard.breaker]))
    measured = MeasuredStore(guard or backend, metrics)
    cache = LastKnown(capacity=config.last_known_entries, max_age_s=config.last_known_max_age_s)
    last_known = LastKnownStore(measured, cache, clock=clock)
    return AssembledStore(last_known, guard, hub, last_known)


async def open_store(config: Config) -> Store:
    """The configured backend: Redis (a URL or Sentinels), else the embedded SQLite store."""
    if config.redis_url is not None:
        from keyserver.store.redis import RedisStore

        return await RedisStore.connect(
            config.redis_url,
            prefix=config.redis_prefix,
            socket_timeout=config.redis_timeout_s,
            connect_timeout=config.redis_timeout_s,
            wait_replicas=config.redis_wait_replicas,
        )
    if config.redis_sentinels:
        from keyserver.store.redis import RedisStore

        return await RedisStore.connect_sentinel(
            sentinel_addresses(config.redis_sentinels),
            config.redis_service,
            prefix=config.redis_prefix,
            socket_timeout=config.redis_timeout_s,
            connect_timeout=config.redis_timeout_s,
            wait_replicas=config.redis_wait_replicas,
        )
    from keyserver.store.sqlite import SQLiteStore

    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return await SQLiteStore.open(config.sqlite_path)


async def resources_context(app: web.Application) -> AsyncIterator[None]:
    """Every resource and service of the app, in order; torn down in reverse (module doc)."""
    config, metrics, clock, hub = app[CONFIG], app[METRICS], app[CLOCK], app[HUB]
    async with contextlib.AsyncExitStack() as stack:
        if INJECTED_STORE in app:  # the caller's: the caller closes it
            backend = app[INJECTED_STORE]
        else:
            backend = await open_store(config)
            stack.push_async_callback(backend.close)
        assembled = assemble_store(backend, config, metrics, clock)
        store = assembled.store
        app[STORE], app[LAST_KNOWN] = store, assembled.last_known
        if assembled.guard is not None:
            app[STORE_GUARD] = assembled.guard

        keyring = app[KEYRING] = ServedKeyRing.start(config, metrics.registry)
        stack.push_async_callback(_cancelled, asyncio.create_task(keyring.watch(config.key_poll_s)))

        journal = app[JOURNAL] = Journal.open(config.journal_path)
        stack.callback(journal.close)
        issuer = Issuer(store, keyring, metrics, config)
        holders = Holders(store, hub, clock)
        acceptor = Acceptor(store, holders, clock)
        replayer = app[REPLAYER] = Replayer(store, hub, journal, holders, acceptor, clock)
        app[SERVICES] = Services(
            config=config,
            clock=clock,
            metrics=metrics,
            store=store,
            keyring=keyring,
            hub=hub,
            device_keys=app[DEVICE_KEYS],
            last_known=assembled.last_known,
            issuer=issuer,
            holders=holders,
            acceptor=acceptor,
            outage=OutageJournal(journal, assembled.last_known, hub, keyring),
            replayer=replayer,
        )
        replayer.start()
        # Runs once in-flight requests are done (a write journaled in the shutdown grace is
        # drained too) and after the hub bridge has closed, hence the announcement by hand.
        stack.push_async_callback(_drain, replayer, assembled.hub, config.journal_drain_s)

        if assembled.hub is not None:  # the hub across instances (Redis only)
            app[HUB_BRIDGE] = await stack.enter_async_context(
                running_bridge(
                    hub,
                    store,
                    assembled.hub,
                    metrics,
                    policy=app.get(HUB_POLICY),
                    presence_policy=app.get(HUB_PRESENCE_POLICY),
                )
            )
        yield


async def _drain(replayer: Replayer, hub: GuardedHub | None, deadline_s: float) -> None:
    await replayer.drain(deadline_s=deadline_s)
    if hub is not None and replayer.unannounced:
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(ANNOUNCE_DEADLINE_S):
                await announce(replayer.unannounced, channel=hub.channel, publish=hub.publish)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
