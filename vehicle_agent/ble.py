"""The car's BLE peripheral role: ``ble_fallback``'s endpoint deciding against the durable car.

``VehicleBleEndpoint`` serves phone connections with ``ble_fallback.car.CarEndpoint`` over the
agent's ``Vehicle`` (its ``car``, the durable ``CarState``): every unlock is decided by the car's
one decider (``CarState.decide``, keycore's ``decide``) against the car's own trust store,
revocation state, trusted clock and challenge book; each decision is audited in the outbox
(path "ble") and granted actions move the car's actuator; a request the car could not read is
audited as ``malformed``. Courier documents a phone brings (revocation lists, trust updates,
signed time to the car's nonce) are verified and ordered by keycore inside the session, and what
it accepts is persisted through the Vehicle before the car answers "applied".
``start_peripheral`` puts it on the air with bless.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from ble_fallback.bless_link import BlessPeripheral, ServerFactory
from ble_fallback.car import BUSY_RETRY_AFTER_S, CarEndpoint
from ble_fallback.errors import LinkError
from ble_fallback.link import Link, LinkPolicy
from ble_fallback.protocol import CarEvent, CourierHandled, RequestHandled, RequestMalformed
from vehicle_agent.vehicle import Vehicle

log = logging.getLogger(__name__)

#: The CarEndpoint measures time with the event loop's clock and the Vehicle with its own
#: ``mono``: they must be one clock (time.monotonic is the loop's on a standard event loop).
_CLOCK_SKEW = 1.0


class VehicleBleEndpoint:
    """Serves BLE phone connections for the agent's car; pass ``serve`` to a link source."""

    def __init__(
        self,
        vehicle: Vehicle,
        *,
        max_connections: int = 2,
        retry_after: float = BUSY_RETRY_AFTER_S,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.vehicle = vehicle
        self.car = vehicle.car
        self.endpoint = CarEndpoint(
            self.car,
            max_connections=max_connections,
            retry_after=retry_after,
            on_event=self._on_event,
            random_bytes=random_bytes,
        )
        # One actuation at a time, in the order granted: an unlock then a lock stays that way.
        self._actuating: asyncio.Task[None] | None = None

    async def serve(self, link: Link) -> None:
        """Serve one phone until it leaves; never raises for what the phone or radio does."""
        skew = abs(self.vehicle.mono() - asyncio.get_running_loop().time())
        if skew > _CLOCK_SKEW:  # a wiring bug: challenges and the clock would be misjudged
            raise RuntimeError("the Vehicle's mono clock is not the event loop's clock")
        await self.endpoint.serve(link)

    async def settled(self) -> None:
        """Wait until every granted action so far has been performed (or failed, audited)."""
        while (task := self._actuating) is not None:
            await task
            if task is self._actuating:
                self._actuating = None

    def _on_event(self, event: CarEvent) -> None:
        vehicle = self.vehicle
        if isinstance(event, RequestHandled):
            if event.decision is None:  # refused ``late``, before anything was decided
                vehicle.state.add_audit(
                    {
                        "kind": "decision",
                        "path": "ble",
                        "action": event.action.name.lower(),
                        "code": event.code,
                    }
                )
                return
            vehicle.record(event.decision, path="ble")
            if event.allowed:
                task = asyncio.get_running_loop().create_task(
                    _after(self._actuating, vehicle.actuate(event.decision))
                )
                task.add_done_callback(_log_failure)
                self._actuating = task
        elif isinstance(event, RequestMalformed):
            # A phone sent what the car could not read (e.g. a DER-encoded proof): recorded, so
            # a phone app that does it to every car shows up in the audit trail.
            message = event.kind.name.lower()
            vehicle.state.add_audit(
                {"kind": "malformed", "path": "ble", "message": message, "code": event.code}
            )
        elif isinstance(event, CourierHandled):
            document = event.kind.name.lower()
            vehicle.state.add_audit(
                {"kind": "courier", "path": "ble", "document": document, "code": event.code}
            )


async def _after(previous: asyncio.Task[None] | None, actuation: Coroutine[Any, Any, None]) -> None:
    if previous is not None:
        await asyncio.wait([previous])  # its failure is its own: this action still runs
    await actuation


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("event=ble_actuation_failed error=%s", type(error).__name__)


async def start_peripheral(
    ble: VehicleBleEndpoint,
    *,
    name: str,
    policy: LinkPolicy | None = None,
    server_factory: ServerFactory | None = None,
) -> BlessPeripheral | None:
    """Advertise the car over bless; None (logged) when this machine has no BLE stack, so the
    agent runs on without the BLE fallback rather than not at all."""
    peripheral = BlessPeripheral(ble.serve, name=name, policy=policy, server_factory=server_factory)
    try:
        await peripheral.start()
    except LinkError as error:
        log.warning("event=ble_peripheral_unavailable reason=%s", error.detail)
        return None
    return peripheral
