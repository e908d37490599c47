"""The keyserver's aiohttp application: ``create_app(config)``, its resources and its routes.

Resources are ``cleanup_ctx`` generators (the store, the issuer key ring), reached through typed
``web.AppKey``s. The zero-configuration default is one node on the embedded SQLite store with a key
ring created on first start; a configured ``key_dir`` must hold one (``keyserver keys``), and a
rotation published there is served without a restart (``keyserver.keyring_reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keycore.channel import CLOSE_GOING_AWAY
from keyserver import admission, openapi, ratelimit
from keyserver.auth import DeviceKeys
from keyserver.config import Config
from keyserver.degraded import STORE_UNAVAILABLE, degraded_json
from keyserver.errors import StoreUnavailable
from keyserver.http import ApiError, error_middleware
from keyserver.hub import ChannelHub
from keyserver.keyring_reload import ServedKeyRing
from keyserver.observability import MeasuredStore, Metrics
from keyserver.store import Store
from keyserver.store.guarded import GuardedStore, store_breaker
from resilience.breaker_metrics import BreakerCollector

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
KEYRING = web.AppKey("keyring", ServedKeyRing)
INJECTED_STORE = web.AppKey("injected_store", Store)
OPENAPI = web.AppKey("openapi", dict[str, Any])
DEVICE_KEYS = web.AppKey("device_keys", DeviceKeys)
HUB = web.AppKey("hub", ChannelHub)
STORE_GUARD = web.AppKey("store_guard", GuardedStore)  # set when the store is Redis

CBOR = "application/cbor"


def create_app(config: Config, *, store: Store | None = None) -> web.Application:
    """The app for ``config``. Pass ``store`` to use one the caller owns (tests)."""
    metrics = Metrics.create()
    app = web.Application(
        middlewares=[metrics.middleware(), error_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[DEVICE_KEYS] = DeviceKeys()
    app[HUB] = ChannelHub()
    if store is not None:
        app[INJECTED_STORE] = store
    app.cleanup_ctx.append(_store_context)
    app.cleanup_ctx.append(_keyring_context)
    from keyserver.hub_bridge import bridge_context  # these use this module's AppKeys
    from keyserver.outage import outage_context

    app.cleanup_ctx.append(outage_context)  # wraps the store: keep it after _store_context
    app.cleanup_ctx.append(bridge_context)  # the hub across instances (Redis only)
    app.on_shutdown.append(_close_channels)
    setup_routes(app)
    ratelimit.setup(app, config, metrics.registry, app[OPENAPI], store=lambda: app[STORE])
    admission.setup(app, config, metrics.registry, app[OPENAPI])  # innermost: inside the errors
    return app


async def open_store(config: Config) -> Store:
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
        from keyserver.config import sentinel_addresses
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


async def _store_context(app: web.Application) -> AsyncIterator[None]:
    if INJECTED_STORE in app:
        app[STORE] = _measured(app, app[INJECTED_STORE])
        yield
        return
    store = await open_store(app[CONFIG])
    app[STORE] = _measured(app, store)
    try:
        yield
    finally:
        await store.close()


async def _keyring_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    served = ServedKeyRing.start(config, app[METRICS].registry)
    app[KEYRING] = served
    watching = asyncio.create_task(served.watch(config.key_poll_s))
    try:
        yield
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def _close_channels(app: web.Application) -> None:
    """Cars are told the server is going away (1001), so they reconnect elsewhere with jitter;
    otherwise their open connections would hold the shutdown for its whole grace period."""
    await app[HUB].close_all(CLOSE_GOING_AWAY, b"server shutting down")


def _measured(app: web.Application, store: Store) -> Store:
    return cast(Store, MeasuredStore(_guarded(app, store), app[METRICS]))


def _guarded(app: web.Application, store: Store) -> Store:
    """Redis behind its circuit breaker and the one retry layer (inside the metrics, so they see
    every call); SQLite as it is (``keyserver.store.guarded`` says why)."""
    from keyserver.store.redis import RedisStore

    if not isinstance(store, RedisStore):
        return store
    name = "redis-primary" if app[CONFIG].redis_sentinels else "redis"
    guarded = GuardedStore(store, store_breaker(name), deadline=admission.current_deadline.get)
    app[STORE_GUARD] = guarded
    app[METRICS].registry.register(BreakerCollector([guarded.breaker]))
    return cast(Store, guarded)


def setup_routes(app: web.Application) -> None:
    # imported here: route modules use this module's AppKeys, so a top-level import is circular
    from keyserver.routes import audit, channel, commands, identity, keys, vehicles

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_endpoint)
    app.router.add_get("/v1/trust-update", trust_update)
    identity.setup(app)
    vehicles.setup(app)
    keys.setup(app)
    commands.setup(app)
    channel.setup(app)
    audit.setup(app)
    app[OPENAPI] = openapi.document(
        [
            PATHS,
            identity.PATHS,
            vehicles.PATHS,
            keys.PATHS,
            commands.PATHS,
            channel.PATHS,
            audit.PATHS,
        ],
        [
            SCHEMAS,
            identity.SCHEMAS,
            vehicles.SCHEMAS,
            keys.SCHEMAS,
            commands.SCHEMAS,
            audit.SCHEMAS,
        ],
        version=version("phonekey"),
    )


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 whenever this instance can answer, with the store's state in the body.

    With the store down an instance still gives useful, degraded answers (G2); a shared store's
    outage must not take every instance out of rotation at once and turn those answers into
    the load balancer's 503s. The store's health is for metrics and alerts (breaker state).
    """
    try:
        await request.app[STORE].ping()
    except StoreUnavailable:
        return degraded_json(
            {"status": "ready", "store": "unavailable"},
            reason=STORE_UNAVAILABLE,
            detail="the state store is unavailable: answers are degraded",
        )
    return web.json_response({"status": "ready", "store": "ok"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def trust_update(request: web.Request) -> web.Response:
    """The latest root-signed trust-store update (CBOR, COSE_Sign1): cars and phones apply it."""
    ring = request.app[KEYRING]
    if not ring.trust_update:
        raise ApiError(404, "not_found", "no trust-store update yet")
    return web.Response(
        body=ring.trust_update,
        content_type=CBOR,
        headers={"PK-Trust-Sequence": str(ring.trust_sequence)},
    )


SCHEMAS: dict[str, Any] = {
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "store"],
        "properties": {
            "status": {"enum": ["ready"]},
            "store": {"enum": ["ok", "unavailable"]},
        },
    },
}

PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "responses": {"200": openapi.json_response("alive", "Health")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: 200 while the instance answers; says if the store is down",
            "responses": {"200": openapi.json_response("ready (maybe degraded)", "Readiness")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/v1/trust-update": {
        "get": {
            "summary": "The latest root-signed trust-store update (docs/protocol.md §11)",
            "responses": {
                "200": {
                    "description": "the update; its sequence in PK-Trust-Sequence",
                    "headers": {"PK-Trust-Sequence": {"schema": {"type": "string"}}},
                    "content": {CBOR: {"schema": {"type": "string", "format": "binary"}}},
                },
                "404": openapi.error("no update yet"),
            },
        }
    },
}
