"""The Redis store's client: one pool per store, to one server or to the master Sentinel names.

Both pools say whether a failure came before any command reached the server (``NotSent``), and
can hold a write's connection until ``WAIT`` confirms that replicas have the write.

Why ``WAIT``: Redis replicates asynchronously, so a write the primary acknowledged can vanish when
Sentinel promotes a replica that had not received it yet. With ``wait_replicas`` = n, a write is
acknowledged only once n replicas have it; if they do not confirm within ``wait_timeout_s`` the
write fails as "may have been applied" (it is on the primary, maybe not on a replica). Redis's
own caveat stands: WAIT makes a loss on failover unlikely (Sentinel promotes the replica with the
most data), not impossible. Run at least n + 1 replicas so that a promoted replica still has n.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from keyserver.errors import KeyserverError

# An idle pooled connection is PINGed before use, so a dead one fails before a command is sent.
HEALTH_CHECK_INTERVAL = 30

# Set while a store write runs: the pool then WAITs on the write's connection before taking it
# back. The write's own task sets it; a shielded release runs in a copy of that context.
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_writing", default=False)


class NotSent(KeyserverError, ConnectionError):
    """A failure before any command of the call reached the server's socket."""


class NotReplicated(KeyserverError, RedisError):
    """The primary applied a write but too few replicas confirmed it in time."""


@contextmanager
def writing() -> Iterator[None]:
    """Mark the calls inside as a write, for ``WAIT``."""
    token = _writing.set(True)
    try:
        yield
    finally:
        _writing.reset(token)


class _CheckedPool:
    """The pool behaviour both clients share; mixed in before a redis-py pool class."""

    wait_replicas = 0
    wait_timeout_ms = 100

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        # Failures while getting a ready connection (waiting, connecting, Sentinel's answer,
        # handshake, health check) are NotSent: only after this can a write reach the server.
        acquire: Callable[[], Awaitable[AbstractConnection]] = super().get_connection  # type: ignore[misc]
        try:
            connection = await acquire()
        except RedisError as exc:
            raise NotSent(type(exc).__name__) from exc
        check_health: Callable[[], Awaitable[None]] = connection.check_health
        try:
            await check_health()
        except BaseException as exc:
            await self.release(connection)
            if isinstance(exc, RedisError):
                raise NotSent(type(exc).__name__) from exc
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        give_back: Callable[[AbstractConnection], Awaitable[None]] = super().release  # type: ignore[misc]
        if not (self.wait_replicas and _writing.get() and connection.is_connected):
            await give_back(connection)
            return
        try:
            # on the write's own connection: WAIT covers the writes sent on it
            await connection.send_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            acked = int(await connection.read_response())
        except BaseException:
            await connection.disconnect()  # an unread WAIT reply must not reach the next user
            await give_back(connection)
            raise
        await give_back(connection)
        if acked < self.wait_replicas:
            raise NotReplicated(f"{acked} of {self.wait_replicas} replicas confirmed the write")


class _Pool(_CheckedPool, BlockingConnectionPool):
    pass


class _SentinelPool(_CheckedPool, SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master pool (it asks the Sentinels for the master's address whenever it opens
    a connection, and drops connections to a former master), but blocking when all are in use."""


def _no_retry() -> Retry:
    # redis-py's defaults retry with backoff (about 55 s against a black hole); the guarded
    # store's breaker and single retry layer decide instead
    return Retry(NoBackoff(), 0)


def direct_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    max_connections: int,
    wait_replicas: int = 0,
    wait_timeout_s: float = 0.1,
) -> Redis:
    pool = _Pool.from_url(
        url,
        max_connections=max_connections,
        timeout=connect_timeout,  # the longest wait for a free pooled connection
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=_no_retry(),
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )
    pool.wait_replicas, pool.wait_timeout_ms = wait_replicas, round(wait_timeout_s * 1000)
    return Redis(connection_pool=pool)


def sentinel_client(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    max_connections: int,
    wait_replicas: int = 0,
    wait_timeout_s: float = 0.1,
) -> tuple[Redis, Sentinel]:
    """One client for ``service_name``'s master and the Sentinel handle (close both).

    The pool asks the Sentinels for the master's address each time it opens a connection, and a
    connection error closes the connection: so after a failover the next connection goes to
    the promoted replica. While the Sentinels report the master down, opening fails at once
    with MasterNotFoundError (a NotSent) instead of waiting on a dead address.
    """
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(sentinels), sentinel_kwargs={**timeouts, "retry": _no_retry()}
    )
    client: Redis = sentinel.master_for(
        service_name,
        connection_pool_class=_SentinelPool,
        max_connections=max_connections,
        timeout=connect_timeout,  # the longest wait for a free pooled connection
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=_no_retry(),
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )
    pool = client.connection_pool
    assert isinstance(pool, _SentinelPool)
    pool.wait_replicas, pool.wait_timeout_ms = wait_replicas, round(wait_timeout_s * 1000)
    return client, sentinel
