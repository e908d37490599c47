"""The car decides with local state only; learns from signed documents; handles a clock reset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keycore import (
    Action,
    Reason,
    RevocationLedger,
    Role,
    SoftwareSigner,
    TrustedClock,
    UnlockRequest,
    prove,
    sign_time,
)
from tests.conftest import DAY, NOW, VIN, World
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.state import AgentState, Identity
from vehicle_agent.vehicle import Vehicle


class Mono:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


def provisioned(tmp_path: Path, world: World) -> AgentState:
    state = AgentState.open(tmp_path / "agent.db")
    state.set_identity(
        Identity(VIN, SoftwareSigner.generate(), world.root.public_key, "http://127.0.0.1:1")
    )
    state.save_trust(world.trust)
    state.save_clock(TrustedClock.provisioned(now=NOW, mono=100.0, boot_id="boot-1"), mono=100.0)
    return state


def request(car: Vehicle, phone: SoftwareSigner, token: bytes, action: Action) -> UnlockRequest:
    challenge = car.challenge()
    proof = prove(phone, challenge=challenge, vin=car.vin, action=action, token=token)
    return UnlockRequest(token, action, challenge, proof)


async def test_offline_unlock_moves_the_car_and_is_audited(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)
    actuator = SimulatedActuator()
    car = Vehicle.load(state, actuator, boot_id="boot-1", mono=Mono())
    token = world.token(Role.OWNER)
    decision = await car.unlock(request(car, world.phone, token, Action.UNLOCK))
    assert decision.allowed
    assert actuator.performed == [Action.UNLOCK]
    thief = SoftwareSigner.generate()
    denied = await car.unlock(request(car, thief, token, Action.START))
    assert denied.reason is Reason.BAD_PROOF
    assert actuator.performed == [Action.UNLOCK]  # a denial never moves the car
    events = [event for _, event in state.pending_audit()]
    assert [(e["action"], e["code"]) for e in events] == [
        ("unlock", "granted"),
        ("start", "bad_proof"),
    ]
    text = json.dumps(events)
    assert token.hex() not in text  # no token
    assert token[-64:].hex() not in text  # no signature


async def test_revocation_list_applies_once_and_denies(tmp_path: Path, world: World) -> None:
    car = Vehicle.load(
        provisioned(tmp_path, world), SimulatedActuator(), boot_id="boot-1", mono=Mono()
    )
    guest = world.token(Role.GUEST, token_id=b"\x05" * 16)
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x05" * 16, NOW + DAY)
    document = ledger.document(world.issuer, now=NOW)
    assert car.apply_revocations(document)
    assert not car.apply_revocations(document)  # not newer: ignored, not an error
    decision = await car.unlock(request(car, world.phone, guest, Action.UNLOCK))
    assert decision.reason is Reason.REVOKED
    # and it is durable: a restarted agent still knows
    again = Vehicle.load(car.state, SimulatedActuator(), boot_id="boot-1", mono=Mono())
    assert again.revocations.sequence == 1


async def test_clock_reset_needs_fresh_time_for_non_owners(tmp_path: Path, world: World) -> None:
    state = provisioned(tmp_path, world)
    mono = Mono()
    mono.value = 5.0  # a reboot: the monotonic clock starts again, with another boot id
    car = Vehicle.load(state, SimulatedActuator(), boot_id="boot-2", mono=mono)
    assert car.clock.reset
    guest = world.token(Role.GUEST)
    owner = world.token(Role.OWNER)
    assert (await car.unlock(request(car, world.phone, guest, Action.UNLOCK))).reason is (
        Reason.UNTRUSTED_TIME
    )
    assert (await car.unlock(request(car, world.phone, owner, Action.UNLOCK))).allowed

    nonce = car.time_nonce()
    answer = sign_time(world.issuer, nonce=nonce, now=NOW + 60)
    with pytest.raises(ValueError, match="nonce"):
        car.accept_time(answer, b"\x00" * 32)
    car.accept_time(answer, nonce)
    assert not car.clock.reset
    assert (await car.unlock(request(car, world.phone, guest, Action.UNLOCK))).allowed
    with pytest.raises(ValueError, match="nonce"):
        car.accept_time(answer, nonce)  # each nonce once
