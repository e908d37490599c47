"""The car's BLE endpoint: drives a CarSession over a Link for each phone that connects.

The endpoint owns the I/O and the timers (the opening challenge is re-sent every retry interval
until the phone speaks; an idle connection is closed) and hands every decision to the caller's
``on_event`` — where an actuator runs the granted actions and audit records the codes. Beyond
``max_connections`` at once, a phone is answered Busy and disconnected, so it can retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable

from ble_fallback.errors import LinkClosed, RemoteProtocolError
from ble_fallback.link import Link
from ble_fallback.protocol import CarEvent, CarSession, CarState, NeedData

#: What a busy car asks a phone to wait. An unlock holds a connection for about 0.1 s (two round
#: trips), so a place frees within a few of them; a whole second made a person whose friend
#: pressed at the same car wait over a second (seen in the drills as p99 outliers of 1.1 s).
BUSY_RETRY_AFTER_S = 0.25

log = logging.getLogger(__name__)


class CarEndpoint:
    """Serves phone connections for one car, against its in-memory ``CarState``."""

    def __init__(
        self,
        car: CarState,
        *,
        max_connections: int = 2,
        retry_after: float = BUSY_RETRY_AFTER_S,
        on_event: Callable[[CarEvent], None] | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if max_connections < 1 or retry_after < 0:
            raise ValueError("max_connections must be positive and retry_after >= 0")
        self.car = car
        self.max_connections = max_connections
        self.retry_after = retry_after
        self.active = 0
        self._on_event = on_event
        self._random_bytes = random_bytes

    async def serve(self, link: Link) -> None:
        """Serve one connection until the phone leaves, it idles out, or it breaks the protocol.

        Never raises for anything the phone or the radio does.
        """
        loop = asyncio.get_running_loop()
        policy = link.policy
        session = CarSession(
            self.car,
            allowed_latency=policy.allowed_latency,
            chunk_size=policy.chunk_size,
            gap_timeout=policy.gap_timeout,
            random_bytes=self._random_bytes,
        )
        if self.active >= self.max_connections:
            session.refuse(round(self.retry_after * 1000))
            log.info("event=ble_busy vin=%s active=%d", self.car.vin, self.active)
            with contextlib.suppress(LinkClosed):
                await _send_all(link, session.data_to_send())
            await link.close()
            return
        self.active += 1
        try:
            session.start(loop.time())
            await _send_all(link, session.data_to_send())
            await self._converse(link, session)
        except LinkClosed:
            pass
        except RemoteProtocolError as error:
            log.warning("event=ble_protocol_error vin=%s reason=%s", self.car.vin, error.reason)
        finally:
            self.active -= 1
            session.close()
            await link.close()

    async def _converse(self, link: Link, session: CarSession) -> None:
        """Answer the phone until it leaves. Until its first chunk, the challenge is re-sent
        every retry interval; after that, a connection silent for the idle timeout is closed."""
        loop = asyncio.get_running_loop()
        policy = link.policy
        for attempt in range(1, policy.max_attempts + 1):
            try:
                async with asyncio.timeout(policy.retry_interval) as timer:
                    while True:
                        session.receive_data(await link.receive(), loop.time())
                        timer.reschedule(loop.time() + policy.idle_timeout)
                        self._dispatch(session)
                        await _send_all(link, session.data_to_send())
            except TimeoutError:
                if not session.awaiting or attempt == policy.max_attempts:
                    break
                await _send_all(link, session.retransmit())
        log.info("event=ble_idle_close vin=%s", self.car.vin)

    def _dispatch(self, session: CarSession) -> None:
        """Hand the session's events to ``on_event``."""
        while not isinstance(event := session.next_event(), NeedData):
            log.info("event=ble_%s vin=%s", type(event).__name__, self.car.vin)
            if self._on_event is not None:
                self._on_event(event)


async def _send_all(link: Link, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        await link.send(chunk)
