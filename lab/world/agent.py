"""What the world wraps around each car's real agent, to watch it and to hurt it: the factory's
state file, a durable state and an actuator that tell the car which remote command moved it, the
sockets a kill cuts, and the eavesdropper on the air next to the car.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from ble_fallback.errors import BleError
from ble_fallback.framing import FrameReader
from ble_fallback.link import LinkPolicy, SimulatedLink
from ble_fallback.messages import MAX_MESSAGE_BYTES, UnlockRequest, decode
from keycore import Action, SoftwareSigner, TrustedClock, TrustStore
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.state import AgentState, Identity

BOOT_ID = "world-car"


@dataclass
class Attempt:
    """One unlock attempt over BLE: how many times the car moved for it, and when it first did
    (``time.monotonic()``)."""

    moved: int = 0
    moved_at: float | None = None


#: the attempt a car's BLE connection serves (set in the connection's task, on the car's side)
ATTEMPT: ContextVar[Attempt | None] = ContextVar("world_ble_attempt", default=None)
#: the press a phone's connection is made for (set around the press, on the phone's side): the
#: world's bookkeeping of which press moved the car, never a hint of where the phone is
PRESS: ContextVar[Attempt | None] = ContextVar("world_press", default=None)


def write_factory_state(
    vin: str,
    key: SoftwareSigner,
    *,
    root: ec.EllipticCurvePublicKey,
    trust_update: bytes,
    cars_url: str,
    state_dir: Path,
) -> Path:
    """What the factory installs in a new car (identity, trust store, clock), in its state file."""
    path = state_dir / f"{vin}.db"
    state = AgentState.open(path)
    try:
        state.set_identity(Identity(vin, key, root, cars_url))
        state.save_trust(TrustStore(root).apply(trust_update))  # verified under the root
        mono = time.monotonic()
        clock = TrustedClock.provisioned(now=time.time(), mono=mono, boot_id=BOOT_ID)
        state.save_clock(clock, mono=mono)
    finally:
        state.close()
    return path


class CarSide(Protocol):
    """What the agent's pieces tell their car (``lab.world.cars.WorldCar``)."""

    executing: str | None
    begun: set[str]

    def command_finished(self, command_id: str) -> None: ...

    def moved(self, action: Action) -> None: ...


class WorldAgentState(AgentState):
    """The agent's durable state, telling its car which remote command it is executing."""

    car: CarSide | None = None

    def begin_command(self, command_id: str, action: str, *, at: float) -> bool:
        begun = super().begin_command(command_id, action, at=at)
        if begun and self.car is not None:
            self.car.executing = command_id
            self.car.begun.add(command_id)
        return begun

    def finish_command(self, command_id: str, status: str, detail: str, *, at: float) -> None:
        super().finish_command(command_id, status, detail, at=at)
        if self.car is not None:
            self.car.command_finished(command_id)


class WorldActuator:
    """The car's actuator (simulated), reporting every move to its car."""

    def __init__(self, car: CarSide) -> None:
        self.car = car
        self.simulated = SimulatedActuator()

    async def perform(self, action: Action) -> None:
        await self.simulated.perform(action)  # an ActuatorError means nothing moved
        self.car.moved(action)


class Sockets:
    """The sockets an agent's connections are made on (aiohttp's ``socket_factory``), so a kill
    can cut them at once, as the kernel does when a process dies: FIN, and nothing more sent."""

    def __init__(self) -> None:
        self._made: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def __call__(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        made = socket.socket(family=family, type=kind, proto=proto)
        self._made.add(made)
        return made

    def cut(self) -> None:
        for made in list(self._made):
            with contextlib.suppress(OSError):  # already closed
                made.shutdown(socket.SHUT_RDWR)


class TappedLink:
    """The phone's end of a link, with an eavesdropper recording the unlock requests it sends."""

    def __init__(self, link: SimulatedLink, heard: Callable[[UnlockRequest], None]) -> None:
        self._link = link
        self._heard = heard
        self._reader = FrameReader(max_frame=MAX_MESSAGE_BYTES, gap_timeout=link.policy.gap_timeout)

    @property
    def policy(self) -> LinkPolicy:
        return self._link.policy

    async def send(self, chunk: bytes) -> None:
        await self._link.send(chunk)
        with contextlib.suppress(BleError):
            frame = self._reader.receive(chunk, asyncio.get_running_loop().time())
            if frame is not None and not frame.repeat:
                message = decode(frame.payload)
                if isinstance(message, UnlockRequest):
                    self._heard(message)

    async def receive(self) -> bytes:
        return await self._link.receive()

    async def close(self) -> None:
        await self._link.close()
