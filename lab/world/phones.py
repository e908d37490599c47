"""The world's phones at work: the real ``PhoneClient`` with a wallet, unlocking at the car
(proximity first: Bluetooth, the cloud only when Bluetooth sent nothing), locking from afar
(the cloud), refreshing, listing keys, sharing and revoking — and Mallory's phones trying
invalid keys over BLE.

Each kind of activity of a phone runs at its own jittered interval, one at a time
(``lab.world.pace``; a surge divides the intervals and lets them overlap), so a background
listing that hangs does not hold up an unlock. A person is in one place at a time
(``WorldPhone.whereabouts``), and the world moves their phone on the ``SimulatedRadio``: for an
unlock they walk up to the car and press at once (the phone's scan has not seen the car's
advertisement yet) or stand at it a moment first, then walk off; for a remote lock they sit far
from it until the phone has looked for the car and found nothing. The client learns where it
is only from its radio. Nothing a cloud or a radio does ends a loop: a failed activity is logged
and the next one comes at its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ble_fallback.errors import BleError, CarBusy
from ble_fallback.link import Link
from ble_fallback.phone import CarConnection, unlock_over_ble
from ble_fallback.radio import SimulatedRadio
from keycore import Action
from lab.api import ApiCallError, call
from lab.events import EventLog
from lab.world.agent import PRESS, Attempt
from lab.world.cars import WorldCar
from lab.world.ledger import Ledger
from lab.world.pace import Activity, Pace, Rates, Span
from lab.world.setup import (
    VISITOR_SHARE_S,
    Holder,
    Rest,
    WorldError,
    revoke_key,
    share,
    token_bytes,
)
from phone.client import ClientPolicy, CommandOutcome, PhoneClient
from phone.wallet import KeyWallet, WalletEntry, read_token
from resilience.breaker import BreakerConfig, CircuitBreaker
from resilience.waiting import PredicateWaiters

log = logging.getLogger("lab.world.world")
CLIENT_POLICY = ClientPolicy(cloud_timeout_s=5.0, follow_deadline_s=20.0, poll_interval_s=0.25)
# a phone stops asking a cloud that keeps failing, and goes to Bluetooth at once, for a while
PHONE_BREAKER = BreakerConfig(
    window_size=10, minimum_calls=4, failure_rate_threshold=50.0, slow_call_rate_threshold=100.0,
    slow_call_duration_s=5.0, wait_in_open_s=5.0, open_jitter=0.5,
    permitted_calls_in_half_open=1, max_wait_in_half_open_s=0.0,
)  # fmt: skip
PRESSES = 2  # a person presses unlock at most this often per intent
PRESS_PAUSE_S = (1.0, 2.0)  # between presses: a look at the car
#: how long the phone's radio looks for the car's advertisement at a press (the car advertises
#: every 100 ms: several chances) before it takes the car for out of range
SCAN_S = 0.5
WALK_UP = 0.5  # the share of unlocks pressed on arrival, before the scan has seen the car
STAND_S = (0.3, 1.0)  # the others stand at the car this long before pressing
EXPIRED_MARGIN_S = 2.0  # an "expired" key is tried only once the car's own time is this far past


class EagerWallet(KeyWallet):
    """A wallet whose app renews every token at each refresh, not only those due (so the
    refresh route carries the load a real population puts on it)."""

    def due_for_refresh(self, now: float, ahead_s: int) -> list[WalletEntry]:
        return self.entries()


@dataclass
class Scene:
    """What the phones act in."""

    cars: dict[str, WorldCar]
    radio: SimulatedRadio
    api: aiohttp.ClientSession  # REST calls on the phones' URL
    ledger: Ledger
    events: EventLog
    pace: Pace
    rates: Rates
    visitor: Holder


@dataclass
class WorldPhone:
    holder: Holder
    wallet: KeyWallet
    radio: SimulatedRadio
    client: PhoneClient | None = None
    turns: dict[str, int] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # VIN -> a shared key not yet revoked
    whereabouts: asyncio.Lock = field(default_factory=asyncio.Lock)  # one place at a time
    scans: int = 0  # the radio's answers so far (a remote lock waits for its own)
    scanned: PredicateWaiters = field(default_factory=PredicateWaiters)

    @property
    def name(self) -> str:
        return self.holder.name

    @property
    def vins(self) -> list[str]:
        return sorted(self.holder.keys)

    @property
    def owned(self) -> list[str]:
        return self.vins if self.holder.owner else []

    def next(self, what: str, vins: list[str]) -> str:
        turn = self.turns.get(what, 0)
        self.turns[what] = turn + 1
        return vins[turn % len(vins)]

    async def reach(self, vin: str) -> Link | None:
        """The phone's radio, as the client uses it: the car's advertisement within the scan."""
        try:
            return await self.radio.reach(self.name, vin, scan_s=SCAN_S)
        finally:
            self.scans += 1
            self.scanned.notify()


def make_phone(
    holder: Holder, radio: SimulatedRadio, *, base_url: str, http: aiohttp.ClientSession,
    policy: ClientPolicy, wallet_dir: Path,
) -> WorldPhone:  # fmt: skip
    """The holder's phone: the real client, its wallet filled with the holder's keys."""
    wallet = EagerWallet.open(wallet_dir / f"{holder.name}.db")
    assert isinstance(wallet, EagerWallet)
    for entry in wallet.entries():  # a state directory used before: other cars, other keys
        if entry.vin not in holder.keys:
            wallet.remove(entry.vin)
    phone = WorldPhone(holder, wallet, radio)
    phone.client = PhoneClient(
        base_url=base_url, session_token=holder.person.bearer, device=holder.device.signer,
        http=http, wallet=wallet, reach_car=phone.reach, policy=policy,
        breaker=CircuitBreaker(f"phone-{holder.name}", PHONE_BREAKER),
    )  # fmt: skip
    for vin, answer in holder.keys.items():
        phone.client.remember(answer, now=int(time.time()), vin=vin)
    return phone


async def unlock_at_car(
    scene: Scene, phone: WorldPhone, vin: str | None = None, *, ble_only: bool = False
) -> None:
    """One person's intent to unlock their car (the next car, or ``vin``): they walk up to it
    and press unlock at once, or stand at it a moment first; the phone does what its client
    decides (proximity first). They look at the car. If it did not move — the app failed or
    said the command may have succeeded — they press again after a short pause, at most
    ``PRESSES`` times: a new command each time (the client never retries by itself). Then they
    walk off. One ``unlock`` event per intent: ok = the car moved for one of its presses, with
    ``presses`` and ``first`` (the first press's status, path and command id), and
    ``latency_s``, the wait at the car: from the first press to the car moving (or to the last
    answer when it did not). ``ble_only``: over BLE only, one press (the warm-up's)."""
    assert phone.client is not None
    vin = vin or phone.next("unlock", phone.vins)
    car = scene.cars[vin]
    async with phone.whereabouts:
        scene.radio.move(phone.name, vin)
        try:
            if not ble_only and scene.pace.rng.random() >= WALK_UP:
                await asyncio.sleep(scene.pace.rng.uniform(*STAND_S))  # stands there a moment
            started = time.monotonic()
            presses = await _presses(scene, phone, vin, ble_only=ble_only)
        finally:
            scene.radio.move(phone.name, None)  # walks off
    moved = next((press for press in presses if press.moved(car)), None)
    shown = moved or presses[-1]
    outcome = shown.outcome
    head = presses[0].outcome
    first = {"status": head.status, "path": head.path, "command_id": head.command_id}
    ended = None if moved is None else moved.moved_at(car)
    scene.ledger.unlock(
        phone.name, vin, "valid", outcome.path, moved is not None, started,
        outcome.code or outcome.status, outcome.command_id, outcome.reason,
        presses=len(presses), first=first, ended=ended,
    )  # fmt: skip


async def _presses(scene: Scene, phone: WorldPhone, vin: str, *, ble_only: bool) -> list[Press]:
    car = scene.cars[vin]
    presses: list[Press] = []
    for number in range(1 if ble_only else PRESSES):
        if number:
            await asyncio.sleep(scene.pace.rng.uniform(*PRESS_PAUSE_S))  # looks at the car
            if any(press.moved(car) for press in presses):
                break  # the first press's command ran meanwhile: the car is open
        press = await _press(scene, phone, vin, over_ble=ble_only)
        presses.append(press)
        if press.moved(car):
            break
    return presses


@dataclass
class Press:
    """One press of the unlock button at the car, and what it came to."""

    outcome: CommandOutcome
    attempt: Attempt

    def moved(self, car: WorldCar) -> bool:
        """Whether the car moved for this press (a cloud command may run after its answer)."""
        if self.outcome.path == "ble":
            return self.attempt.moved > 0
        command_id = self.outcome.command_id
        return command_id is not None and car.command_moves[command_id] > 0

    def moved_at(self, car: WorldCar) -> float | None:
        if self.outcome.path == "ble":
            return self.attempt.moved_at
        command_id = self.outcome.command_id
        return None if command_id is None else car.command_moved_at.get(command_id)


async def _press(scene: Scene, phone: WorldPhone, vin: str, *, over_ble: bool) -> Press:
    assert phone.client is not None
    attempt, started = Attempt(), time.monotonic()
    pressing = PRESS.set(attempt)
    try:
        if over_ble:
            outcome = await phone.client.over_ble(vin, Action.UNLOCK)
        else:
            outcome = await phone.client.command(vin, Action.UNLOCK)
    finally:
        PRESS.reset(pressing)
    if outcome.path == "ble":
        await scene.cars[vin].settled()
    bearer = phone.holder.person.bearer
    scene.ledger.command(phone.name, bearer, vin, "unlock", outcome, started, emit=False)
    return Press(outcome, attempt)


async def lock_from_afar(scene: Scene, phone: WorldPhone) -> None:
    """The owner, far from the car, locks it from the app: a remote command (the cloud). They
    stay away until the phone has looked for the car and not found it; the command goes on
    while they move about."""
    assert phone.client is not None
    vin = phone.next("lock", phone.owned)
    started = time.monotonic()
    async with phone.whereabouts:
        scene.radio.move(phone.name, None)
        looked = phone.scans
        command = asyncio.ensure_future(phone.client.command(vin, Action.LOCK))
        command.add_done_callback(lambda _: phone.scanned.notify())
        try:
            await phone.scanned.wait_for(lambda: phone.scans > looked or command.done())
        except asyncio.CancelledError:
            command.cancel()
            raise
    outcome = await command
    bearer = phone.holder.person.bearer
    scene.ledger.command(phone.name, bearer, vin, "lock", outcome, started, emit=True)


async def refresh(scene: Scene, phone: WorldPhone) -> None:
    assert phone.client is not None
    await phone.client.refresh_wallet(int(time.time()))


async def list_keys(scene: Scene, phone: WorldPhone) -> None:
    vin = phone.next("listing", phone.vins)
    # a refusal is an answer all the same (the tally counted it); no answer is the cloud's state
    with contextlib.suppress(ApiCallError, aiohttp.ClientError, OSError, TimeoutError):
        await call(scene.api, f"/v1/vehicles/{vin}/keys", method="GET",
                   bearer=phone.holder.person.bearer)  # fmt: skip


async def share_and_revoke(scene: Scene, phone: WorldPhone) -> None:
    """The owner lends a visitor a key, and takes it back (a revocation the car must enforce).
    A revocation that was not taken is asked again next time."""
    vin = phone.next("share", phone.owned)
    if vin not in phone.pending:
        try:
            answer = await share(Rest(scene.api, deadline=0.0), vin, phone.holder, scene.visitor,
                                 VISITOR_SHARE_S)  # fmt: skip
        except WorldError as error:
            log.info("event=world_share_failed vin=%s error=%s", vin, error)
            return
        phone.pending[vin] = str(answer["key_id"])
        token = read_token(token_bytes(answer))
        scene.ledger.revoked[vin][phone.pending[vin]] = token
    key_id = phone.pending[vin]
    status = await revoke_key(scene.api, key_id, phone.holder)
    scene.ledger.revocation(vin, key_id, scene.ledger.revoked[vin][key_id], status)
    if status in (200, 202):
        del phone.pending[vin]


@dataclass
class Attacker:
    kind: str  # revoked / expired / foreign / replayed
    holder: Holder
    tokens: dict[str, bytes]  # the VIN tried -> the token presented
    turns: int = 0


async def attack(scene: Scene, attacker: Attacker) -> None:
    """One invalid attempt over BLE at the next car; ok = the car moved (it must not)."""
    vins = sorted(scene.cars)
    vin = vins[attacker.turns % len(vins)]
    attacker.turns += 1
    car, kind = scene.cars[vin], attacker.kind
    vehicle = car.vehicle
    request = car.capture
    if kind == "replayed" and request is None:
        return  # nothing heard on the air at this car yet
    token = attacker.tokens.get(vin, b"")
    if kind == "expired" and (
        vehicle is None or vehicle.now() < read_token(token).expires + EXPIRED_MARGIN_S
    ):
        return  # not expired yet by the car's own clock: it would be a valid key
    attempt, started = Attempt(), time.monotonic()
    link = car.connect(attempt)
    if link is None:
        scene.ledger.unlock(attacker.holder.name, vin, kind, "none", False, started, "out_of_range")
        return
    try:
        try:
            if request is not None and kind == "replayed":
                connection = await CarConnection.open(link)
                code = (await connection.exchange(request)).code  # its proof answered another
            else:
                signer = attacker.holder.device.signer
                code = (await unlock_over_ble(link, token, signer, Action.UNLOCK, vin=vin)).code
        finally:
            with contextlib.suppress(BleError):
                await link.close()
    except CarBusy:
        code = "busy"
    except BleError as error:
        code = error.reason.value
    await car.settled()
    ok = attempt.moved > 0
    scene.ledger.unlock(attacker.holder.name, vin, kind, "ble", ok, started, code)


def attacker_activities(scene: Scene, attacker: Attacker) -> dict[str, tuple[Span, Activity]]:
    return {"attack": (scene.rates.attack, lambda: attack(scene, attacker))}


def phone_activities(scene: Scene, phone: WorldPhone) -> dict[str, tuple[Span, Activity]]:
    rates = scene.rates
    activities: dict[str, tuple[Span, Activity]] = {
        "unlock": (rates.unlock, lambda: unlock_at_car(scene, phone)),
        "refresh": (rates.refresh, lambda: refresh(scene, phone)),
        "listing": (rates.listing, lambda: list_keys(scene, phone)),
    }
    if phone.owned:
        activities["lock"] = (rates.lock, lambda: lock_from_afar(scene, phone))
        activities["share"] = (rates.share, lambda: share_and_revoke(scene, phone))
    return activities
