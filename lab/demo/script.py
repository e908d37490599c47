"""The demo's script: each step acts on the stack, checks that it did what it should, and says so.

Proximity first: from afar, both phones unlock through the cloud (remote commands); once the
cloud is dead they walk up to the car and unlock over Bluetooth exactly as they would with the
cloud up — the phone never asks the cloud while the car is in range. The owner's phone then
spends five days offline (its own clock moved on) and still gets in with the token its wallet
holds; at eight days the token has lapsed and the phone says what to do.

The revocation list a phone carries is signed by the keyserver's issuer key, so it can only come
from the cloud: the owner revokes the friend's key just before the cloud dies, while the car is
cut off from it (its cellular link drops first), and the owner's phone carries the signed list to
the offline car over Bluetooth. Until then the car cannot know, and lets the friend in (G4: an
offline car enforces a revocation when a phone brings the list, at the latest when the key
expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ble_fallback.errors import BleError
from ble_fallback.phone import carry_over_ble
from keycore import Action
from lab.demo.stack import DemoCar, DemoPhone, DemoStack
from lab.demo.view import Attempt, DemoReport
from lab.errors import LabError
from lab.events import EventLog
from phone.client import CommandOutcome
from resilience.breaker import StateTransition

SHARE_S = 2 * 3600  # the friend's key: a guest key valid two hours
WAIT_LIMIT_S = 15.0  # the longest any wait inside a step may take: a hang guard
Step = tuple[str, str, Callable[[], Awaitable[str]]]
PHASES = {
    "1": "the stack comes up (embedded: one keyserver process on SQLite, a car, two phones)",
    "2": "the owner pairs the car and shares a time-limited key with a friend",
    "3": "both unlock from afar, through the cloud (remote commands)",
    "4": "the cloud dies; at the car the phones use Bluetooth as always; a revocation goes by "
    "courier; an owner offline for days still gets in",
    "5": "the cloud returns and the audit trail catches up",
}


class StepFailed(LabError):
    """A step ran but did not do what it should; the message says what happened instead."""


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise StepFailed(detail)


class DemoScript:
    def __init__(self, work: Path, events: EventLog, report: DemoReport) -> None:
        self.work = work
        self.events = events
        self.report = report
        self.stack: DemoStack | None = None
        self.carried: bytes = b""  # the signed revocation list on the owner's phone
        self.outage_at = 0.0  # monotonic: the cloud was killed
        self.back_at = 0.0  # monotonic: the cloud answered again

    def steps(self) -> list[Step]:
        return [
            ("1.1", "keyserver", self.keyserver_up),
            ("1.2", "car", self.car_up),
            ("1.3", "phones", self.phones_up),
            ("2.1", "owner pairs the car", self.owner_pairs),
            ("2.2", "owner shares a key", self.owner_shares),
            ("3.1", "owner unlocks from afar", lambda: self.cloud_unlock("owner")),
            ("3.2", "friend unlocks from afar", lambda: self.cloud_unlock("friend")),
            ("4.1", "car loses its signal", self.car_offline),
            ("4.2", "owner revokes the friend", self.owner_revokes),
            ("4.3", "cloud killed", self.kill_cloud),
            ("4.4", "owner walks up and unlocks", lambda: self.ble_unlock("owner")),
            ("4.5", "friend walks up and unlocks", lambda: self.ble_unlock("friend")),
            ("4.6", "courier", self.courier),
            ("4.7", "friend unlocks", self.friend_denied),
            ("4.8", "owner unlocks", lambda: self.ble_unlock("owner", phase="after-courier")),
            ("4.9", "owner offline for 5 days", self.offline_for_days),
            ("4.10", "owner offline for 8 days", self.key_lapsed),
            ("5.1", "cloud returns", self.cloud_returns),
            ("5.2", "audit trail", self.audit_catches_up),
        ]

    # the parts, for the steps

    @property
    def rig(self) -> DemoStack:
        assert self.stack is not None, "the stack is not up"
        return self.stack

    @property
    def car(self) -> DemoCar:
        assert self.rig.car is not None, "the car is not up"
        return self.rig.car

    def phone(self, name: str) -> DemoPhone:
        return self.rig.phones[name]

    # 1: the stack

    async def keyserver_up(self) -> str:
        self.stack = await DemoStack.start(self.work)
        async with self.rig.api.get("/readyz") as response:
            ready = await response.json()
        expect(ready.get("store") == "ok", f"the keyserver is not ready: {ready}")
        own = self.rig.keyserver
        self.report.keyserver = own.url
        return f"pid {self.rig.cloud_pid} on {own.url}, SQLite store in {own.work / 'keyserver'}"

    async def car_up(self) -> str:
        car = await self.rig.add_car()
        self.report.vin = car.vin
        car.link.breaker.add_listener(self._breaker_changed)
        await car.until(lambda: car.online, WAIT_LIMIT_S)
        return (
            f"{car.vin}: agent state in {car.state.path.name}, cloud link online,"
            " BLE endpoint on the simulated link"
        )

    async def phones_up(self) -> str:
        for name in ("owner", "friend"):
            await self.rig.add_phone(name)
        return "owner and friend registered, logged in, phones enrolled; wallets empty"

    # 2: pairing and sharing

    async def owner_pairs(self) -> str:
        owner = self.phone("owner")
        answer = await self.rig.pair(owner)
        entry = owner.client.remember(answer, now=int(time.time()), vin=self.car.vin)
        owner.key_id = entry.key_id
        expect(entry.role.name == "OWNER", f"the owner got a {entry.role.name.lower()} key")
        return (
            "paired with the code the car showed;"
            f" owner key in the wallet (until {entry.valid_until})"
        )

    async def owner_shares(self) -> str:
        owner, friend = self.phone("owner"), self.phone("friend")
        now = int(time.time())
        answer = await self.rig.share(owner, friend, SHARE_S)
        entry = friend.client.remember(answer, now=now, vin=self.car.vin)
        friend.key_id = entry.key_id
        expect(entry.role.name == "GUEST", f"the friend got a {entry.role.name.lower()} key")
        expect(entry.expires <= now + SHARE_S + 5, f"the key runs until {entry.valid_until}")
        return (
            f"guest key valid 2 h (until {entry.valid_until}), accepted by the friend,"
            " in the friend's wallet"
        )

    # 3 and 4: unlocking

    async def unlock(
        self, name: str, *, phase: str, key: str = "valid"
    ) -> tuple[CommandOutcome, int]:
        """One unlock by ``name``'s phone: the outcome and how often the car's actuator moved."""
        car, phone = self.car, self.phone(name)
        before = len(car.actuator.performed)
        started = time.monotonic()
        outcome = await phone.client.command(car.vin, Action.UNLOCK)
        latency = time.monotonic() - started
        await car.ble.settled()  # a BLE grant moves the car right after the answer
        moves = len(car.actuator.performed) - before
        code = outcome.code or outcome.status
        self.report.attempts.append(
            Attempt(
                name, phase, outcome.path, moves > 0, code, round(latency * 1000, 1), outcome.reason
            )
        )
        self.events.emit(
            "unlock", phone=name, vin=car.vin, key=key, path=outcome.path, ok=moves > 0,
            latency_s=round(latency, 4), reason=code,
        )  # fmt: skip
        command_id = outcome.command_id if outcome.path == "cloud" else None
        for _ in range(moves):
            self.events.emit(
                "actuation", vin=car.vin, command_id=command_id, action="unlock",
                path=outcome.path,
            )  # fmt: skip
        return outcome, moves

    async def cloud_unlock(self, name: str) -> str:
        outcome, moves = await self.unlock(name, phase="cloud")
        expect(
            (outcome.path, outcome.ok, outcome.status) == ("cloud", True, "executed"),
            f"path {outcome.path}, {outcome.status}: {outcome.reason}",
        )
        expect(moves == 1, f"the car moved {moves} times for one command")
        ms = self.report.attempts[-1].latency_ms
        return f"path cloud, command {outcome.command_id} executed once, car unlocked ({ms:.0f} ms)"

    async def ble_unlock(self, name: str, *, phase: str = "outage") -> str:
        self.rig.walk(self.phone(name), to_car=True)
        outcome, moves = await self.unlock(name, phase=phase)
        expect(
            (outcome.path, outcome.ok, outcome.fell_back) == ("ble", True, False),
            f"path {outcome.path}, {outcome.status}: {outcome.reason}",
        )
        expect(outcome.reason.startswith("unlocked over Bluetooth"), f"answered {outcome.reason}")
        expect(moves == 1, f"the car moved {moves} times for one unlock")
        ms = self.report.attempts[-1].latency_ms
        note = ""
        if name == "friend":
            note = "; the offline car has not heard of the revocation yet"
        return f"path ble (the cloud not asked), car unlocked ({ms:.0f} ms){note}"

    async def offline_for_days(self) -> str:
        owner = self.phone("owner")
        owner.days_ahead = 5  # no network since: nothing refreshed the wallet
        entry = owner.wallet.get(self.car.vin)
        assert entry is not None
        outcome, moves = await self.unlock("owner", phase="offline-days")
        expect(
            (outcome.path, outcome.ok) == ("ble", True),
            f"path {outcome.path}, {outcome.status}: {outcome.reason}",
        )
        expect(moves == 1, f"the car moved {moves} times for one unlock")
        return (
            "the phone's clock 5 days on, no network: the wallet's token (valid until"
            f" {entry.valid_until}) opens the car over Bluetooth"
        )

    async def key_lapsed(self) -> str:
        owner = self.phone("owner")
        owner.days_ahead = 8  # past the token's end: the phone does not even present it
        try:
            outcome, moves = await self.unlock("owner", phase="offline-days")
        finally:
            owner.days_ahead = 0
        expect(
            (outcome.path, outcome.status, moves) == ("none", "not_sent", 0),
            f"path {outcome.path}, {outcome.status}: {outcome.reason}",
        )
        expect(
            "connect the phone to the internet once to renew it" in outcome.reason,
            f"answered {outcome.reason}",
        )
        return f"nothing sent; the phone says: {outcome.reason.split(';')[0]}"

    async def friend_denied(self) -> str:
        outcome, moves = await self.unlock("friend", phase="after-courier", key="revoked")
        expect(
            (outcome.path, outcome.ok, outcome.code) == ("ble", False, "revoked"),
            f"path {outcome.path}, {outcome.code or outcome.status}: {outcome.reason}",
        )
        expect(moves == 0, f"the car moved {moves} times for a revoked key")
        return "path ble, denied by the car: revoked; the car did not move"

    # 4: the outage

    async def car_offline(self) -> str:
        car = self.car
        car.cellular.set(reset=True)
        self.events.emit("fault", name="car-link-cut", phase="start")
        await car.until(lambda: not car.online, WAIT_LIMIT_S)
        return f"parked underground: cellular link cut, cloud link {car.link.state}"

    async def owner_revokes(self) -> str:
        owner, friend, car = self.phone("owner"), self.phone("friend"), self.car
        sequence = await self.rig.revoke(owner, friend.key_id)
        listed, self.carried = await self.rig.signed_list(owner)
        self.report.revocation_sequence = listed
        expect(listed >= sequence, f"the keyserver's list is #{listed}, the revocation #{sequence}")
        held = car.vehicle.revocations.sequence
        expect(held < sequence, f"the car already holds list #{held}")
        return (
            f"the keyserver signed revocation list #{listed} ({len(self.carried)} B); the owner's"
            f" phone keeps it to carry; the car, offline, holds #{held}"
        )

    async def kill_cloud(self) -> str:
        pid = self.rig.cloud_pid
        status = await asyncio.to_thread(self.rig.kill_cloud)
        self.outage_at = time.monotonic()
        self.events.emit("fault", name="cloud-outage", phase="start")
        expect(status == -9, f"the keyserver exited with {status}")
        return f"SIGKILL keyserver pid {pid}: the cloud is gone"

    async def courier(self) -> str:
        car = self.car
        link = await self.rig.reach(self.phone("owner"), car.vin)
        expect(link is not None, "the car is not in Bluetooth range")
        assert link is not None
        try:
            results = await carry_over_ble(link, revocation_list=self.carried)
        finally:
            with contextlib.suppress(BleError):
                await link.close()
        code = results[0].code if results else "no answer"
        self.report.courier = code
        expect(code == "applied", f"the car answered {code}")
        held = car.vehicle.revocations.sequence
        expect(held == self.report.revocation_sequence, f"the car holds list #{held}")
        return (
            "the owner's phone carried the signed list over Bluetooth: applied,"
            f" the car enforces #{held}"
        )

    # 5: recovery

    async def cloud_returns(self) -> str:
        rig, car = self.rig, self.car
        await asyncio.to_thread(rig.keyserver.start)  # same port, same data directory
        self.back_at = time.monotonic()
        self.report.outage_s = round(self.back_at - self.outage_at, 2)
        self.events.emit("fault", name="cloud-outage", phase="end")
        car.cellular.clear()
        self.events.emit("fault", name="car-link-cut", phase="end")
        await car.until(lambda: car.online, WAIT_LIMIT_S)
        took = time.monotonic() - self.back_at
        return (
            f"keyserver pid {rig.cloud_pid} back on {rig.keyserver.url} (same SQLite file);"
            f" the car's cloud link online {took:.2f} s later"
        )

    async def audit_catches_up(self) -> str:
        car = self.car
        car.link.flush()
        await car.until(lambda: car.state.outbox_depth() == 0, WAIT_LIMIT_S)
        trail = await self.rig.audit(self.phone("owner"))
        caught = time.monotonic() - self.back_at
        self.report.audit_caught_up_s = round(caught, 2)
        decisions = [e["event"] for e in trail if e["event"].get("kind") == "decision"]
        ble: dict[str, int] = {}
        for event in decisions:
            if event.get("path") == "ble":
                ble[str(event.get("code"))] = ble.get(str(event.get("code")), 0) + 1
        self.report.audit_outage = dict(sorted(ble.items()))
        courier = [e["event"].get("code") for e in trail if e["event"].get("kind") == "courier"]
        made = [a for a in self.report.attempts if a.path == "ble"]
        granted = sum(a.ok for a in made)
        expect(
            (ble.get("granted", 0), ble.get("revoked", 0)) == (granted, len(made) - granted),
            f"the trail holds BLE decisions {ble}; the phones had {granted} of {len(made)} granted",
        )
        expect(courier == ["applied"], f"the trail holds courier results {courier}")
        return (
            f"GET /v1/vehicles/{car.vin}/audit shows the outage's Bluetooth decisions"
            f" ({granted} granted, {len(made) - granted} revoked) and the courier's list (applied),"
            f" {caught:.2f} s after the cloud returned"
        )

    def _breaker_changed(self, change: StateTransition) -> None:
        self.events.emit("breaker", source="car", name=change.name, state=change.to_state.value)
