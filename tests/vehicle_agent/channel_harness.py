"""A keyserver on a real loopback port and cars that talk to it over the channel, in-process.

The keyserver is the real app (aiohttp's test server, so its port is real TCP); people, phones
and keys come from the key API harness; a car is a provisioned ``AgentState`` + ``Vehicle`` +
``CloudLink`` with a simulated actuator. Waiting is on events (``CloudLink.wait_until``,
``ChannelHub.wait_for``), never on sleeps; ``asyncio.timeout`` only guards against hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keycore import Action, SoftwareSigner, TrustedClock, UnlockDecision, UnlockRequest, prove
from keycore.cose import point_bytes
from keyserver.app import HUB, KEYRING, METRICS
from keyserver.hub import ChannelHub
from keyserver.models import Vehicle as VehicleRecord
from tests.keyserver.keys_harness import VIN, Api, Person, Phone, token_bytes
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.backoff import CLOUD_LINK_BREAKER, ReconnectPolicy
from vehicle_agent.channel import CloudLink
from vehicle_agent.state import AgentState, Identity
from vehicle_agent.vehicle import Vehicle

BOOT_ID = "test-boot"
HANG_GUARD_S = 20  # not a timing assertion: only how long a broken test may hang
COMMANDS = "/v1/vehicles/{vin}/commands"
COMMAND = "/v1/commands/{command_id}"
#: fast reconnection for tests: the real waits, scaled down
FAST = ReconnectPolicy(
    first_jitter_s=0.02,
    multiplier_s=0.02,
    max_wait_s=0.1,
    attempt_timeout_s=5,
    flush_interval_s=1,
    breaker=replace(CLOUD_LINK_BREAKER, wait_in_open_s=0.05),
)


@dataclass
class GatedActuator(SimulatedActuator):
    """Holds each movement until the test opens the gate; says when one has started."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def perform(self, action: Action) -> None:
        self.started.set()
        await self.gate.wait()
        await super().perform(action)


@dataclass
class Car:
    vehicle: Vehicle
    link: CloudLink
    actuator: SimulatedActuator
    state: AgentState

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG_GUARD_S):
            await self.link.wait_until(predicate)

    def request(self, phone: Phone, token: str, action: Action = Action.UNLOCK) -> UnlockRequest:
        """What ``phone`` holding ``token`` sends the car over BLE, to the car's fresh challenge."""
        challenge = self.vehicle.challenge()
        raw = token_bytes(token)
        proof = prove(
            phone.key, challenge=challenge, vin=self.vehicle.vin, action=action, token=raw
        )
        return UnlockRequest(raw, action, challenge, proof)

    def decide(self, phone: Phone, token: str, action: Action = Action.UNLOCK) -> UnlockDecision:
        """What the car decides, offline, for ``phone`` holding ``token``."""
        return self.vehicle.decide(self.request(phone, token, action))


def base_url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


def provision(
    api: Api, path: Path, *, vehicle_key: SoftwareSigner, url: str, clock_ahead: int = 0
) -> AgentState:
    """A car's state as the factory leaves it: identity, trust store, trusted time."""
    state = AgentState.open(path)
    ring = api.app[KEYRING]
    state.set_identity(Identity(VIN, vehicle_key, ring.root_key, url))
    state.save_trust(ring.trust_store())
    mono = time.monotonic()
    clock = TrustedClock.provisioned(now=api.clock.now + clock_ahead, mono=mono, boot_id=BOOT_ID)
    state.save_clock(clock, mono=mono)
    return state


async def register(api: Api, owner: Person) -> SoftwareSigner:
    """The car's key, registered with the keyserver as the factory would, owned by ``owner``."""
    key = SoftwareSigner.generate()
    record = VehicleRecord(VIN, point_bytes(key.public_key), owner.account_id, api.clock.now)
    await api.store.add_vehicle(record)
    return key


async def start_car(
    api: Api,
    tmp_path: Path,
    vehicle_key: SoftwareSigner,
    *,
    actuator: SimulatedActuator | None = None,
    clock_ahead: int = 0,
    boot_id: str = BOOT_ID,
    url: str | None = None,
) -> Car:
    target = url or base_url(api)
    state = provision(
        api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=target, clock_ahead=clock_ahead
    )
    moved = actuator or SimulatedActuator()
    vehicle = Vehicle.load(state, moved, boot_id=boot_id)
    link = CloudLink(vehicle, policy=FAST)
    link.start()
    return Car(vehicle, link, moved, state)


async def hub_until(api: Api, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        await hub(api).wait_for(predicate)


def hub(api: Api) -> ChannelHub:
    return api.app[HUB]


def metric(api: Api, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in api.app[METRICS].registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def applied_results(api: Api) -> float:
    return metric(api, "keyserver_command_results_total", outcome="applied")


def frames_in(api: Api, kind: str) -> float:
    return metric(api, "keyserver_channel_frames_total", direction="in", type=kind)


async def command(api: Api, who: Person, action: str, key: str) -> Any:
    reply = await api.call(
        who, "POST", COMMANDS, {"action": action, "idempotency_key": key}, vin=VIN
    )
    assert reply.status in (200, 202), reply.data
    return reply


async def command_state(api: Api, who: Person, command_id: str) -> Any:
    reply = await api.call(who, "GET", COMMAND, proof=False, command_id=command_id)
    assert reply.status == 200, reply.data
    return reply.body
