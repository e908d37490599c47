"""The world's cars: the real vehicle agent pieces (file-backed ``AgentState``, ``Vehicle``,
``CloudLink``, ``VehicleBleEndpoint``), one set per car, plus what the drills need to see and do.

- Every actuator move is attributed and written as an ``actuation`` event: to the BLE attempt
  whose connection it was granted on (a context variable set in the connection's task, which the
  endpoint's actuation task inherits), or to the remote command the agent began (its state says
  which, ``WorldAgentState``). The actuator is the car's hardware: it outlives agent restarts.
- The car advertises on the world's ``SimulatedRadio`` while its agent (and so its BLE endpoint)
  runs; phones that find it connect over ``ble_fallback``'s simulated link. A tapped link
  records the unlock requests a phone sends, for the replay attacker.
- ``wall_offset`` jumps the wall clock the agent's cloud link signs with; decisions never use it.
- The ``after-execute`` failpoint kills the agent in-process right after the command is executed
  and durably recorded, before any acknowledgement: its sockets are shut down at once (as the
  kernel does for a dead process), its tasks are cancelled, then — after its supervisor's
  restart delay — its state is reopened from the SQLite file and a new agent connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ble_fallback.link import Link, LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.messages import UnlockRequest
from ble_fallback.radio import SimulatedRadio
from keycore import Action, KeyToken
from lab.events import EventLog
from lab.world.agent import (
    ATTEMPT,
    BOOT_ID,
    PRESS,
    Attempt,
    Sockets,
    TappedLink,
    WorldActuator,
    WorldAgentState,
)
from lab.world.metrics import HttpTally, WorldMetrics
from vehicle_agent.backoff import ReconnectPolicy
from vehicle_agent.ble import VehicleBleEndpoint
from vehicle_agent.channel import CloudLink, LinkState
from vehicle_agent.vehicle import Vehicle

log = logging.getLogger("lab.world.world")

AFTER_EXECUTE = "after-execute"
FAILPOINTS = frozenset({AFTER_EXECUTE})
RADIO = LinkConditions(latency=0.003, jitter=0.002)  # a few ms each way, as next to the car
SETTLE_S = 2.0  # a granted BLE action is performed within this (it takes microseconds)
RESTART_S = 1.0  # a killed agent is started again this long after (its supervisor's delay)


@dataclass
class Agent:
    """The running agent of one car: what a kill takes down."""

    state: WorldAgentState
    vehicle: Vehicle
    ble: VehicleBleEndpoint
    link: CloudLink
    task: asyncio.Task[None]
    http: aiohttp.ClientSession
    sockets: Sockets


class WorldCar:
    def __init__(
        self,
        vin: str,
        path: Path,
        *,
        events: EventLog,
        metrics: WorldMetrics,
        tally: HttpTally,
        policy: ReconnectPolicy,
        rng: random.Random,
        notify: Callable[[], None],
        radio: SimulatedRadio,
    ) -> None:
        self.vin = vin
        self.radio = radio
        self.path = path
        self.actuator = WorldActuator(self)
        self.command_moves: Counter[str] = Counter()  # remote command id -> actuator moves
        self.command_moved_at: dict[str, float] = {}  # remote command id -> its first move
        self.ble_moves = 0
        self.begun: set[str] = set()  # every command id the agent began, across restarts
        self.executing: str | None = None
        self.failpoint: str | None = None
        self.crashes = 0
        self.kills: list[str] = []  # the command ids a failpoint killed the agent after
        self.wall_offset = 0.0
        self.capture: UnlockRequest | None = None  # the last unlock request heard on the air
        self._events, self._metrics, self._tally = events, metrics, tally
        self._policy, self._rng, self._notify = policy, rng, notify
        self._agent: Agent | None = None
        self._ble_tasks: set[asyncio.Task[None]] = set()
        self._restarting: asyncio.Task[None] | None = None

    # -- running ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Start the agent from its state file: vehicle, BLE endpoint, cloud link."""
        state = WorldAgentState.open(self.path)
        assert isinstance(state, WorldAgentState)
        state.car = self
        vehicle = Vehicle.load(state, self.actuator, boot_id=BOOT_ID)
        sockets = Sockets()
        connector = aiohttp.TCPConnector(limit=0, socket_factory=sockets)
        http = aiohttp.ClientSession(
            connector=connector, trace_configs=[self._tally.trace_config()]
        )
        link = CloudLink(
            vehicle, policy=self._policy, http=http, wall=self.wall,
            on_state=lambda _: self._notify(),
        )  # fmt: skip
        task = asyncio.create_task(link.run(), name=f"world-car-{self.vin}")
        self._agent = Agent(state, vehicle, VehicleBleEndpoint(vehicle), link, task, http, sockets)
        self.radio.advertise(self.vin, self._accept)
        self._notify()

    def wall(self) -> float:
        return time.time() + self.wall_offset

    @property
    def alive(self) -> bool:
        return self._agent is not None

    @property
    def online(self) -> bool:
        return self._agent is not None and self._agent.link.state is LinkState.ONLINE

    @property
    def vehicle(self) -> Vehicle | None:
        return None if self._agent is None else self._agent.vehicle

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, re-checked after every frame of the car's link."""
        assert self._agent is not None
        await self._agent.link.wait_until(predicate)

    async def recovered(self) -> None:
        """Until a killed agent has been started again (at once if none was killed)."""
        if self._restarting is not None:
            await asyncio.wait([self._restarting])

    async def stop(self) -> None:
        await self.recovered()
        agent, self._agent = self._agent, None
        self.radio.silence(self.vin)
        await self._end_ble()
        if agent is not None:
            agent.task.cancel()
            await asyncio.wait([agent.task])
            _retrieve(agent.task)
            await agent.http.close()
            agent.state.close()

    # -- what the world sees -----------------------------------------------------------------

    def moved(self, action: Action) -> None:
        attempt = ATTEMPT.get()
        command_id = None
        now = time.monotonic()
        if attempt is not None:
            attempt.moved += 1
            attempt.moved_at = attempt.moved_at or now
            self.ble_moves += 1
            path = "ble"
        else:
            path, command_id = "cloud", self.executing
            if command_id is not None:
                self.command_moves[command_id] += 1
                self.command_moved_at.setdefault(command_id, now)
        self._events.emit(
            "actuation", vin=self.vin, command_id=command_id, action=action.name.lower(), path=path
        )
        self._metrics.actuations.labels(path).inc()
        self._notify()

    def executed(self) -> dict[str, int]:
        """Command id -> actuator moves, for each command the durable state says it executed
        and each one the actuator moved for (a kill may leave one "executing")."""
        state = None if self._agent is None else self._agent.state
        result = {}
        for command_id in sorted(self.begun | set(self.command_moves)):
            record = None if state is None else state.command(command_id)
            moves = self.command_moves[command_id]
            if moves or (record is not None and record.status == "executed"):
                result[command_id] = moves
        return result

    def enforced(self, tokens: dict[str, KeyToken]) -> list[str]:
        """The key ids (of ``tokens``: key id -> its latest token) this car denies as revoked."""
        vehicle = self.vehicle
        if vehicle is None:
            return []
        return sorted(k for k, token in tokens.items() if vehicle.revocations.is_revoked(token))

    # -- BLE ---------------------------------------------------------------------------------

    def connect(self, attempt: Attempt, *, tap: bool = False) -> Link | None:
        """A phone's connection to this car (None while its agent is down: no BLE either)."""
        agent = self._agent
        if agent is None:
            return None
        phone, car = SimulatedLink.pair(LinkPolicy(), RADIO, rng=self._rng)
        task = asyncio.get_running_loop().create_task(self._serve(agent.ble, car, attempt))
        self._ble_tasks.add(task)
        task.add_done_callback(self._ble_tasks.discard)
        return TappedLink(phone, self._heard) if tap else phone

    def _accept(self) -> Link | None:
        """A phone that found the car's advertisement connects (the press it is for is the
        world's bookkeeping, ``PRESS``)."""
        return self.connect(PRESS.get() or Attempt(), tap=True)  # someone nearby listens

    async def settled(self) -> None:
        """Until every action granted over BLE so far has been performed (bounded)."""
        if self._agent is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_S):
                    await self._agent.ble.settled()

    async def _serve(self, ble: VehicleBleEndpoint, link: Link, attempt: Attempt) -> None:
        ATTEMPT.set(attempt)  # this task's context, inherited by the actuation it grants
        try:
            await ble.serve(link)
        except Exception:
            log.exception("event=world_ble_serve_failed vin=%s", self.vin)

    def _heard(self, request: UnlockRequest) -> None:
        self.capture = request

    async def _end_ble(self) -> None:
        tasks = list(self._ble_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- the failpoint -----------------------------------------------------------------------

    def command_finished(self, command_id: str) -> None:
        self.executing = None
        if self.failpoint == AFTER_EXECUTE:
            self.failpoint = None
            self._kill(command_id)

    def _kill(self, command_id: str) -> None:
        """Die now, from inside the agent: no further frame leaves (the socket is closed before
        the agent could send its result) and its tasks are cancelled; restart afterwards."""
        agent, self._agent = self._agent, None
        assert agent is not None
        self.radio.silence(self.vin)  # its BLE endpoint died with it
        self.kills.append(command_id)
        self._events.emit(
            "mark", text=f"world: agent of {self.vin} killed after executing {command_id}",
            vin=self.vin, agent="killed",
        )  # fmt: skip
        agent.sockets.cut()
        agent.task.cancel()
        for task in self._ble_tasks:
            task.cancel()
        self._restarting = asyncio.get_running_loop().create_task(self._restart(agent))
        self._notify()

    async def _restart(self, agent: Agent) -> None:
        await asyncio.wait([agent.task])
        _retrieve(agent.task)
        await agent.http.close()
        await self._end_ble()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_S):
                await agent.ble.settled()
        agent.state.close()
        self.crashes += 1
        self._metrics.agent_crashes.inc()
        await asyncio.sleep(RESTART_S)
        self.boot()
        self._events.emit(
            "mark", text=f"world: agent of {self.vin} restarted", vin=self.vin, agent="restarted"
        )


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a finished task's outcome, so a failure is logged here and not at garbage time."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("event=world_agent_failed error=%r", error)
