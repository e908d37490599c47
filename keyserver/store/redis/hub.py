"""What the channel hub across instances (keyserver.hub_bridge) keeps in Redis: its notices
(pub/sub on ``P hub``) and where each connected car is (``P car:{vin}`` = the instance's id,
expiring unless refreshed). Neither is state the routes decide on: a lost notice or a stale
presence costs a car a delay or a phone a wrong hint, never a key or a command.

Every operation here may be repeated with the same effect, so a failure is a
``StoreUnavailable`` that may be retried (``may_have_succeeded`` False). ``RedisStore.hub``, on
the store's client; the app reaches it through the store's guard (``GuardedHub``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from keyserver.errors import StoreUnavailable
from keyserver.store.redis.records import text

# KEYS: the car's presence key; ARGV: the instance id. Deletes only the instance's own entry.
CLEAR_PRESENCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def _failures(operation: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        cause = type(exc).__name__
        # repeating any of these has the effect of doing it once: safe to try again
        raise StoreUnavailable(
            f"redis {operation} failed ({cause})", may_have_succeeded=False
        ) from exc


class RedisHub:
    """The hub's notices and the cars' presence, under the store's key prefix."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    @property
    def channel(self) -> str:
        """The pub/sub channel of the hub's notices."""
        return f"{self._prefix}hub"

    def pubsub(self) -> PubSub:
        """A subscriber on the store's pool: one connection, held while subscribed (with
        Sentinel, to the master)."""
        return self._client.pubsub()

    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to the subscribers of ``channel``; how many got it."""
        with _failures("publish"):
            return int(await self._client.publish(channel, message))

    async def mark_cars_online(self, vins: Iterable[str], instance: str, *, ttl_s: int) -> None:
        """The cars ``vins`` are connected to ``instance``, for ``ttl_s`` unless marked again."""
        pipe = self._client.pipeline(transaction=False)
        for vin in vins:
            pipe.set(f"{self._prefix}car:{vin}", instance, ex=ttl_s)
        with _failures("mark_cars_online"):
            await pipe.execute()

    async def mark_car_offline(self, vin: str, instance: str) -> None:
        """The car left ``instance`` (a newer connection elsewhere keeps its own entry)."""
        with _failures("mark_car_offline"):
            await self._client.eval(CLEAR_PRESENCE, 1, f"{self._prefix}car:{vin}", instance)

    async def car_instance(self, vin: str) -> str | None:
        """The id of the instance the car is connected to, if any is known."""
        with _failures("car_instance"):
            found = await self._client.get(f"{self._prefix}car:{vin}")
        return None if found is None else text(found)
