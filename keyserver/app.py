"""The keyserver's aiohttp application: ``create_app(config)`` and its routes.

Resources and services are built in one place, ``keyserver.resources`` (one ``cleanup_ctx``);
handlers read them from ``request.app[SERVICES]``. The routes are the route modules' tables,
``ROUTES`` below in serving order (keyserver.routing): the router, admission control, the rate
limits and the OpenAPI document are made from them. The zero-configuration default is one node on
the embedded SQLite store with a key ring created on first start; a configured ``key_dir`` must
hold one (``keyserver keys``), and a rotation published there is served without a restart
(``keyserver.keyring_reload``).
"""

from __future__ import annotations

from importlib.metadata import version

from aiohttp import web

from keycore.channel import CLOSE_GOING_AWAY
from keyserver import admission, openapi, ratelimit, routing
from keyserver.auth import DeviceKeys
from keyserver.clock import CLOCK, Clock, process_clock
from keyserver.config import Config
from keyserver.http import error_middleware
from keyserver.hub import ChannelHub
from keyserver.observability import Metrics
from keyserver.resources import (
    CONFIG,
    DEVICE_KEYS,
    HUB,
    INJECTED_STORE,
    JOURNAL,
    KEYRING,
    LAST_KNOWN,
    METRICS,
    OPENAPI,
    REPLAYER,
    SERVICES,
    STORE,
    STORE_GUARD,
    open_store,
    resources_context,
)
from keyserver.routes import (
    audit,
    channel,
    commands,
    identity,
    keys,
    revocation,
    service,
    sharing,
    vehicles,
)
from keyserver.store import Store

#: Every route, in serving order; the refresh first among the keys: the busiest route.
ROUTES: tuple[routing.Route, ...] = routing.checked(
    (
        *service.ROUTES,
        *identity.ROUTES,
        *vehicles.ROUTES,
        *keys.ROUTES,
        *sharing.ROUTES,
        *revocation.ROUTES,
        *commands.ROUTES,
        *channel.ROUTES,
        *audit.ROUTES,
    )
)
#: The response bodies' component schemas, by route module.
SCHEMAS = (
    service.SCHEMAS,
    identity.SCHEMAS,
    vehicles.SCHEMAS,
    keys.SCHEMAS,
    commands.SCHEMAS,
    audit.SCHEMAS,
)

__all__ = [  # the resources' keys, for tests and tools that look inside a running app
    "CONFIG",
    "DEVICE_KEYS",
    "HUB",
    "JOURNAL",
    "KEYRING",
    "LAST_KNOWN",
    "METRICS",
    "OPENAPI",
    "REPLAYER",
    "ROUTES",
    "SERVICES",
    "STORE",
    "STORE_GUARD",
    "create_app",
    "open_store",
]


def create_app(
    config: Config, *, store: Store | None = None, clock: Clock = process_clock
) -> web.Application:
    """The app for ``config``. Pass ``store`` to use one the caller owns (tests)."""
    metrics = Metrics.create()
    app = web.Application(
        middlewares=[metrics.middleware(), error_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[DEVICE_KEYS] = DeviceKeys()
    app[HUB] = ChannelHub()
    if store is not None:
        app[INJECTED_STORE] = store
    app.cleanup_ctx.append(resources_context)
    app.on_shutdown.append(_close_channels)
    channel.setup(app)
    routing.add_routes(app, ROUTES)
    app[OPENAPI] = openapi.document(ROUTES, SCHEMAS, version=version("phonekey"), config=config)
    limits = routing.rate_limits(ROUTES)
    ratelimit.setup(app, config, metrics.registry, limits, store=lambda: app[STORE])
    # innermost: inside the errors
    admission.setup(app, config, metrics.registry, routing.criticalities(ROUTES))
    return app


async def _close_channels(app: web.Application) -> None:
    """Cars are told the server is going away (1001), so they reconnect elsewhere with jitter;
    otherwise their open connections would hold the shutdown for its whole grace period."""
    await app[HUB].close_all(CLOSE_GOING_AWAY, b"server shutting down")
