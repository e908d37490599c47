"""The world's book of what its phones did, written as events as it happens: unlock attempts,
remote commands, revocations — and at the end, the ``reconcile`` the drills check it against:
what each car's durable state and actuator say, and each command's final status as the keyserver
reports it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp

from keycore import KeyToken
from lab.api import ApiCallError, call
from lab.events import EventLog
from lab.world.cars import WorldCar
from lab.world.metrics import WorldMetrics
from lab.world.setup import ACCEPTED, gather_bounded
from phone.client import CommandOutcome
from resilience.waiting import PredicateWaiters

FINAL = frozenset({"executed", "failed", "expired"})
SETTLE_POLL_S = 0.5
MAX_DETAIL = 300  # characters of the client's sentence in a failed unlock's event
READ_TIMEOUT_S = 3.0  # one status read; a black-holed cloud must not hold the stop up
#: how the phone client words a 202 ``may_be_queued`` (phone/client.py, _cloud_command)
MAY_HAVE_QUEUED = "the cloud may have queued the command"


def command_status(outcome: CommandOutcome) -> tuple[str, bool]:
    """(status, accepted) of a remote command from what the phone client came to.

    ``accepted``: the keyserver answered that it took the command (it gave the command's id and
    did not say it may not have stored it). ``in_doubt``: an answer was lost after the request
    went out, or a taken command was not final by the client's deadline (or is queued for a car
    out of reach); ``may_be_queued``: the store failed while recording it."""
    if outcome.status in FINAL:
        return outcome.status, True
    if outcome.status == "refused":
        return "refused", False
    if outcome.path == "none" or outcome.status == "not_sent":
        return "not_sent", False
    if outcome.reason.startswith(MAY_HAVE_QUEUED):
        return "may_be_queued", False
    return "in_doubt", outcome.command_id is not None


@dataclass
class CommandSeen:
    vin: str
    phone: str
    bearer: str  # the session that sent it reads it back
    status: str
    accepted: bool


class Ledger:
    def __init__(self, events: EventLog, metrics: WorldMetrics) -> None:
        self.events = events
        self.metrics = metrics
        self.commands: dict[str, CommandSeen] = {}
        self.final: dict[str, str] = {}  # command id -> status last read from the keyserver
        self.revoked: dict[str, dict[str, KeyToken]] = defaultdict(dict)  # VIN -> key -> token
        self.accepted: dict[str, set[str]] = defaultdict(set)  # VIN -> key ids taken
        self.unlocks: dict[str, Counter[str]] = defaultdict(Counter)
        self.command_counts: Counter[str] = Counter()
        self.revocation_counts: Counter[str] = Counter()
        self.changed = PredicateWaiters()  # notified after every entry (tests wait on it)
        self.owners: dict[str, str] = {}  # VIN -> its owner's session: reads any command to it

    def unlock(
        self, phone: str, vin: str, key: str, path: str, ok: bool, started: float, reason: str,
        command_id: str | None = None, detail: str = "", *, ended: float | None = None,
        **more: Any,
    ) -> None:  # fmt: skip
        """An ``unlock`` event; ``detail``: the client's sentence, kept for failures only;
        ``ended``: when the car moved (``time.monotonic()``; now if not given); ``more``:
        further fields (an intent's ``presses`` and ``first`` press)."""
        latency = round((time.monotonic() if ended is None else ended) - started, 4)
        extra: dict[str, Any] = {} if ok or not detail else {"detail": detail[:MAX_DETAIL]}
        extra.update(more)
        self.events.emit(
            "unlock", phone=phone, vin=vin, key=key, path=path, ok=ok, latency_s=latency,
            reason=reason, command_id=command_id, **extra,
        )  # fmt: skip
        tally = self.unlocks[key]
        tally["attempts"] += 1
        tally["ok"] += ok
        tally[path] += 1
        self.metrics.unlocks.labels(key, path, "ok" if ok else "not_ok").inc()
        self.changed.notify()

    def command(
        self, phone: str, bearer: str, vin: str, action: str, outcome: CommandOutcome,
        started: float, *, emit: bool,
    ) -> None:  # fmt: skip
        """Note a command the phone client sent; ``emit``: a remote command from afar, written
        as a ``command`` event (an at-car unlock through the cloud is an ``unlock`` event)."""
        status, accepted = command_status(outcome)
        if outcome.command_id is not None:
            self.commands[outcome.command_id] = CommandSeen(vin, phone, bearer, status, accepted)
        if emit:
            self.events.emit(
                "command", phone=phone, vin=vin, action=action, command_id=outcome.command_id,
                path=outcome.path, status=status, accepted=accepted,
                latency_s=round(time.monotonic() - started, 4),
            )  # fmt: skip
            self.command_counts[status] += 1
            self.metrics.commands.labels(status, str(accepted).lower()).inc()
        self.changed.notify()

    def revocation(self, vin: str, key_id: str, token: KeyToken, status: int) -> None:
        accepted = status in ACCEPTED
        self.revoked[vin][key_id] = token
        if accepted:
            self.accepted[vin].add(key_id)
        self.events.emit("revocation", vin=vin, key_id=key_id, status=status, accepted=accepted)
        self.revocation_counts["accepted" if accepted else "refused"] += 1
        self.metrics.revocations.labels(str(accepted).lower()).inc()
        self.changed.notify()

    def counts(self) -> dict[str, Any]:
        return {
            "unlocks": {key: dict(tally) for key, tally in self.unlocks.items()},
            "commands": dict(self.command_counts),
            "revocations": dict(self.revocation_counts),
        }

    # -- the end -----------------------------------------------------------------------------

    def converged(self, cars: dict[str, WorldCar]) -> bool:
        """Every accepted command final, and every online car enforcing the revocations the
        keyserver took for it."""
        if any(s.accepted and self.final.get(c) not in FINAL for c, s in self.commands.items()):
            return False
        return all(
            self.accepted[vin] <= set(car.enforced(self.revoked[vin]))
            for vin, car in cars.items()
            if car.online
        )

    def left_behind(self) -> list[str]:
        """Accepted commands the phones stopped following before they were final (in doubt,
        queued for a car out of reach) and not read final from the keyserver since."""
        return [
            c
            for c, s in self.commands.items()
            if s.accepted and s.status not in FINAL and self.final.get(c) not in FINAL
        ]

    async def pending(self, api: aiohttp.ClientSession) -> list[str]:
        """``left_behind()`` after reading each one's status from the keyserver again."""
        await self.read(api, self.left_behind())
        return self.left_behind()

    async def settle(
        self, api: aiohttp.ClientSession, cars: dict[str, WorldCar], *, seconds: float
    ) -> None:
        """Wait (bounded) for in-flight commands to be final and revocations to reach cars."""
        deadline = time.monotonic() + seconds
        while True:
            pending = [
                c for c, s in self.commands.items() if s.accepted and self.final.get(c) not in FINAL
            ]
            await self.read(api, pending)
            if self.converged(cars) or time.monotonic() >= deadline:
                return
            await asyncio.sleep(SETTLE_POLL_S)

    async def read(self, api: aiohttp.ClientSession, command_ids: list[str]) -> None:
        """Each command's status as the keyserver reports it to the phone that sent it."""

        async def one(command_id: str) -> None:
            seen = self.commands[command_id]
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    path = f"/v1/commands/{command_id}"
                    answer = await call(api, path, method="GET", bearer=seen.bearer)
                self.final[command_id] = str(answer.get("status"))
            except ApiCallError as error:
                self.final.setdefault(command_id, f"unreadable: HTTP {error.status}")
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.final.setdefault(command_id, "unreadable: no answer")

        await gather_bounded(one(command_id) for command_id in command_ids)

    async def reconcile(
        self, api: aiohttp.ClientSession, cars: dict[str, WorldCar]
    ) -> dict[str, Any]:
        """The ``reconcile`` event's fields, read now (cars still running). The commands are
        every one a phone got an id for, and every one a car executed that no phone heard of
        (its answer was lost): those are read with the car owner's session."""
        executed = {vin: car.executed() for vin, car in cars.items()}
        for vin, moves in executed.items():
            for command_id in moves.keys() - self.commands.keys():
                self.commands[command_id] = CommandSeen(vin, "", self.owners[vin], "unseen", False)
        await self.read(api, list(self.commands))
        return {
            "cars": {
                vin: {
                    "executed": executed[vin],
                    "revoked_keys": car.enforced(self.revoked[vin]),
                    "online": car.online,
                }
                for vin, car in cars.items()
            },
            "commands": {c: self.final.get(c, "unknown") for c in self.commands},
        }
