"""The staging stack's world: N simulated cars (the real vehicle-agent pieces) and M phones (the
real phone client) doing realistic work against the keyserver, writing the events the chaos drills
are computed from (lab/events.py), until stopped.

``World.run()``: set up through the REST API (``lab.world.setup``), boot the cars, warm up
(every car online and enforcing the revocations made so far, a request heard on the air at each
car, the short keys expired by the cars' own clocks), then work (``lab.world.phones``) until
``stop()`` or the time bound. ``stop()`` winds the work down, waits (bounded) for accepted
commands to be final and revocations to reach online cars, and writes the ``reconcile`` event.
Construct it inside a running event loop. Its control API is ``lab.world.control``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from ble_fallback.radio import SimulatedRadio
from keycore import KeyToken
from lab.events import EventLog
from lab.world.agent import write_factory_state
from lab.world.cars import FAILPOINTS, WorldCar
from lab.world.ledger import Ledger
from lab.world.metrics import HttpTally, WorldMetrics
from lab.world.pace import Pace, Rates, work
from lab.world.phones import (
    CLIENT_POLICY,
    EXPIRED_MARGIN_S,
    Attacker,
    Scene,
    WorldPhone,
    attacker_activities,
    make_phone,
    phone_activities,
    unlock_at_car,
)
from lab.world.setup import Holder, Population, Rest, WorldError, set_up, token_bytes
from phone.client import ClientPolicy
from phone.wallet import read_token
from resilience.waiting import PredicateWaiters
from vehicle_agent.backoff import ReconnectPolicy

log = logging.getLogger("lab.world.world")

API_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
TICK_S = 1.0  # the http events' window
CAPTURE_TRIES = 3
#: staging's cars come back sooner than production's (waits up to 60 s): a drill's recover
#: window sees them online again. Waits between connects are capped at 10 s; a keyserver silent
#: for a 10 s heartbeat (and half of it for the pong) is dropped.
STAGING_RECONNECT = ReconnectPolicy(max_wait_s=10.0, heartbeat_s=10.0)


@dataclass(frozen=True)
class WorldSettings:
    phones_url: str
    cars_url: str
    root: ec.EllipticCurvePublicKey = field(repr=False)
    provisioning_secret: str = field(repr=False)
    events: Path
    state_dir: Path
    cars: int = 8
    phones: int = 16
    max_seconds: float = 3600.0
    seed: int | None = None
    rates: Rates = field(default_factory=Rates)
    reconnect: ReconnectPolicy = STAGING_RECONNECT
    client: ClientPolicy = CLIENT_POLICY
    setup_s: float = 300.0  # set-up and warm-up, at most
    wind_down_s: float = 30.0  # activities in flight at stop, at most
    settle_s: float = 15.0  # commands final and revocations on cars, at most


class World:
    def __init__(self, settings: WorldSettings) -> None:
        self.settings = settings
        self.events = EventLog(settings.events)
        self.metrics = WorldMetrics.create()
        self.tally = HttpTally(self.metrics)
        self.rng = random.Random(settings.seed)  # noqa: S311 — jitter and choices, not secrets
        self.pace = Pace(self.rng)
        self.radio = SimulatedRadio(rng=random.Random(self.rng.random()))  # noqa: S311
        self.ledger = Ledger(self.events, self.metrics)
        self.changes = PredicateWaiters()  # notified on every car's link change and move
        self.cars: dict[str, WorldCar] = {}
        self.phones: list[WorldPhone] = []
        self.attackers: list[Attacker] = []
        self.warm = False
        self.setup_error: WorldError | None = None
        self.started = time.monotonic()
        traced = [self.tally.trace_config()]
        self.api = aiohttp.ClientSession(
            settings.phones_url, timeout=API_TIMEOUT, trace_configs=traced
        )
        self.http = aiohttp.ClientSession(  # the phone clients': each sets its own deadlines
            connector=aiohttp.TCPConnector(limit=0), trace_configs=traced
        )
        self._ticker: asyncio.Task[None] | None = None
        self._work: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[dict[str, Any]] | None = None
        self._set_up_done = asyncio.Event()
        self._halt = asyncio.Event()

    # -- life ----------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Set up, work until ``stop()`` or the time bound, stop: the reconcile. A failed
        set-up raises WorldError."""
        self._starting = asyncio.create_task(self._start())
        try:
            async with asyncio.timeout(self.settings.max_seconds):
                await self._set_up_done.wait()
                if self.setup_error is not None:
                    raise self.setup_error
                await self._halt.wait()
        except TimeoutError:
            log.info("event=world_time_bound seconds=%s", self.settings.max_seconds)
        return await self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping is not None

    async def until_warm(self) -> None:
        """Until the world is warm; raises what failed the set-up, or WorldError if it stopped."""
        await self._set_up_done.wait()
        if self.setup_error is not None:
            raise self.setup_error
        if not self.warm:
            raise WorldError("the world stopped before it was warm")

    async def stop(self) -> dict[str, Any]:
        """Wind down and write the reconcile (once; later calls get the same answer)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop())
        return await asyncio.shield(self._stopping)

    async def close(self) -> None:
        """Stop the cars and let go of everything (after ``stop()``, or a failed set-up)."""
        self.pace.stop()
        tasks = [t for t in (self._ticker, self._starting, *self._work) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.gather(*(car.stop() for car in self.cars.values()))
        await self.api.close()
        await self.http.close()
        for phone in self.phones:
            phone.wallet.close()
        self.events.close()

    async def _start(self) -> None:
        try:
            await self._set_up()
        except WorldError as error:
            self.setup_error = error
        except TimeoutError:
            seconds = self.settings.setup_s
            self.setup_error = WorldError(f"set-up and warm-up took more than {seconds:g} s")
        except Exception as error:  # a bug, or what a keyserver did that set-up did not expect
            log.exception("event=world_set_up_failed")
            self.setup_error = WorldError(f"set-up failed: {error!r}")
        finally:
            self._set_up_done.set()

    async def _set_up(self) -> None:
        s = self.settings
        self._ticker = asyncio.create_task(self._tick())
        (s.state_dir / "phones").mkdir(parents=True, exist_ok=True)
        async with asyncio.timeout(s.setup_s):
            rest = Rest(self.api, deadline=time.monotonic() + s.setup_s)
            population = await set_up(
                rest, cars=s.cars, phones=s.phones, secret=s.provisioning_secret
            )
            self._populate(population)
            await self._warm_up()
        self.warm = True
        self.metrics.warm.set(1)
        self.events.emit("mark", text=f"world: warm ({s.cars} cars, {s.phones} phones)")
        # each kind of activity on its own loop: a hung listing does not hold up an unlock
        for phone in self.phones:
            for what, activity in phone_activities(self.scene, phone).items():
                # at the car, people keep their own pace: a surge is the apps' cloud traffic
                steady = what == "unlock"
                self._spawn(work(self.pace, {what: activity}, name=phone.name, surges=not steady))
        for attacker in self.attackers:
            activities = attacker_activities(self.scene, attacker)
            self._spawn(work(self.pace, activities, name=attacker.holder.name))

    async def _stop(self) -> dict[str, Any]:
        self._halt.set()
        self.pace.stop()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting])
        for car in self.cars.values():
            car.failpoint = None  # no kill while the books are closed
        busy = [t for t in self._work if not t.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.settings.wind_down_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await asyncio.gather(*(car.recovered() for car in self.cars.values()))
        await self.ledger.settle(self.api, self.cars, seconds=self.settings.settle_s)
        reconcile = await self.ledger.reconcile(self.api, self.cars)
        self.events.emit("reconcile", **reconcile)
        return reconcile

    # -- set-up ----------------------------------------------------------------------------------

    def _populate(self, population: Population) -> None:
        s = self.settings
        for vin in population.vins:
            path = write_factory_state(
                vin, population.car_keys[vin], root=s.root, trust_update=population.trust_update,
                cars_url=s.cars_url, state_dir=s.state_dir,
            )  # fmt: skip
            self.cars[vin] = car = WorldCar(
                vin, path, events=self.events, metrics=self.metrics, tally=self.tally,
                policy=s.reconnect, rng=random.Random(self.rng.random()),  # noqa: S311
                notify=self.changes.notify, radio=self.radio,
            )  # fmt: skip
            car.boot()
        mallory = population.mallory
        self.ledger.owners = {v: population.owner_of[v].person.bearer for v in population.vins}
        for vin, key_id, status in population.revoked:
            token = read_token(token_bytes(mallory["revoked"].keys[vin]))
            self.ledger.revocation(vin, key_id, token, status)
        wallets, http = s.state_dir / "phones", self.http
        self.phones = [
            make_phone(h, self.radio, base_url=s.phones_url, http=http, policy=s.client,
                       wallet_dir=wallets)
            for h in population.phones
        ]  # fmt: skip
        foreign = token_bytes(mallory["foreign"].keys[population.decoy])
        self.attackers = [
            Attacker("revoked", mallory["revoked"], _tokens(mallory["revoked"])),
            Attacker("expired", mallory["expired"], _tokens(mallory["expired"])),
            Attacker("foreign", mallory["foreign"], dict.fromkeys(population.vins, foreign)),
            Attacker("replayed", mallory["replayed"], {}),
        ]
        self.scene = Scene(self.cars, self.radio, self.api, self.ledger, self.events, self.pace,
                           s.rates, population.visitor)  # fmt: skip

    async def _warm_up(self) -> None:
        await self.changes.wait_for(lambda: all(car.online for car in self.cars.values()))
        for vin, car in self.cars.items():
            await car.wait_until(_enforces_all(car, self.ledger.revoked[vin]))
        for phone in self.phones:  # each owner unlocks once over BLE: someone is listening
            for vin in phone.owned:
                await self._heard_unlock(phone, vin)
        tokens = self.attackers[1].tokens.values()
        dead_at = max(read_token(token).expires for token in tokens) + EXPIRED_MARGIN_S
        # the cars' own clocks (trusted time, moving with the monotonic clock) past their end
        ahead = max(dead_at - car.vehicle.now() for car in self.cars.values() if car.vehicle)
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def _heard_unlock(self, phone: WorldPhone, vin: str) -> None:
        for _ in range(CAPTURE_TRIES):
            await unlock_at_car(self.scene, phone, vin, ble_only=True)
            if self.cars[vin].capture is not None:
                return
        raise WorldError(f"warm-up failed: the owner of {vin} could not unlock it over BLE")

    # -- running -------------------------------------------------------------------------------

    def _spawn(self, activity: Coroutine[Any, Any, None]) -> None:
        self._work.append(asyncio.create_task(activity))

    async def _tick(self) -> None:
        """One ``http`` event per second, and the online gauge."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.events.emit("http", window_s=round(now - last, 3), counts=self.tally.take())
            last = now
            self.metrics.cars_online.set(sum(car.online for car in self.cars.values()))

    # -- control ---------------------------------------------------------------------------------

    def surge(self, factor: float, seconds: float) -> dict[str, Any]:
        self.pace.surge(factor, seconds)
        self.events.emit("mark", text=f"world: surge x{factor:g} for {seconds:g} s")
        return {"factor": factor, "seconds": seconds, "until": time.time() + seconds}

    def jump_clock(self, vin: str | None, jump_s: float) -> dict[str, Any]:
        cars = list(self.cars.values()) if vin is None else [self.car(vin)]
        for car in cars:
            car.wall_offset += jump_s
        self.events.emit("mark", text=f"world: wall clock of {vin or 'every car'} {jump_s:+g} s")
        return {"wall_offset_s": {car.vin: car.wall_offset for car in cars}}

    def arm_failpoint(self, vin: str, point: str | None) -> dict[str, Any]:
        if point is not None and point not in FAILPOINTS:
            known = ", ".join(sorted(FAILPOINTS))
            raise WorldError(f"unknown failpoint {point!r} (known: {known})")
        self.car(vin).failpoint = point
        return {"vin": vin, "point": point}

    def car(self, vin: str) -> WorldCar:
        car = self.cars.get(vin)
        if car is None:
            raise WorldError(f"no car {vin!r} in this world")
        return car


def _tokens(holder: Holder) -> dict[str, bytes]:
    return {vin: token_bytes(answer) for vin, answer in holder.keys.items()}


def _enforces_all(car: WorldCar, tokens: dict[str, KeyToken]) -> Callable[[], bool]:
    return lambda: set(car.enforced(tokens)) == set(tokens)
