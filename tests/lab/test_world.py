"""`phonekey world`: simulated cars and phones at work against a real keyserver process — valid
unlocks at the car over Bluetooth (proximity first) and remote commands through the cloud,
every invalid key refused, nothing changed at the car while the cloud is down, an agent killed
between executing a command and acknowledging it, and the reconcile at the end."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from keyserver.keyring import KeyRingStore
from lab.api import call
from lab.cli import main
from lab.events import read_events
from lab.processes.app import AppServer
from lab.processes.base import LOOPBACK, free_port
from lab.processes.keyserver import STAGING_RATE_LIMITS, keyserver_command, keyserver_env
from lab.world.control import create_control_app
from lab.world.ledger import MAY_HAVE_QUEUED, command_status
from lab.world.pace import Pace, Rates, work
from lab.world.phones import lock_from_afar
from lab.world.world import World, WorldSettings
from phone.client import CommandOutcome
from resilience.breaker import BreakerConfig
from vehicle_agent.backoff import ReconnectPolicy

GUARD_S = 30  # not a timing assertion: how long a broken test may hang on one wait
BRISK = Rates(
    unlock=(0.3, 0.6), attack=(0.3, 0.6), lock=(1.0, 2.0), refresh=(1.0, 2.0),
    listing=(1.0, 2.0), share=(1.5, 3.0),
)  # fmt: skip
# cars come back within a second or two of the keyserver's return
QUICK_RECONNECT = ReconnectPolicy(
    first_jitter_s=0.2, multiplier_s=0.1, max_wait_s=0.5, attempt_timeout_s=2.0,
    breaker=BreakerConfig(
        window_size=5, minimum_calls=3, failure_rate_threshold=50.0,
        slow_call_rate_threshold=100.0, slow_call_duration_s=10.0, wait_in_open_s=0.5,
        open_jitter=0.5, permitted_calls_in_half_open=1, max_wait_in_half_open_s=0.0,
    ),
)  # fmt: skip
INVALID = ("revoked", "expired", "foreign", "replayed")


class Keyserver:
    """A keyserver process on a fixed loopback port, so it can be stopped and started again."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.secret = secrets.token_urlsafe(24)
        self.port = free_port()
        env = keyserver_env(
            port=self.port, data_dir=work / "keyserver", secret=self.secret,
            settings=STAGING_RATE_LIMITS,  # every person logs in, shares, revokes from 127.0.0.1
        )  # fmt: skip
        args = keyserver_command()
        self.server = AppServer(args, workdir=work / "keyserver", env=env, name="keyserver")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def root_der(self) -> bytes:
        root = KeyRingStore(self.work / "keyserver" / "keys").load().root_key
        return root.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def keyserver(tmp_path: Path) -> Iterator[Keyserver]:
    own = Keyserver(tmp_path)
    own.server.start()
    try:
        yield own
    finally:
        own.server.stop()


@pytest.fixture
async def world(tmp_path: Path, keyserver: Keyserver) -> AsyncIterator[World]:
    root = serialization.load_der_public_key(keyserver.root_der())
    settings = WorldSettings(
        phones_url=keyserver.url, cars_url=keyserver.url, root=root,  # type: ignore[arg-type]
        provisioning_secret=keyserver.secret, events=tmp_path / "events.jsonl",
        state_dir=tmp_path / "world", cars=2, phones=4, max_seconds=120, seed=7, rates=BRISK,
        reconnect=QUICK_RECONNECT, settle_s=10.0,
    )  # fmt: skip
    running = World(settings)
    task = asyncio.create_task(running.run())
    try:
        async with asyncio.timeout(60):
            await running.until_warm()
        yield running
    finally:
        await running.stop()
        await task
        await running.close()


async def until(world: World, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_S):
        await world.ledger.changed.wait_for(predicate)


def unlocks(world: World, key: str | None = None) -> list[dict[str, Any]]:
    events = read_events(world.settings.events)
    return [e for e in events if e["kind"] == "unlock" and key in (None, e["key"])]


async def test_the_world_unlocks_at_the_car_over_ble_whatever_the_cloud_does(
    world: World, keyserver: Keyserver
) -> None:
    assert world.warm
    assert all(car.online for car in world.cars.values())
    valid = world.ledger.unlocks["valid"]
    executed = world.ledger.command_counts
    # at the car over Bluetooth, remote locks through the cloud, every invalid key refused
    await until(world, lambda: valid["ble"] >= 6 and executed["executed"] >= 2)
    await until(world, lambda: all(world.ledger.unlocks[k]["attempts"] >= 1 for k in INVALID))
    at_car = unlocks(world, "valid")
    assert all(e["path"] == "ble" and e["ok"] for e in at_car), at_car
    remote = [e for e in read_events(world.settings.events) if e["kind"] == "command"]
    assert all(e["path"] == "cloud" for e in remote)  # from afar: the phone found no car

    await asyncio.to_thread(keyserver.server.stop)  # the whole cloud is gone
    down_at = time.time()

    def after_down() -> list[dict[str, Any]]:  # begun once the cloud was gone
        return [e for e in unlocks(world, "valid") if e["t"] - e["latency_s"] > down_at]

    # (a stop drains for a while on a loaded machine: count from when it returned)
    await until(world, lambda: len(after_down()) >= 3)
    after = after_down()
    assert all(e["path"] == "ble" and e["ok"] for e in after), after  # nothing changed there
    assert all(e["presses"] == 1 for e in after)

    await asyncio.to_thread(keyserver.server.start)  # back, on the same port
    async with asyncio.timeout(GUARD_S):
        await world.changes.wait_for(lambda: all(car.online for car in world.cars.values()))
    reconcile = await world.stop()

    events = list(read_events(world.settings.events))
    invalid = [e for e in events if e["kind"] == "unlock" and e["key"] in INVALID]
    assert {e["key"] for e in invalid} == set(INVALID)
    assert not any(e["ok"] for e in invalid)  # no invalid key ever moved a car
    assert [e for e in events if e["kind"] == "reconcile"] == [
        {"t": pytest.approx(0, abs=1e10), "kind": "reconcile", **reconcile}
    ]
    for vin, car in reconcile["cars"].items():
        assert car["online"]
        assert all(times == 1 for times in car["executed"].values())  # at most once, each
        accepted = {
            e["key_id"] for e in events
            if e["kind"] == "revocation" and e["vin"] == vin and e["accepted"]
        }  # fmt: skip
        assert accepted
        assert accepted <= set(car["revoked_keys"])
    moved = {c for car in reconcile["cars"].values() for c in car["executed"]}
    assert all(reconcile["commands"][c] == "executed" for c in moved)
    # every move of a car is one the world attributed: a BLE attempt or a known command
    for move in (e for e in events if e["kind"] == "actuation"):
        assert (move["path"], move["command_id"] is None) in (("ble", True), ("cloud", False))
        assert move["command_id"] is None or move["command_id"] in reconcile["commands"]


async def test_an_agent_killed_after_executing_reports_the_command_once_after_restart(
    world: World,
) -> None:
    vin = sorted(world.cars)[0]
    car = world.cars[vin]
    owner = next(phone for phone in world.phones if vin in phone.owned)
    world.arm_failpoint(vin, "after-execute")
    locking = asyncio.create_task(lock_from_afar(world.scene, owner))  # or a cloud unlock first
    async with asyncio.timeout(GUARD_S):
        await world.changes.wait_for(lambda: bool(car.kills))
    [killed] = car.kills
    assert car.command_moves[killed] == 1
    # dead before its result left: the keyserver still waits for it (its supervisor restarts it)
    assert not car.alive
    bearer = owner.holder.person.bearer  # the car's owner reads any command to it
    shown = await call(world.api, f"/v1/commands/{killed}", method="GET", bearer=bearer)
    assert shown["status"] == "delivered"
    async with asyncio.timeout(GUARD_S):
        await world.changes.wait_for(lambda: car.crashes == 1 and car.online)
        await locking
    reconcile = await world.stop()
    assert reconcile["commands"][killed] == "executed"
    assert reconcile["cars"][vin]["executed"][killed] == 1
    assert all(times == 1 for c in reconcile["cars"].values() for times in c["executed"].values())
    marks = [e["text"] for e in read_events(world.settings.events) if e["kind"] == "mark"]
    assert f"world: agent of {vin} killed after executing {killed}" in marks


async def test_the_control_api_refuses_bad_bodies_and_changes_nothing(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    settings = WorldSettings(
        phones_url="http://127.0.0.1:9", cars_url="http://127.0.0.1:9",
        root=serialization.load_der_public_key(_some_root()),  # type: ignore[arg-type]
        provisioning_secret="x" * 16, events=tmp_path / "events.jsonl", state_dir=tmp_path,
    )  # fmt: skip
    world = World(settings)
    client = await aiohttp_client(create_control_app(world))
    try:
        for body in ("[]", "nope", '{"factor": 10}', '{"factor": "10", "seconds": 5}',
                     '{"factor": 1000, "seconds": 5}', '{"factor": true, "seconds": 5}',
                     '{"factor": 10, "seconds": 5, "extra": 1}', "x" * 5000):  # fmt: skip
            answer = await client.post("/surge", data=body)
            assert answer.status == 400, body
            assert "code" in (await answer.json())["error"]
        assert world.pace.factor == 1.0
        answer = await client.post("/clock", json={"vin": None, "jump_s": 60})
        assert answer.status == 409  # not warm: no cars yet
        assert (await client.post("/clock", json={"jump_s": "60"})).status == 400
        assert (await client.post("/failpoint", json={"vin": "short"})).status == 400
        answer = await client.post("/surge", json={"factor": 10, "seconds": 5})
        assert answer.status == 200
        assert world.pace.factor == 10
        status = await (await client.get("/status")).json()
        assert status["warm"] is False
        assert status["phones"] == 0
        assert status["surge"] == 10
        metrics = await (await client.get("/metrics")).text()
        assert "world_warm 0.0" in metrics
    finally:
        await world.close()


def test_command_status_says_what_the_keyserver_took() -> None:
    def outcome(path: str, status: str, command_id: str | None, reason: str = "") -> CommandOutcome:
        return CommandOutcome(path, False, status, reason, command_id=command_id)  # type: ignore[arg-type]

    assert command_status(outcome("cloud", "executed", "c1")) == ("executed", True)
    assert command_status(outcome("cloud", "expired", "c1")) == ("expired", True)
    assert command_status(outcome("cloud", "refused", None)) == ("refused", False)
    assert command_status(outcome("none", "not_sent", None)) == ("not_sent", False)
    may = f"{MAY_HAVE_QUEUED} (degraded): it may have succeeded"
    assert command_status(outcome("cloud", "queued", "c1", may)) == ("may_be_queued", False)
    assert command_status(outcome("cloud", "queued", "c1", "car away")) == ("in_doubt", True)
    assert command_status(outcome("cloud", "unknown", None, "lost")) == ("in_doubt", False)


def test_the_command_line_refuses_bad_arguments(tmp_path: Path) -> None:
    base = [
        "world", "--phones-url", "http://127.0.0.1:9", "--events", str(tmp_path / "e"),
        "--state-dir", str(tmp_path), "--provisioning-secret-file", str(tmp_path / "s"),
    ]  # fmt: skip
    for bad in (["--root-key=not-a-key"], ["--root-key=" + _b64(_some_root()), "--cars", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main([*base, *bad])
        assert exit_.value.code == 2
    assert main([*base, "--root-key=" + _b64(_some_root())]) == 2  # no secret file


async def test_phonekey_world_runs_as_a_process_until_stopped(
    tmp_path: Path, keyserver: Keyserver
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(keyserver.secret)
    argv = [
        sys.executable, "-m", "lab.cli", "world", "--phones-url", keyserver.url,
        "--cars-url", keyserver.url, "--root-key=" + _b64(keyserver.root_der()),
        "--provisioning-secret-file", str(secret_file), "--cars", "1", "--phones", "2",
        "--events", str(tmp_path / "events.jsonl"), "--state-dir", str(tmp_path / "world"),
        "--control-port", "0", "--max-seconds", "120", "--seed", "3",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: ASYNC220
    try:
        assert process.stdout is not None
        line = (await asyncio.to_thread(process.stdout.readline)).decode()
        assert line.startswith("world ready on http://127.0.0.1:")
        url = line.split()[-1]
        async with aiohttp.ClientSession(url) as http, asyncio.timeout(60):
            while not (status := await (await http.get("/status")).json())["warm"]:
                assert status["error"] is None
                await asyncio.sleep(0.2)  # the process's state, read over HTTP: polled
            assert status["cars_online"] == 1
            assert status["phones"] == 2
            answer = await http.post("/failpoint", json={"vin": "PKW0000000000000Z", "point": None})
            assert answer.status == 400
            reconcile = await (await http.post("/stop")).json()
        assert next(iter(reconcile["cars"].values()))["online"] is True
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    kinds = {e["kind"] for e in read_events(tmp_path / "events.jsonl")}
    assert {"unlock", "actuation", "http", "revocation", "reconcile", "mark"} <= kinds


def _some_root() -> bytes:
    from keycore import SoftwareSigner

    return SoftwareSigner.generate().public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_a_surge_lets_activities_overlap_and_a_stop_lets_them_finish() -> None:
    pace = Pace(random.Random(1))
    running, finished = [0], [0]
    release, four = asyncio.Event(), asyncio.Event()

    async def activity() -> None:
        running[0] += 1
        if running[0] == 4:
            four.set()
        assert running[0] <= 4  # ceil(factor) at once, never more
        await release.wait()
        running[0] -= 1
        finished[0] += 1

    loop = asyncio.create_task(work(pace, {"unlock": ((0.001, 0.002), activity)}, name="p"))
    pace.surge(3.5, 60)
    async with asyncio.timeout(GUARD_S):
        await four.wait()
        pace.stop()
        release.set()
        await loop  # returns once the activities in flight have finished
    assert running[0] == 0
    assert finished[0] == 4
