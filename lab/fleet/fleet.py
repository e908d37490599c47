"""``phonekey fleet``: simulated cars in one process against a keyserver, each with its own state.

Each car is the real agent — its own ``AgentState`` (in-memory SQLite unless a state directory is
given), a ``Vehicle`` with a simulated actuator and a ``CloudLink`` with the production reconnect
policy — provisioned over the REST API as a factory would, and paired to one fleet-operator
account that holds an owner key on every car. The links share one aiohttp session whose
connector has no connection limit. A worker process (``lab.fleet.worker``) holds one Fleet with
its share of the cars; ``lab.fleet.run`` drives the workers through rounds (revocations,
commands, a keyserver or Redis restart) and reports the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import (
    Action,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    UnlockDecision,
    UnlockRequest,
    prove,
)
from keycore.cose import point_bytes
from keycore.encoding import b64url_decode, b64url_encode
from keyserver.auth import device_id_for
from lab.api import ApiCallError, call
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.backoff import ReconnectPolicy
from vehicle_agent.channel import CloudLink, LinkState
from vehicle_agent.state import AgentState, Identity
from vehicle_agent.vehicle import Vehicle

BOOT_ID = "fleet-simulator"
SETUP_CONCURRENCY = 16  # cars provisioned at once: the keyserver's pace, not ours
MAX_TIMELINE = 1_000_000  # link events kept: a bound, far above any run's need
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
OVERLOAD_ATTEMPTS = 5  # a request refused for overload (429) is asked again this often
OVERLOAD_WAIT_MAX_S = 2.0
SETUP_ATTEMPTS = 8  # a provisioning step without an answer (timed out, 429) is asked again


async def retrying(
    request: Callable[[], Awaitable[dict[str, Any]]], attempts: int = OVERLOAD_ATTEMPTS
) -> dict[str, Any]:
    """``request()``, asked again after a 429 (overloaded, deadline passed) at its Retry-After:
    only for requests that are safe to repeat (a revocation; a command with its idempotency key;
    a new pairing code)."""
    for attempt in range(attempts):
        try:
            return await request()
        except ApiCallError as error:
            if error.status != 429 or attempt == attempts - 1:
                raise
            await asyncio.sleep(min(error.retry_after or 1.0, OVERLOAD_WAIT_MAX_S))
    raise AssertionError("unreachable")


async def settled(
    request: Callable[[], Awaitable[dict[str, Any]]],
    read_back: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
    *,
    attempts: int = SETUP_ATTEMPTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """A provisioning step until it is answered. An attempt that got no answer (timed out, cut)
    or a 429 is asked again after a wait — the attempt may have acted all the same. So when a
    *repeat* is refused (a 4xx: 409 "exists", 404 "code used"), ``read_back()`` says whether an
    earlier attempt did the work: its result, or None (the refusal stands and is raised)."""
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            return await request()
        except ApiCallError as error:
            if error.status == 429 and not last:
                await sleep(min(error.retry_after or 1.0, OVERLOAD_WAIT_MAX_S))
                continue
            if attempt > 0 and 400 <= error.status < 500 and read_back is not None:
                done = await read_back()
                if done is not None:
                    return done
            raise
        except (aiohttp.ClientError, OSError, TimeoutError):
            if last:
                raise
            await sleep(OVERLOAD_WAIT_MAX_S * random.random())  # noqa: S311 — jitter
    raise AssertionError("unreachable")


def fleet_vin(number: int) -> str:
    """The simulator's VINs: valid (17 characters, no I, O or Q) and easy to tell apart."""
    return f"PKFLT{number:012d}"


@dataclass
class Operator:
    """The fleet operator's account and phone: owner of every car in the fleet."""

    bearer: str
    device: SoftwareSigner
    device_id: str

    @property
    def signer(self) -> tuple[SoftwareSigner, str]:
        return self.device, self.device_id


@dataclass
class SimulatedCar:
    vin: str
    state: AgentState
    vehicle: Vehicle
    link: CloudLink
    actuator: SimulatedActuator
    key_id: str  # the operator's owner key on this car
    token: bytes = field(repr=False)  # its token, as the operator's phone holds it

    def unlock_as_operator(self, operator: Operator) -> UnlockDecision:
        """What the car decides, offline, for the operator's phone presenting its token."""
        challenge = self.vehicle.challenge()
        proof = prove(
            operator.device, challenge=challenge, vin=self.vin, action=Action.UNLOCK,
            token=self.token,
        )  # fmt: skip
        return self.vehicle.decide(UnlockRequest(self.token, Action.UNLOCK, challenge, proof))


@dataclass
class LinkEvent:
    at: float  # monotonic seconds
    vin: str
    state: LinkState


@dataclass
class Fleet:
    """The cars, the operator, and the timeline of every link state change."""

    base_url: str
    root: ec.EllipticCurvePublicKey = field(repr=False)  # installed at the factory
    http: aiohttp.ClientSession  # the links' shared session
    api: aiohttp.ClientSession  # the operator's and the factory's REST calls
    operator: Operator
    cars: list[SimulatedCar] = field(default_factory=list)
    timeline: list[LinkEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def create(
        cls,
        base_url: str,
        root: ec.EllipticCurvePublicKey,
        *,
        operator: Operator | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
    ) -> Fleet:
        """The sessions and the operator: ``operator`` (logged in elsewhere), or a new account,
        logged in, with an enrolled phone. ``trace_configs`` watch the cars' session."""
        connector = aiohttp.TCPConnector(limit=0)  # one connection per car, never queued
        http = aiohttp.ClientSession(connector=connector, trace_configs=trace_configs)
        api = aiohttp.ClientSession(base_url=base_url, timeout=HTTP_TIMEOUT)
        try:
            operator = operator or await create_operator(api)
        except BaseException:
            await http.close()
            await api.close()
            raise
        return cls(base_url, root, http, api, operator)

    def online(self) -> int:
        return sum(car.link.state is LinkState.ONLINE for car in self.cars)

    async def add_cars(
        self,
        count: int,
        *,
        provisioning_secret: str,
        policy: ReconnectPolicy,
        state_dir: Path | None = None,
        first: int = 0,
        concurrency: int = SETUP_CONCURRENCY,
    ) -> None:
        """Provision ``count`` more cars (VIN numbers from ``first``), pair each to the operator,
        start their links; ``concurrency`` cars at once."""
        async with self.api.get("/v1/trust-update") as response:
            response.raise_for_status()
            update = await response.read()
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(number: int) -> SimulatedCar:
            async with gate:
                return await self._provision(
                    fleet_vin(number), update, provisioning_secret, policy, state_dir
                )

        self.cars += await asyncio.gather(*(one(n) for n in range(first, first + count)))

    async def wait(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, re-checked on every link state change of any car."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        await asyncio.gather(*(car.link.stop() for car in self.cars))
        for car in self.cars:
            car.state.close()
        await self.http.close()
        await self.api.close()

    # one car

    async def _provision(
        self,
        vin: str,
        update: bytes,
        secret: str,
        policy: ReconnectPolicy,
        state_dir: Path | None,
    ) -> SimulatedCar:
        key = SoftwareSigner.generate()
        registration = {"vin": vin, "public_key": b64url_encode(point_bytes(key.public_key))}

        # Every step may time out after acting: repeated, and a repeat's refusal read back
        # (``settled``): 409 vehicle_exists is our own registration, and so on.
        async def registered() -> dict[str, Any]:
            return {"vin": vin}  # only a repeat asks: the VIN is this run's

        await settled(
            lambda: call(
                self.api, "/v1/vehicles", registration, authorization=f"Provisioning {secret}"
            ),
            registered,
        )
        await self._pair(vin, key)
        key_id, token = await self.issue_key(vin)
        path = Path(":memory:") if state_dir is None else state_dir / f"{vin}.db"
        state = AgentState.open(path)
        trust = TrustStore(self.root).apply(update)  # verified under the factory's root
        state.set_identity(Identity(vin, key, self.root, self.base_url))
        state.save_trust(trust)
        mono = time.monotonic()
        clock = TrustedClock.provisioned(now=time.time(), mono=mono, boot_id=BOOT_ID)
        state.save_clock(clock, mono=mono)
        actuator = SimulatedActuator()
        vehicle = Vehicle.load(state, actuator, boot_id=BOOT_ID)
        link = CloudLink(vehicle, policy=policy, http=self.http, on_state=self._recorder(vin))
        link.start()
        return SimulatedCar(vin, state, vehicle, link, actuator, key_id, token)

    async def _pair(self, vin: str, key: SoftwareSigner) -> None:
        """The operator becomes the car's owner with a code the car asks for. A pairing whose
        answer was lost may have used the code: the repeat's 404/409 is read back (the operator
        sees the car: it is paired); otherwise the car asks for a new code."""
        op = self.operator
        for attempt in range(SETUP_ATTEMPTS):
            shown = await settled(
                lambda: call(self.api, f"/v1/vehicles/{vin}/pairing-code", signer=(key, vin))
            )
            body = {"code": shown["code"]}
            path = f"/v1/vehicles/{vin}/owner"
            try:
                await settled(
                    partial(call, self.api, path, body, bearer=op.bearer, signer=op.signer),
                    lambda: self._owned(vin),
                )
                return
            except ApiCallError as error:
                # a code used up by an attempt that did not pair: the car shows a new one
                if error.status not in (404, 410) or attempt == SETUP_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _owned(self, vin: str) -> dict[str, Any] | None:
        """The car as its owner sees it, if the operator owns it (else None)."""
        try:
            return await call(
                self.api, f"/v1/vehicles/{vin}", method="GET", bearer=self.operator.bearer
            )
        except ApiCallError as error:
            if error.status == 404:
                return None
            raise

    async def issue_key(self, vin: str) -> tuple[str, bytes]:
        """An owner key on ``vin`` for the operator's phone: (key id, token). A repeat refused
        with 409 device_has_key finds the key an earlier attempt made, and a token for it."""
        body = {"device_id": self.operator.device_id}
        op = self.operator
        answer = await settled(
            lambda: call(
                self.api, f"/v1/vehicles/{vin}/keys", body, bearer=op.bearer, signer=op.signer
            ),
            lambda: self._issued_key(vin),
        )
        token = str(answer["token"])
        return str(answer["key_id"]), b64url_decode(token)

    async def _issued_key(self, vin: str) -> dict[str, Any] | None:
        """The operator's phone's active key on ``vin`` with a fresh token, if it has one."""
        op = self.operator
        listed = await call(self.api, f"/v1/vehicles/{vin}/keys", method="GET", bearer=op.bearer)
        for key in listed.get("keys", []):
            if key.get("device_id") == op.device_id and key.get("status") == "active":
                path = f"/v1/keys/{key['key_id']}/token"
                return await settled(
                    partial(call, self.api, path, bearer=op.bearer, signer=op.signer)
                )
        return None

    def _recorder(self, vin: str) -> Callable[[LinkState], None]:
        def record(state: LinkState) -> None:
            if len(self.timeline) < MAX_TIMELINE:
                self.timeline.append(LinkEvent(time.monotonic(), vin, state))
            self._changed.set()

        return record


async def create_operator(api: aiohttp.ClientSession) -> Operator:
    """A new fleet-operator account, logged in, with an enrolled (simulated) phone."""
    email = f"fleet-{secrets.token_hex(6)}@example.org"
    password = secrets.token_urlsafe(18)
    credentials = {"email": email, "password": password}
    await call(api, "/v1/accounts", credentials)
    bearer = str((await call(api, "/v1/sessions", credentials))["token"])
    device = SoftwareSigner.generate()
    xy = point_bytes(device.public_key)
    device_id = device_id_for(xy)
    enrolment = {"name": "fleet operator", "public_key": b64url_encode(xy), "password": password}
    await call(api, "/v1/devices", enrolment, bearer=bearer, signer=(device, device_id))
    return Operator(bearer, device, device_id)


def rss_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return 0
