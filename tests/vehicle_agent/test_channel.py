"""The cloud↔car channel end to end: a real keyserver app on a loopback port, cars in-process
(or as a process, for kill -9), simulated actuators. Revocations reach a connected car and are
enforced there; remote commands run exactly once, expired or replayed ones never; bad frames from
either side close the connection cleanly; an unlock never waits for the network."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from keycore import Action, Reason, SoftwareSigner
from keycore.channel import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    MAX_AGENT_FRAME_BYTES,
    CommandPush,
    Hello,
    Revocations,
    encode,
)
from keycore.request_proof import HEADER, sign_request
from keyserver.app import SERVICES
from keyserver.models import CommandStatus
from keyserver.routes import channel as channel_route
from tests.keyserver.keys_harness import REVOKE, VIN, Api, Person
from tests.vehicle_agent.channel_harness import (
    BOOT_ID,
    FAST,
    HANG_GUARD_S,
    Car,
    GatedActuator,
    applied_results,
    base_url,
    command,
    command_state,
    frames_in,
    hub,
    hub_until,
    metric,
    provision,
    start_car,
)
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.channel import SUPERSEDED, CloudLink, LinkState
from vehicle_agent.vehicle import Vehicle


async def stopped(*links: CloudLink) -> None:
    for link in links:
        await link.stop()


# revocation


async def test_a_revocation_reaches_a_connected_car_and_is_enforced(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        assert car.decide(driver.phone, key["token"]).allowed

        started = time.perf_counter()
        reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
        assert reply.status == 200
        sequence = reply.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        propagation = time.perf_counter() - started
        print(
            f"\nrevocation propagation, API call to enforced on the car: {propagation * 1e3:.1f} ms"
        )

        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED
        assert car.link.stats.revocations_applied == 1
        # and it is durable on the car
        assert car.state.revocations(VIN).sequence == sequence
    finally:
        await stopped(car.link)


async def test_a_car_that_connects_later_gets_the_revocations_it_missed(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        sequence = reply.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        assert car.decide(driver.phone, key["token"]).reason is Reason.REVOKED
    finally:
        await stopped(car.link)


async def test_a_car_with_a_reset_clock_asks_for_signed_time_on_connect(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    guest = await api.person("guest")
    key = await api.share(owner, guest, "guest")
    # the car rebooted since its clock was saved: a clock reset, non-owner keys refused
    car = await start_car(api, tmp_path, vehicle_key, boot_id="another-boot")
    try:
        await car.until(lambda: not car.vehicle.clock.reset)
        assert car.decide(guest.phone, key["token"]).allowed
        assert frames_in(api, "timerequest") == 1
    finally:
        await stopped(car.link)


# remote commands


async def test_a_remote_command_runs_once_and_its_state_follows(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    actuator = GatedActuator()
    car = await start_car(api, tmp_path, vehicle_key, actuator=actuator)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        reply = await command(api, owner, "unlock", "tap-0001")
        assert reply.status == 202
        first = reply.body
        assert (first["status"], first["hint"]) == ("queued", None)
        command_id = first["command_id"]

        async with asyncio.timeout(HANG_GUARD_S):
            await actuator.started.wait()  # the car has it and is moving
        await hub_until(api, lambda: frames_in(api, "received") >= 1)
        assert (await command_state(api, owner, command_id))["status"] == "delivered"

        actuator.gate.set()
        await hub_until(api, lambda: applied_results(api) >= 1)
        done = await command_state(api, owner, command_id)
        assert (done["status"], done["detail"]) == ("executed", "")
        assert actuator.performed == [Action.UNLOCK]

        # the same idempotency key: the same command, not a second one, not a second movement
        again = await command(api, owner, "unlock", "tap-0001")
        assert again.status == 200
        assert (again.body["command_id"], again.body["status"]) == (command_id, "executed")
        await car.until(
            lambda: car.state.outbox_depth() == 0 and not car.state.unreported_commands()
        )
        assert actuator.performed == [Action.UNLOCK]
        assert metric(api, "keyserver_commands_total", outcome="created") == 1

        # the car's audit events reached the keyserver, each once
        events = [json.loads(e.event) for e in await api.store.audit_events(VIN)]
        assert {"kind": "command", "outcome": "executed", "command_id": command_id}.items() <= (
            next(e for e in events if e.get("kind") == "command").items()
        )
    finally:
        await stopped(car.link)


async def test_a_command_queued_while_the_car_is_away_runs_when_it_connects(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    reply = await command(api, owner, "climate", "warm-up-01")
    assert reply.body["status"] == "queued"
    assert reply.body["hint"]["code"] == "car_unreachable"
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: applied_results(api) >= 1)
        assert (await command_state(api, owner, reply.body["command_id"]))["status"] == "executed"
        assert car.actuator.performed == [Action.CLIMATE]
    finally:
        await stopped(car.link)


async def test_a_frame_too_large_for_the_car_is_withheld_and_the_rest_still_arrives(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before issue 12 an oversized revocation list went first on every connect, the car's
    socket refused it, and nothing behind it — commands included — ever arrived."""
    for n in range(8):
        key = await api.share(owner, await api.person(f"p{n}"))
        assert (await api.call(owner, "POST", REVOKE, key_id=key["key_id"])).status == 200
    reply = await command(api, owner, "climate", "warm-up-02")
    stored = await api.store.command(reply.body["command_id"])
    assert stored is not None
    listed = await api.app[SERVICES].issuer.revocation_list(VIN, since=0, now=api.clock.now)
    assert listed.document is not None
    too_large = len(encode(Revocations(listed.document)))
    fits = len(encode(CommandPush(stored.command_id, stored.document)))
    assert fits < too_large
    # a car that reads less than the list's frame: the premise of the jam, made cheaply
    monkeypatch.setattr(channel_route, "MAX_SERVER_FRAME_BYTES", (fits + too_large) // 2)
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: applied_results(api) >= 1)
        assert car.actuator.performed == [Action.CLIMATE]
        assert car.vehicle.revocations.sequence == 0  # withheld, never sent
        withheld = metric(api, "keyserver_channel_frames_total", direction="withheld")
        assert withheld >= 1
        assert car.link.stats.close_codes == []  # the connection never broke over it
    finally:
        await stopped(car.link)


async def test_a_queued_command_is_superseded_by_an_action_in_person(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    # the cloud queued an unlock for a car it could not reach; the phone then fell back to BLE
    # and the owner unlocked and locked in person: the queued unlock must never run afterwards
    reply = await command(api, owner, "unlock", "remote-unlock-01")
    assert reply.body["status"] == "queued"
    token = (await api.owner_key(owner))["token"]
    state = provision(api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=base_url(api))
    actuator = SimulatedActuator()
    vehicle = Vehicle.load(state, actuator, boot_id=BOOT_ID)
    car = Car(vehicle, CloudLink(vehicle, policy=FAST), actuator, state)
    for action in (Action.UNLOCK, Action.LOCK):
        assert (await vehicle.unlock(car.request(owner.phone, token, action))).allowed
    car.link.start()
    try:
        await hub_until(api, lambda: applied_results(api) >= 1)
        shown = await command_state(api, owner, reply.body["command_id"])
        assert (shown["status"], shown["detail"]) == ("failed", SUPERSEDED)
        assert actuator.performed == [Action.UNLOCK, Action.LOCK]  # the car stays locked
        assert car.link.stats.commands_executed == 0
    finally:
        await stopped(car.link)


async def test_an_expired_command_is_never_sent_nor_executed(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    reply = await command(api, owner, "unlock", "too-late-01")
    api.clock.advance(61)  # past expires_at while the car was away
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        shown = await command_state(api, owner, reply.body["command_id"])
        assert (shown["status"], shown["detail"]) == (
            "expired",
            "expired before the car received it",
        )
        assert shown["hint"] is None
        assert (
            metric(api, "keyserver_channel_frames_total", direction="out", type="commandpush") == 0
        )
        assert car.actuator.performed == []
    finally:
        await stopped(car.link)


async def test_a_queued_command_runs_after_the_same_action_in_person(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    # a cloud unlock raced an unlock in person (another phone at the car, over BLE): the car is
    # as the user wants it, so the queued unlock runs rather than failing as superseded
    reply = await command(api, owner, "unlock", "remote-unlock-02")
    token = (await api.owner_key(owner))["token"]
    state = provision(api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=base_url(api))
    actuator = SimulatedActuator()
    vehicle = Vehicle.load(state, actuator, boot_id=BOOT_ID)
    car = Car(vehicle, CloudLink(vehicle, policy=FAST), actuator, state)
    assert (await vehicle.unlock(car.request(owner.phone, token, Action.UNLOCK))).allowed
    assert state.local_action() == "unlock"
    car.link.start()
    try:
        await hub_until(api, lambda: applied_results(api) >= 1)
        assert (await command_state(api, owner, reply.body["command_id"]))["status"] == "executed"
        assert actuator.performed == [Action.UNLOCK, Action.UNLOCK]
    finally:
        await stopped(car.link)


async def test_the_car_refuses_a_command_that_has_expired_by_its_own_clock(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    # the car's trusted clock is 2 minutes ahead of the keyserver's: what the server still sends
    # has expired for the car, which must judge by its own trusted time
    car = await start_car(api, tmp_path, vehicle_key, clock_ahead=120)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        reply = await command(api, owner, "start", "start-0001")
        await hub_until(api, lambda: applied_results(api) >= 1)
        shown = await command_state(api, owner, reply.body["command_id"])
        assert (shown["status"], shown["detail"]) == ("expired", "expired")
        assert car.actuator.performed == []
        assert car.link.stats.commands_refused == 1
        assert car.state.command(reply.body["command_id"]) is None  # never begun
    finally:
        await stopped(car.link)


async def test_a_replayed_command_is_never_executed_twice(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        reply = await command(api, owner, "unlock", "unlock-001")
        command_id = reply.body["command_id"]
        await hub_until(api, lambda: applied_results(api) >= 1)
        # the keyserver loses the result (say, a failover to a replica behind it): the command
        # reads as queued again, and the car is sent the very same signed document on reconnect
        assert await api.store.set_command_status(
            command_id, CommandStatus.QUEUED, vin=VIN,
            expected=[CommandStatus.EXECUTED], detail="", now=api.clock.now,
        )  # fmt: skip
        await hub(api).close_all(1001, b"restart")
        await car.until(lambda: car.link.stats.commands_replayed == 1)
        await hub_until(api, lambda: applied_results(api) >= 2)  # the car told it again
        assert (await command_state(api, owner, command_id))["status"] == "executed"
        assert car.actuator.performed == [Action.UNLOCK]
        assert car.link.stats.connects == 2
    finally:
        await stopped(car.link)


RUNNER = [sys.executable, "-m", "tests.vehicle_agent.agent_runner"]


@pytest.mark.parametrize(
    ("die_after", "final"),
    [("finish", ("executed", "")), ("actuate", ("failed", "interrupted"))],
    ids=["after_the_outcome_is_recorded", "while_the_car_moves"],
)
async def test_kill_9_between_execute_and_acknowledgement(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    tmp_path: Path,
    die_after: str,
    final: tuple[str, str],
) -> None:
    """The agent is a process; it dies by SIGKILL after moving the car and before the keyserver
    has acknowledged the result. Restarted, it reports the outcome once and never moves again."""
    state_path, moves = tmp_path / "agent.db", tmp_path / "moves.log"
    provision(api, state_path, vehicle_key=vehicle_key, url=base_url(api)).close()
    args = [*RUNNER, str(state_path), str(moves), BOOT_ID]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    agent = await asyncio.create_subprocess_exec(*args, "--die-after", die_after, env=env)
    restarted = None
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        reply = await command(api, owner, "unlock", "unlock-kill")
        command_id = reply.body["command_id"]
        async with asyncio.timeout(HANG_GUARD_S):
            assert await agent.wait() == -signal.SIGKILL
        assert moves.read_text().split() == ["unlock"]
        assert (await command_state(api, owner, command_id))["status"] == "delivered"

        restarted = await asyncio.create_subprocess_exec(*args, env=env)
        await hub_until(api, lambda: applied_results(api) >= 1)
        shown = await command_state(api, owner, command_id)
        assert (shown["status"], shown["detail"]) == final
        await hub_until(api, lambda: frames_in(api, "sync") >= 2)
        assert moves.read_text().split() == ["unlock"]  # moved once, across both lives
        assert metric(api, "keyserver_command_results_total", outcome="repeated") == 0
    finally:
        for process in (agent, restarted):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


# bad frames, from either side


async def _raw_channel(api: Api, key: SoftwareSigner) -> aiohttp.ClientWebSocketResponse:
    path = f"/v1/vehicles/{VIN}/channel"
    proof = sign_request(
        key, device_id=VIN, method="GET", path=path, body=b"", timestamp=api.clock.now
    )
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(base_url(api) + path, headers={HEADER: proof})
    ws._phonekey_session = session  # type: ignore[attr-defined]  # closed with the socket
    return ws


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda ws: ws.send_bytes(b"\xff\x00 not cbor"), CLOSE_POLICY),
        (lambda ws: ws.send_bytes(encode(Hello(1, 2, 3))), CLOSE_POLICY),  # the server's frame
        (lambda ws: ws.send_bytes(b"\xa1\x00\x18\x63"), CLOSE_POLICY),  # unknown type 99
        (lambda ws: ws.send_str("hello"), CLOSE_UNSUPPORTED),
        (lambda ws: ws.send_bytes(b"\x00" * (MAX_AGENT_FRAME_BYTES + 1)), 1009),
    ],
    ids=["not_cbor", "wrong_direction", "unknown_type", "text", "too_large"],
)
async def test_a_bad_frame_from_a_car_closes_its_connection_and_nothing_else(
    api: Api, vehicle_key: SoftwareSigner, send: Any, code: int
) -> None:
    ws = await _raw_channel(api, vehicle_key)
    try:
        hello = await ws.receive_bytes()
        assert hello.startswith(b"\xa4\x00\x01")  # {0: 1, …}: Hello
        await send(ws)
        async with asyncio.timeout(HANG_GUARD_S):
            closing = await ws.receive()
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == code
    finally:
        await ws.close()
        await ws._phonekey_session.close()  # type: ignore[attr-defined]
    await hub_until(api, lambda: not hub(api).connected(VIN))
    assert (await api.client.get("/healthz")).status == 200


@pytest.fixture
async def bad_server(aiohttp_server: Any) -> tuple[str, list[bytes]]:
    """A server that answers the upgrade, then sends garbage: what a car must survive."""
    sent: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        garbage = [b"\x80", b"\xa1\x00\x10", encode(Hello(1, 0, 0)) + b"\x00"][len(sent) % 3]
        sent.append(garbage)
        await ws.send_bytes(garbage)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get(f"/v1/vehicles/{VIN}/channel", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), sent


async def test_a_bad_frame_from_the_server_is_refused_and_the_car_reconnects(
    api: Api, vehicle_key: SoftwareSigner, tmp_path: Path, bad_server: tuple[str, list[bytes]]
) -> None:
    url, sent = bad_server
    car = await start_car(api, tmp_path, vehicle_key, url=url)
    try:
        await car.until(lambda: len(car.link.stats.close_codes) >= 3)
        assert car.link.stats.close_codes[:3] == [CLOSE_POLICY] * 3
        assert len(sent) >= 3
        refusals = [e for _, e in car.state.pending_audit() if e["kind"] == "channel_refused"]
        assert [e["what"] for e in refusals[:3]] == ["frame"] * 3
    finally:
        await stopped(car.link)


# the network never holds an unlock


async def test_an_unlock_never_waits_for_the_network(
    api: Api, owner: Person, vehicle_key: SoftwareSigner, tmp_path: Path
) -> None:
    key = await api.owner_key(owner)
    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        car = await start_car(api, tmp_path, vehicle_key, url=url)
        try:
            await car.until(lambda: car.link.state is LinkState.CONNECTING)
            async with asyncio.timeout(HANG_GUARD_S):
                decision = await car.vehicle.unlock(car.request(owner.phone, key["token"]))
            assert decision.allowed
            assert car.actuator.performed == [Action.UNLOCK]
            assert car.link.state is LinkState.CONNECTING  # still trying, in the background
        finally:
            await stopped(car.link)
