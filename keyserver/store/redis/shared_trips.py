"""Round trips shared by concurrent calls of one Redis script written for batches.

The Redis store's hot path (``refresh_context``) goes through it: redis-py's own cost per command
outweighs what the script does, so calls that wait together go as one script call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, KeyT


class SharedTrips:
    """Calls of a script written for batches (a fixed number of keys and arguments per call, one
    answer per call, in order) that share round trips: a call that comes while ``lanes`` calls of
    the script are under way waits, and goes with all the others then waiting in the next one.
    The script does their work one after the other, atomically as one script; a lone call still
    goes at once. Under load this divides redis-py's cost per command, most of a round trip's
    cost here, by the number of calls that share it. A failed script call fails each call in it.
    """

    def __init__(
        self, client: Redis, script: str, *, keys: int, args: int, lanes: int = 2, batch: int = 64
    ) -> None:
        self._script = client.register_script(script)
        self._shape = (keys, args)
        self._lanes_free = lanes
        self._batch = batch
        self._waiting: list[_Call] = []
        self._trips: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        assert (len(keys), len(args)) == self._shape
        call = _Call(keys, args, asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        if self._lanes_free > 0:
            self._lanes_free -= 1
            trip = asyncio.create_task(self._drain())
            self._trips.add(trip)
            trip.add_done_callback(self._trips.discard)
        return await call.answer

    async def _drain(self) -> None:
        try:
            while self._waiting:
                calls = self._waiting[: self._batch]
                del self._waiting[: self._batch]
                await self._send(calls)
        finally:
            self._lanes_free += 1

    async def _send(self, calls: list[_Call]) -> None:
        try:
            answers = await self._script(
                [key for call in calls for key in call.keys],
                [arg for call in calls for arg in call.args],
            )
        except BaseException as error:
            for call in calls:
                if not call.answer.done():
                    if isinstance(error, Exception):
                        call.answer.set_exception(error)
                    else:
                        call.answer.cancel()
            if not isinstance(error, Exception):
                raise
            return
        for call, answer in zip(calls, answers, strict=True):
            if not call.answer.done():
                call.answer.set_result(answer)


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    keys: Sequence[KeyT]
    args: Sequence[EncodableT]
    answer: asyncio.Future[Any]
