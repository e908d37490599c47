"""One fleet run: cars connect, a revocation and a remote command go to every car, the keyserver
restarts and the cars come back — with the figures of each step (``FleetReport``).

Without a keyserver URL the run starts its own (embedded SQLite store, a fresh data directory, a
fixed loopback port so a restart keeps it) and stops it afterwards. Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from deploy.api import call
from deploy.bench import percentile
from deploy.errors import LabError
from deploy.fleet import Fleet, SimulatedCar, rss_bytes
from deploy.processes import LOOPBACK, AppServer, free_port
from deploy.stack_spec import STAGING_RATE_LIMITS
from keyserver.keyring import KeyRingStore
from vehicle_agent.backoff import ReconnectPolicy
from vehicle_agent.channel import LinkState

BUCKET_S = 0.1  # the reconnect rate is counted in windows of this length
ROUND_CONCURRENCY = 32  # API calls in flight during a round
STEP_LIMIT_S = 300.0  # no step of a run may take longer: a hang guard, not a measurement


class FleetError(LabError, RuntimeError):
    """The run could not do what it was asked; one line for a person."""


@dataclass(frozen=True)
class FleetSettings:
    vehicles: int
    keyserver_url: str | None = None  # None: start an embedded keyserver of our own
    root_key: ec.EllipticCurvePublicKey | None = field(default=None, repr=False)
    provisioning_secret: str = field(default="", repr=False)
    first_jitter_s: float = ReconnectPolicy.first_jitter_s
    revoke: bool = True
    command: bool = True
    restart: bool = False  # only with a keyserver of our own
    state_dir: Path | None = None


@dataclass
class Spread:
    """How cars came back after a keyserver restart."""

    reconnected: int = 0
    first_s: float = 0.0  # from the restart's start (keyserver stopped) to the first reconnect
    last_s: float = 0.0
    peak_per_bucket: int = 0
    bucket_s: float = BUCKET_S
    peak_per_s: float = 0.0
    peak_share: float = 0.0  # peak_per_bucket / fleet size: 1.0 would be a synchronized burst


@dataclass
class FleetReport:
    vehicles: int
    online: int = 0
    setup_s: float = 0.0
    connect_s: float = 0.0  # from the first car started to all online
    memory_per_vehicle_kib: float = 0.0
    revocations_sent: int = 0
    revocations_reached: int = 0
    revocations_enforced: int = 0  # cars that then denied the revoked key (code "revoked")
    revocation_p50_ms: float = 0.0
    revocation_p99_ms: float = 0.0
    revocation_max_ms: float = 0.0
    revocation_after_answer_p50_ms: float = 0.0  # from the keyserver's 200 to the car
    revocation_after_answer_p99_ms: float = 0.0
    commands_sent: int = 0
    commands_executed: int = 0
    commands_doubled: int = 0
    command_p50_ms: float = 0.0
    command_p99_ms: float = 0.0
    restart: Spread | None = None
    first_jitter_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_fleet(settings: FleetSettings) -> FleetReport:
    """The whole run, on a fresh event loop."""
    if settings.vehicles < 1:
        raise FleetError("a fleet needs at least one vehicle")
    if settings.restart and settings.keyserver_url is not None:
        raise FleetError("--restart needs the fleet's own keyserver (no --keyserver URL)")
    with ExitStack() as stack:
        if settings.keyserver_url is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phonekey-fleet-")))
            own = stack.enter_context(_own_keyserver(work))
            return asyncio.run(_run(settings, own))
        return asyncio.run(_run(settings, None))


@dataclass
class OwnKeyserver:
    """A keyserver process of the run's own, restartable on the same port."""

    work: Path
    secret: str
    port: int
    server: AppServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEKEY_")}
        env.update(
            PHONEKEY_HOST=LOOPBACK,
            PHONEKEY_PORT=str(self.port),
            PHONEKEY_DATA_DIR=str(self.work / "keyserver"),
            PHONEKEY_PROVISIONING_SECRET=self.secret,
            **STAGING_RATE_LIMITS,  # one operator pairs, revokes and commands every car
            PHONEKEY_LOG_LEVEL="warning",
        )
        args = [sys.executable, "-m", "keyserver.cli", "serve"]
        self.server = AppServer(args, workdir=self.work / "keyserver", env=env, name="keyserver")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def root(self) -> ec.EllipticCurvePublicKey:
        return KeyRingStore(self.work / "keyserver" / "keys").load().root_key


@contextmanager
def _own_keyserver(work: Path) -> Iterator[OwnKeyserver]:
    own = OwnKeyserver(work, secrets.token_urlsafe(24), free_port())
    own.start()
    try:
        yield own
    finally:
        own.stop()


async def _run(settings: FleetSettings, own: OwnKeyserver | None) -> FleetReport:
    report = FleetReport(settings.vehicles, first_jitter_s=settings.first_jitter_s)
    if own is not None:
        url, root, secret = own.url, own.root(), own.secret
    else:
        assert settings.keyserver_url is not None
        if settings.root_key is None or not settings.provisioning_secret:
            raise FleetError("an outside keyserver needs --root-key and a provisioning secret")
        url, root, secret = settings.keyserver_url, settings.root_key, settings.provisioning_secret
    policy = ReconnectPolicy(first_jitter_s=settings.first_jitter_s)
    before = rss_bytes()
    started = time.monotonic()
    fleet = await _bounded(Fleet.create(url, root), "logging the operator in")
    try:
        await _bounded(
            fleet.add_cars(
                settings.vehicles,
                provisioning_secret=secret,
                policy=policy,
                state_dir=settings.state_dir,
            ),
            "provisioning the cars",
        )
        report.setup_s = round(time.monotonic() - started, 2)
        await _bounded(fleet.wait(lambda: fleet.online() == len(fleet.cars)), "connecting")
        report.connect_s = round(time.monotonic() - started, 2)
        report.online = fleet.online()
        report.memory_per_vehicle_kib = round((rss_bytes() - before) / 1024 / settings.vehicles, 1)
        if settings.revoke:
            await _revocation_round(fleet, report)
        if settings.command:
            await _command_round(fleet, report)
        if settings.restart and own is not None:
            report.restart = await _restart(fleet, own)
    finally:
        await fleet.close()
    return report


async def _bounded(step: Awaitable[Any], doing: str) -> Any:
    try:
        async with asyncio.timeout(STEP_LIMIT_S):
            return await step
    except TimeoutError:
        raise FleetError(f"{doing} took more than {STEP_LIMIT_S:.0f} s") from None


async def _each(fleet: Fleet, act: Callable[[SimulatedCar], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(ROUND_CONCURRENCY)

    async def one(car: SimulatedCar) -> None:
        async with gate:
            await act(car)

    await asyncio.gather(*(one(car) for car in fleet.cars))


async def _revocation_round(fleet: Fleet, report: FleetReport) -> None:
    """Revoke the operator's key on every car; time from the request (and from the keyserver's
    answer) to the car holding the new list, which then denies the key."""
    delays: list[float] = []
    after_answer: list[float] = []

    async def revoke(car: SimulatedCar) -> None:
        held = car.vehicle.revocations.sequence
        applied = asyncio.ensure_future(
            car.link.wait_until(lambda: car.vehicle.revocations.sequence > held)
        )
        sent = time.monotonic()
        await call(
            fleet.api, f"/v1/keys/{car.key_id}/revoke",
            bearer=fleet.operator.bearer, signer=fleet.operator.signer,
        )  # fmt: skip
        answered = time.monotonic()
        report.revocations_sent += 1
        await applied
        enforced = time.monotonic()
        delays.append((enforced - sent) * 1000)
        after_answer.append(max(0.0, enforced - answered) * 1000)
        report.revocations_enforced += car.unlock_as_operator(fleet.operator).code == "revoked"

    await _bounded(_each(fleet, revoke), "the revocation round")
    report.revocations_reached = len(delays)
    report.revocation_p50_ms = round(statistics.median(delays), 1)
    report.revocation_p99_ms = round(percentile(delays, 0.99), 1)
    report.revocation_max_ms = round(max(delays), 1)
    report.revocation_after_answer_p50_ms = round(statistics.median(after_answer), 1)
    report.revocation_after_answer_p99_ms = round(percentile(after_answer, 0.99), 1)


async def _command_round(fleet: Fleet, report: FleetReport) -> None:
    """A remote lock to every car; time from the request to the car's actuator moving."""
    delays: list[float] = []

    async def lock(car: SimulatedCar) -> None:
        moved = len(car.actuator.performed)
        done = asyncio.ensure_future(
            car.link.wait_until(lambda: len(car.actuator.performed) > moved)
        )
        sent = time.monotonic()
        body = {"action": "lock", "idempotency_key": secrets.token_urlsafe(12)}
        await call(
            fleet.api, f"/v1/vehicles/{car.vin}/commands", body,
            bearer=fleet.operator.bearer, signer=fleet.operator.signer,
        )  # fmt: skip
        report.commands_sent += 1
        await done
        delays.append((time.monotonic() - sent) * 1000)

    await _bounded(_each(fleet, lock), "the command round")
    for car in fleet.cars:  # each car moved exactly once for its one command
        moves = len(car.actuator.performed)
        report.commands_executed += moves >= 1
        report.commands_doubled += moves > 1
    report.command_p50_ms = round(statistics.median(delays), 1)
    report.command_p99_ms = round(percentile(delays, 0.99), 1)


async def _restart(fleet: Fleet, own: OwnKeyserver) -> Spread:
    """Stop the keyserver (SIGTERM: it closes every channel), start it again on the same port,
    and see how the cars come back: the reconnect timeline, in buckets of BUCKET_S."""
    down = time.monotonic()
    mark = len(fleet.timeline)
    await asyncio.to_thread(own.stop)
    await _bounded(fleet.wait(lambda: fleet.online() == 0), "the cars noticing the restart")
    await asyncio.to_thread(own.start)
    await _bounded(fleet.wait(lambda: fleet.online() == len(fleet.cars)), "reconnecting")
    back: dict[str, float] = {}
    for event in fleet.timeline[mark:]:
        if event.state is LinkState.ONLINE and event.vin not in back:
            back[event.vin] = event.at - down
    return spread(list(back.values()), fleet_size=len(fleet.cars))


def spread(offsets: list[float], *, fleet_size: int, bucket_s: float = BUCKET_S) -> Spread:
    """The reconnect figures from each car's reconnect time (seconds after the restart)."""
    if not offsets:
        return Spread()
    buckets: dict[int, int] = {}
    for offset in offsets:
        index = int(offset // bucket_s)
        buckets[index] = buckets.get(index, 0) + 1
    peak = max(buckets.values())
    return Spread(
        reconnected=len(offsets),
        first_s=round(min(offsets), 3),
        last_s=round(max(offsets), 3),
        peak_per_bucket=peak,
        bucket_s=bucket_s,
        peak_per_s=round(peak / bucket_s, 1),
        peak_share=round(peak / fleet_size, 4),
    )
