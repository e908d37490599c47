"""The agent's car as the BLE peripheral, over the simulated link on virtual time: unlocks are
decided against the durable state, audited and actuated; couriered documents are persisted only
when they verify and are newer; a car at its connection limit answers Busy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import ble_fallback.phone
from ble_fallback.car import BUSY_RETRY_AFTER_S
from ble_fallback.errors import CarBusy
from ble_fallback.link import LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.phone import CarConnection, carry_over_ble, unlock_over_ble
from ble_fallback.virtual_time import run_simulated
from keycore import Action, Role, prove, sign_time
from tests.ble_fallback.harness import random_source, revocation_of
from tests.conftest import NOW, VIN, World
from tests.vectors.ble import der
from tests.vehicle_agent.test_vehicle import provisioned
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.ble import VehicleBleEndpoint
from vehicle_agent.state import AgentState
from vehicle_agent.vehicle import Vehicle

LOSSY = LinkConditions(latency=0.01, jitter=0.05, loss=0.05, duplicate=0.02)
CLEAN = LinkConditions()
POLICY = LinkPolicy(mtu=185, allowed_latency=0.5, retry_interval=0.15)
START = 100.0  # the loop's clock at start: the provisioned state saved its clock at mono 100
GUEST_ID = b"\x05" * 16


class Car:
    """The agent's car on the loop's clock, serving BLE through its durable state."""

    def __init__(self, state: AgentState, *, boot_id: str = "boot-1", **options: int) -> None:
        self.actuator = SimulatedActuator()
        self.vehicle = Vehicle.load(
            state, self.actuator, boot_id=boot_id, mono=asyncio.get_running_loop().time
        )
        self.ble = VehicleBleEndpoint(self.vehicle, random_bytes=random_source(), **options)
        self.rng = random.Random(0)

    @contextlib.asynccontextmanager
    async def connect(self, conditions: LinkConditions = LOSSY) -> AsyncIterator[SimulatedLink]:
        phone, car = SimulatedLink.pair(POLICY, conditions, rng=self.rng)
        serving = asyncio.create_task(self.ble.serve(car))
        try:
            yield phone
        finally:
            await phone.close()
            await serving

    def audit(self, kind: str) -> list[dict[str, object]]:
        return [e for _, e in self.vehicle.state.pending_audit(1000) if e["kind"] == kind]


@pytest.mark.parametrize("seed", range(3))
def test_unlock_is_decided_audited_and_actuated(tmp_path: Path, world: World, seed: int) -> None:
    state = provisioned(tmp_path, world)
    token = world.token()

    async def scenario() -> None:
        car = Car(state)
        car.rng.seed(seed)
        async with car.connect() as link:
            result = await unlock_over_ble(link, token, world.phone, Action.UNLOCK)
        await car.ble.settled()
        assert (result.granted, result.code) == (True, "granted")
        assert car.actuator.performed == [Action.UNLOCK]
        (event,) = car.audit("decision")
        assert (event["path"], event["action"], event["code"]) == ("ble", "unlock", "granted")
        assert token[-64:].hex() not in json.dumps(car.audit("decision"))

    run_simulated(scenario(), start=START)


def test_a_couriered_revocation_is_durable_and_denies(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)
    guest = world.token(Role.GUEST, token_id=GUEST_ID)

    async def scenario() -> None:
        car = Car(state)
        async with car.connect() as link:
            (applied,) = await carry_over_ble(link, revocation_list=revocation_of(world, GUEST_ID))
        assert applied.code == "applied"
        assert applied.status.revocation_sequence == 1
        reopened = AgentState.open(state.path)  # what a restarted agent would read
        assert reopened.revocations(VIN).sequence == 1
        reopened.close()
        async with car.connect() as link:
            denied = await unlock_over_ble(link, guest, world.phone, Action.UNLOCK)
        await car.ble.settled()
        assert denied.code == "revoked"
        assert car.actuator.performed == []
        assert [e["code"] for e in car.audit("courier")] == ["applied"]
        assert [e["code"] for e in car.audit("decision")] == ["revoked"]

    run_simulated(scenario(), start=START)


def test_a_der_proof_is_answered_malformed_audited_and_never_actuated(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = provisioned(tmp_path, world)
    monkeypatch.setattr(ble_fallback.phone, "prove", lambda *a, **k: der(prove(*a, **k)))

    async def scenario() -> None:
        car = Car(state)
        async with car.connect() as link:
            result = await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)
        await car.ble.settled()
        assert (result.granted, result.code, result.attempts) == (False, "malformed", 1)
        assert car.actuator.performed == []
        assert car.audit("decision") == []
        assert car.audit("malformed") == [
            {"kind": "malformed", "path": "ble", "message": "unlock_request", "code": "malformed"}
        ]

    run_simulated(scenario(), start=START)


def test_a_stale_list_is_refused_and_changes_nothing(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)

    async def scenario() -> None:
        car = Car(state)
        assert car.vehicle.apply_revocations(revocation_of(world, GUEST_ID, sequence=2))
        before = state.revocations(VIN).encode()
        async with car.connect() as link:
            (refused,) = await carry_over_ble(
                link, revocation_list=revocation_of(world, b"\7" * 16)
            )
        assert refused.code == "stale"
        assert state.revocations(VIN).encode() == before
        assert car.vehicle.revocations.sequence == 2
        assert [e["code"] for e in car.audit("courier")] == ["stale"]

    run_simulated(scenario(), start=START)


def test_signed_time_to_the_cars_nonce_clears_a_reset_durably(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)
    guest = world.token(Role.GUEST)

    async def answer(nonce: bytes) -> bytes:
        return sign_time(world.issuer, nonce=nonce, now=NOW + 60)

    async def scenario() -> None:
        car = Car(state, boot_id="boot-2")  # a reboot: the clock is in reset
        async with car.connect() as link:
            assert (await unlock_over_ble(link, guest, world.phone, Action.UNLOCK)).code == (
                "untrusted_time"
            )
        async with car.connect() as link:
            (applied,) = await carry_over_ble(link, signed_time=answer)
        assert applied.code == "applied"
        mono = asyncio.get_running_loop().time()
        reopened = AgentState.open(state.path)
        saved = reopened.clock(mono=mono, boot_id="boot-2")
        reopened.close()
        assert saved is not None
        assert not saved.reset
        async with car.connect() as link:
            assert (await unlock_over_ble(link, guest, world.phone, Action.UNLOCK)).granted
        await car.ble.settled()
        assert car.actuator.performed == [Action.UNLOCK]

    run_simulated(scenario(), start=START)


def test_the_third_phone_gets_busy_and_may_retry(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)
    token = world.token()

    async def scenario() -> None:
        car = Car(state, max_connections=2)
        async with car.connect(CLEAN) as first, car.connect(CLEAN) as second:
            await CarConnection.open(first)
            await CarConnection.open(second)
            async with car.connect(CLEAN) as third:
                with pytest.raises(CarBusy) as busy:
                    await CarConnection.open(third)
        assert busy.value.retry_safe
        assert busy.value.retry_after == BUSY_RETRY_AFTER_S
        async with car.connect(CLEAN) as again:  # once a phone has left, the retry succeeds
            assert (await unlock_over_ble(again, token, world.phone, Action.UNLOCK)).granted
        await car.ble.settled()
        assert car.actuator.performed == [Action.UNLOCK]

    run_simulated(scenario(), start=START)
