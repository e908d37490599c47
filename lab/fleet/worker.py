"""One worker process of ``phonekey fleet``: its share of the cars on its own asyncio loop.

``python -m lab.fleet.worker`` reads JSON lines on stdin and answers each with one JSON line on
stdout (``lab.fleet.pool`` is the other end). The first line is the worker's ``WorkerConfig``;
then each line is a step (``op``): provision and connect, a revocation or command round, a
restart's mark and its per-car figures, the Redis restart's revocations. End of input, ``stop``
or a signal ends it; every step has its own time bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from keycore import SoftwareSigner
from keycore.cose import load_point
from keyserver.degraded import DEGRADED_HEADER
from keyserver.routes.keys import SEQUENCE_HEADER
from lab.api import ApiCallError, call
from lab.fleet.fleet import Fleet, Operator, SimulatedCar, retrying, rss_bytes, settled
from lab.fleet.report import CarRestart
from lab.fleet.watch import UpgradeWatch
from vehicle_agent.backoff import ReconnectPolicy
from vehicle_agent.channel import LinkState

MAX_LINE_BYTES = 64 * 1024 * 1024  # one answer carries a figure per car: a bound far above it
ARM_ATTEMPTS = 10  # a key withdrawn a moment ago is issued again after a short wait
RETRIES_AFTER_OUTAGE = 30  # a revocation the outage refused is asked again at most this often
RETRY_WAIT_MAX_S = 2.0
LEDGER_POLL_S = 0.1  # the ledger is asked again after this while its replay has not landed
MAX_LEDGER_READS = 3_000  # a bound: within_s ends the wait long before
MAX_SETTLE_ROUNDS = 20  # rounds of "every car against the ledger" (one or two in practice)


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    root: str  # base64url x||y
    secret: str
    bearer: str
    device_pem: str  # the fleet operator's simulated phone key (a throwaway of this run)
    device_id: str
    first: int  # VIN numbers first … first + count − 1
    count: int
    first_jitter_s: float
    setup_concurrency: int
    round_concurrency: int
    state_dir: str | None = None


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.watch = UpgradeWatch()
        self.fleet: Fleet | None = None
        self.rss_before = rss_bytes()
        self.mark_at = 0.0
        self.attempts_at_mark: dict[str, int] = {}
        self.throttled_at_mark: dict[str, int] = {}
        self.timeline_mark = 0
        self.held: dict[str, int] = {}  # revocation sequences before the Redis restart's revokes
        self.outage_answers: dict[str, str] = {}  # vin -> the answer to its outage revocation

    @property
    def cars(self) -> list[SimulatedCar]:
        assert self.fleet is not None
        return self.fleet.cars

    async def step(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        steps: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
            "setup": self.setup,
            "connect": self.connect,
            "revoke": self.revoke,
            "command": self.command,
            "mark": self.mark,
            "wait_offline": self.wait_offline,
            "wait_back": self.wait_back,
            "arm": self.arm,
            "revoke_in_outage": self.revoke_in_outage,
            "wait_current": self.wait_current,
        }
        if op not in steps:
            raise ValueError(f"unknown step {op!r}")
        return await steps[op](**args)

    async def setup(self) -> dict[str, Any]:
        c = self.config
        device = SoftwareSigner.from_pem(c.device_pem.encode())
        operator = Operator(c.bearer, device, c.device_id)
        root = load_point(base64.urlsafe_b64decode(c.root + "=" * (-len(c.root) % 4)))
        self.fleet = await Fleet.create(
            c.url, root, operator=operator, trace_configs=[self.watch.trace_config()]
        )
        await self.fleet.add_cars(
            c.count,
            provisioning_secret=c.secret,
            policy=ReconnectPolicy(first_jitter_s=c.first_jitter_s),
            state_dir=None if c.state_dir is None else Path(c.state_dir),
            first=c.first,
            concurrency=c.setup_concurrency,
        )
        return {"cars": len(self.cars)}

    async def connect(self) -> dict[str, Any]:
        fleet = self.fleet
        assert fleet is not None
        await fleet.wait(lambda: fleet.online() == len(fleet.cars))
        return {"online": fleet.online(), "rss_growth": rss_bytes() - self.rss_before}

    # rounds

    async def _each(self, act: Callable[[SimulatedCar], Awaitable[None]]) -> None:
        gate = asyncio.Semaphore(max(1, self.config.round_concurrency))

        async def one(car: SimulatedCar) -> None:
            async with gate:
                await act(car)

        await asyncio.gather(*(one(car) for car in self.cars))

    async def revoke(self) -> dict[str, Any]:
        """Revoke the operator's key on each car: from the request (and from the answer) to the
        car holding the new list; then whether the car denies the key."""
        fleet = self.fleet
        assert fleet is not None
        delays: list[float] = []
        after_answer: list[float] = []
        enforced = 0

        async def revoke(car: SimulatedCar) -> None:
            nonlocal enforced
            held = car.vehicle.revocations.sequence
            applied = asyncio.ensure_future(
                car.link.wait_until(lambda: car.vehicle.revocations.sequence > held)
            )
            sent = time.monotonic()
            await retrying(lambda: self._revoke_key(car))
            answered = time.monotonic()
            await applied
            done = time.monotonic()
            delays.append((done - sent) * 1000)
            after_answer.append(max(0.0, done - answered) * 1000)
            enforced += car.unlock_as_operator(fleet.operator).code == "revoked"

        await self._each(revoke)
        return {"delays_ms": delays, "after_answer_ms": after_answer, "enforced": enforced}

    async def command(self) -> dict[str, Any]:
        """A remote lock to each car: from the request to the car's actuator moving."""
        fleet = self.fleet
        assert fleet is not None
        delays: list[float] = []

        async def lock(car: SimulatedCar) -> None:
            moved = len(car.actuator.performed)
            done = asyncio.ensure_future(
                car.link.wait_until(lambda: len(car.actuator.performed) > moved)
            )
            sent = time.monotonic()
            body = {"action": "lock", "idempotency_key": secrets.token_urlsafe(12)}
            await retrying(
                lambda: call(
                    fleet.api, f"/v1/vehicles/{car.vin}/commands", body,
                    bearer=fleet.operator.bearer, signer=fleet.operator.signer,
                )
            )  # fmt: skip
            await done
            delays.append((time.monotonic() - sent) * 1000)

        await self._each(lock)
        moves = [len(car.actuator.performed) for car in self.cars]
        return {
            "delays_ms": delays,
            "executed": sum(m >= 1 for m in moves),
            "doubled": sum(m > 1 for m in moves),
        }

    async def _revoke_key(self, car: SimulatedCar) -> dict[str, Any]:
        """Revoke the operator's key on ``car``: the answer (2xx), or raises ApiCallError."""
        fleet = self.fleet
        assert fleet is not None
        return await call(
            fleet.api, f"/v1/keys/{car.key_id}/revoke",
            bearer=fleet.operator.bearer, signer=fleet.operator.signer,
        )  # fmt: skip

    # a keyserver restart

    async def mark(self) -> dict[str, Any]:
        """The restart begins now: what each car has done so far is the baseline."""
        fleet = self.fleet
        assert fleet is not None
        self.mark_at = time.monotonic()
        self.timeline_mark = len(fleet.timeline)
        self.attempts_at_mark = {car.vin: car.link.stats.attempts for car in self.cars}
        self.throttled_at_mark = {car.vin: car.link.throttle.rejected for car in self.cars}
        return {"at": self.mark_at}

    async def wait_offline(self) -> dict[str, Any]:
        fleet = self.fleet
        assert fleet is not None
        await fleet.wait(lambda: fleet.online() == 0)
        return {"online": 0}

    async def wait_back(self, listen_at: float, within_s: float) -> dict[str, Any]:
        """Until every car is back (or ``within_s`` passed): each car's figures (``CarRestart``)."""
        fleet = self.fleet
        assert fleet is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await fleet.wait(lambda: fleet.online() == len(fleet.cars))
        back: dict[str, float] = {}
        for event in fleet.timeline[self.timeline_mark :]:
            if event.state is LinkState.ONLINE and event.vin not in back:
                back[event.vin] = event.at - listen_at
        cars = []
        for car in self.cars:
            seen = self.watch.since(car.vin, self.mark_at)
            until = back.get(car.vin)
            answers: dict[str, int] = {}
            errors = down = 0
            for answer in seen:
                # a connection refused by the old server, seen late by a busy worker, is not an
                # error of the new one: a failure counts by when its request was sent
                if answer.at < listen_at or (answer.is_error and answer.sent_at < listen_at):
                    down += answer.failed
                    continue
                answers[answer.outcome] = answers.get(answer.outcome, 0) + 1
                errors += answer.is_error
            stats = car.link.stats
            cars.append(
                CarRestart(
                    vin=car.vin,
                    back_s=None if until is None else round(until, 4),
                    attempts=stats.attempts - self.attempts_at_mark.get(car.vin, 0),
                    answers=answers,
                    errors_after_listen=errors,
                    refused_while_down=down,
                    throttled_locally=car.link.throttle.rejected
                    - self.throttled_at_mark.get(car.vin, 0),
                    breaker=str(car.link.breaker.state.value),
                    last_error=stats.last_error,
                    retry_after_max_s=max((a.retry_after_s for a in seen), default=0.0),
                )
            )
        return {"cars": [asdict(c) for c in cars]}

    # a Redis restart: revocations accepted during the outage, and every car current again

    async def arm(self) -> dict[str, Any]:
        """Give the operator a live key on every car again (its last one was revoked by the
        revocation round), and note the revocation sequence each car holds."""
        fleet = self.fleet
        assert fleet is not None
        issued = 0

        async def arm(car: SimulatedCar) -> None:
            nonlocal issued
            for attempt in range(ARM_ATTEMPTS):
                if car.unlock_as_operator(fleet.operator).code != "revoked":
                    break
                try:
                    car.key_id, car.token = await fleet.issue_key(car.vin)
                    issued += 1
                except ApiCallError as error:  # 409 too_soon: a key withdrawn a moment ago
                    if error.status != 409 or attempt == ARM_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(min(error.retry_after or 1.0, 5.0))
            # the phone refreshes its token, as phones do: the keyserver then knows the key
            # (its last-known cache), and can accept its revocation while the store is down
            token = base64.urlsafe_b64encode(car.token).decode().rstrip("=")
            await settled(  # a refresh is safe to repeat: asked again when unanswered or 429
                lambda: call(
                    fleet.api, f"/v1/keys/{car.key_id}/token", {"token": token},
                    bearer=fleet.operator.bearer, signer=fleet.operator.signer,
                )
            )  # fmt: skip

        await self._each(arm)
        self.held = {car.vin: car.vehicle.revocations.sequence for car in self.cars}
        return {"issued": issued}

    async def revoke_in_outage(self) -> dict[str, Any]:
        """Revoke the operator's key on every car while the store is down: each answer (202
        accepted_pending expected), and how many cars got the list pushed during the outage."""
        answers: dict[str, int] = {}

        async def revoke(car: SimulatedCar) -> None:
            try:
                answer = await self._revoke_key(car)
                outcome = f"2xx {answer.get('status', '')}".strip()
            except ApiCallError as error:
                outcome = f"{error.status} {_error_code(str(error))}".strip()
            except (OSError, TimeoutError) as error:
                outcome = f"error {type(error).__name__}"
            self.outage_answers[car.vin] = outcome
            answers[outcome] = answers.get(outcome, 0) + 1

        await self._each(revoke)
        reached = sum(car.vehicle.revocations.sequence > self.held[car.vin] for car in self.cars)
        # what each car holds now is what it must move past once the store is back
        self.held = {car.vin: car.vehicle.revocations.sequence for car in self.cars}
        return {"answers": answers, "reached": reached}

    async def wait_current(self, listen_at: float, within_s: float) -> dict[str, Any]:
        """Until every car holds a list newer than it held after the outage's revocations and
        that list is the ledger's as the store reports it (the journal replayed), within
        ``within_s``: each car's time from Redis listening; then, per car, whether its sequence
        is the ledger's and it denies the key."""
        fleet = self.fleet
        assert fleet is not None
        reached: dict[str, float] = {}
        retried = 0

        async def one(car: SimulatedCar) -> None:
            nonlocal retried
            held = self.held[car.vin]
            if not self.outage_answers.get(car.vin, "").startswith("2xx"):
                for _ in range(RETRIES_AFTER_OUTAGE):  # refused during the outage: ask again
                    retried += 1
                    try:
                        await self._revoke_key(car)
                        break
                    except ApiCallError as error:
                        await asyncio.sleep(min(error.retry_after or 1.0, RETRY_WAIT_MAX_S))
                    except (OSError, TimeoutError):
                        await asyncio.sleep(RETRY_WAIT_MAX_S)
            await car.link.wait_until(lambda: car.vehicle.revocations.sequence > held)
            # Past the outage's list is not yet the ledger's: a list the keyserver pushed during
            # the outage may land after ``held`` was read, and the replay renumbers what it
            # journaled. Current means the sequence the ledger reports from the store.
            for _ in range(MAX_LEDGER_READS):
                ledger = await self._ledger_sequence(car)
                if ledger is not None and car.vehicle.revocations.sequence == ledger:
                    reached[car.vin] = time.monotonic() - listen_at
                    return
                if ledger is not None and car.vehicle.revocations.sequence < ledger:
                    await car.link.wait_until(
                        lambda: car.vehicle.revocations.sequence >= ledger  # noqa: B023
                    )
                else:  # no answer from the store yet, or its replay has not landed
                    await asyncio.sleep(LEDGER_POLL_S)

        async def settle() -> None:
            # A car that matched the ledger while its replay was half done (the journaled
            # withdrawal applied, the renumbering not yet) matched a sequence the ledger leaves:
            # every car is checked again once all have matched, until one round finds all current.
            behind = list(self.cars)
            for _ in range(MAX_SETTLE_ROUNDS):
                await asyncio.gather(*(one(car) for car in behind))
                ledgers = await asyncio.gather(*(self._ledger_sequence(c) for c in self.cars))
                behind = [
                    car
                    for car, ledger in zip(self.cars, ledgers, strict=True)
                    if ledger is None or car.vehicle.revocations.sequence != ledger
                ]
                if not behind:
                    return
                for car in behind:
                    reached.pop(car.vin, None)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await settle()
        cars = []
        for car in self.cars:
            ledger = await self._ledger_sequence(car)
            cars.append(
                {
                    "vin": car.vin,
                    "current_s": None if car.vin not in reached else round(reached[car.vin], 4),
                    "sequence": car.vehicle.revocations.sequence,
                    "ledger_sequence": ledger,
                    "enforced": car.unlock_as_operator(fleet.operator).code == "revoked",
                    "online": car.link.state is LinkState.ONLINE,
                    "last_error": car.link.stats.last_error,
                    "outage_answer": self.outage_answers.get(car.vin, ""),
                }
            )
        return {"cars": cars, "retried": retried}

    async def _ledger_sequence(self, car: SimulatedCar) -> int | None:
        """The ledger's sequence for ``car`` as the keyserver reports it (None: no answer)."""
        fleet = self.fleet
        assert fleet is not None
        headers = {"Authorization": f"Bearer {fleet.operator.bearer}"}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with fleet.api.get(
                f"/v1/vehicles/{car.vin}/revocations", headers=headers
            ) as response:
                if response.status != 200 or DEGRADED_HEADER in response.headers:
                    return None  # last known data, not the store's ledger
                return int(response.headers.get(SEQUENCE_HEADER, ""))
        return None

    async def close(self) -> None:
        if self.fleet is not None:
            await self.fleet.close()


def _error_code(message: str) -> str:
    """The error code in an ApiCallError's message (its answer's first bytes), or ""."""
    match = re.search(r'"code": ?"([a-z_]{1,64})"', message)
    return match.group(1) if match else ""


async def serve(reader: asyncio.StreamReader, write: Callable[[bytes], None]) -> None:
    """Read the config, then steps, answering each; until end of input or ``stop``."""
    line = await reader.readline()
    if not line:
        return
    worker = Worker(WorkerConfig(**json.loads(line)))
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = str(request.get("op", ""))
            if op == "stop":
                break
            try:
                async with asyncio.timeout(float(request.get("limit_s", 600.0)) + 30.0):
                    answer = {"ok": True, **await worker.step(op, request.get("args", {}))}
            except TimeoutError:
                answer = {"ok": False, "error": f"{op} did not finish in time"}
            except (ApiCallError, OSError, ValueError, aiohttp.ClientError) as error:
                answer = {"ok": False, "error": f"{op}: {error}"[:500]}
            write(json.dumps(answer).encode() + b"\n")
    finally:
        await worker.close()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):  # the conductor stops us: close the cars, go
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(reader, write)


def main() -> None:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)  # the cars' warnings: not here
    asyncio.run(_main())


if __name__ == "__main__":
    main()
