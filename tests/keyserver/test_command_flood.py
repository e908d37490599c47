"""Attacks on the car channel through remote commands (review of issue 12, G5/G7).

A key holder with any role may queue remote commands (every role may lock and unlock). These
tests play a valet acting in bad faith against a real keyserver and a real car on the channel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keycore import Action, Reason
from keycore.channel import CLOSE_TRY_LATER
from keyserver.routes.channel import MAX_OUTBOX
from tests.keyserver.keys_harness import REVOKE, Api, Person
from tests.vehicle_agent.channel_harness import (
    command,
    command_state,
    metric,
    register,
    start_car,
)

FLOOD = MAX_OUTBOX + 44  # more commands than one connection's outbox holds


@pytest.fixture
def api(unlimited_api: Api) -> Api:
    return unlimited_api


@pytest.fixture
async def owner(api: Api) -> Person:
    return await api.person("owner")


async def test_a_holder_cannot_jam_the_channel_with_queued_commands(
    api: Api, owner: Person, tmp_path: Path
) -> None:
    """G7: no user may jam a channel. A valet queues a few hundred remote unlocks while the car
    is away; the owner then revokes a thief and locks the car. When the car connects, it must
    get the revocation and the owner's lock, without the server ever dropping it as "too far
    behind" (on main every connection's Sync overflows the outbox and is closed: the car gets a
    prefix per reconnect, and whatever the writer had not sent yet, revocations included, is
    lost with that connection)."""
    vehicle_key = await register(api, owner)
    valet, thief = await api.person("valet"), await api.person("thief")
    await api.share(owner, valet, "valet")
    stolen = await api.share(owner, thief)
    for n in range(FLOOD):  # the car is not connected: every one waits for it
        await command(api, valet, "unlock", f"flood-{n:05d}")
    api.clock.advance(1)  # the owner acts after the flood: its command comes last
    revoked = await api.call(owner, "POST", REVOKE, key_id=stolen["key_id"])
    assert revoked.status == 200
    await command(api, owner, "lock", "owner-lock-1")
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await car.until(
            lambda: car.vehicle.revocations.sequence >= revoked.body["revocation_sequence"]
        )
        assert car.decide(thief.phone, stolen["token"]).reason is Reason.REVOKED
        await car.until(lambda: Action.LOCK in car.actuator.performed)
        # and the valet's requests never made the server drop the car's connection
        assert metric(api, "keyserver_channel_closes_total", reason=str(CLOSE_TRY_LATER)) == 0
    finally:
        await car.link.stop()


async def test_a_revoked_holders_queued_command_never_runs(
    api: Api, owner: Person, tmp_path: Path
) -> None:
    """G5: revocation means deny. A valet queues an unlock while the car is away and is revoked
    before the car connects: the car must not unlock for the revoked valet."""
    vehicle_key = await register(api, owner)
    valet = await api.person("valet")
    key = await api.share(owner, valet, "valet")
    queued = await command(api, valet, "unlock", "valet-unlock-1")
    assert (await api.call(owner, "POST", REVOKE, key_id=key["key_id"])).status == 200
    api.clock.advance(1)
    lock = await command(api, owner, "lock", "owner-lock-1")  # a later command, to wait on
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await car.until(lambda: Action.LOCK in car.actuator.performed)
        assert Action.UNLOCK not in car.actuator.performed
        state = await command_state(api, valet, queued.body["command_id"])
        assert state["status"] not in ("delivered", "executed")
        assert (await command_state(api, owner, lock.body["command_id"]))["status"] in (
            "delivered",
            "executed",
        )
    finally:
        await car.link.stop()
