"""The demo's stack on the embedded default: one keyserver process on SQLite, one car, two phones.

The keyserver is a real process (``lab.processes.keyserver.OwnKeyserver``: its own data
directory, issuer keys and provisioning secret, a fixed loopback port so it can come back on the
same one). The car
is the real vehicle agent in this process: file-backed ``AgentState``, ``Vehicle`` with a simulated
actuator, a ``CloudLink`` reaching the keyserver through the car's "cellular link" (a
``lab.proxy.faultproxy.FaultProxy``, so the car can lose its signal while the cloud is up), and a
``VehicleBleEndpoint`` advertising on a ``SimulatedRadio`` while it runs: a phone finds it only
when its person stands next to the car (``DemoStack.walk``), and connects over ble_fallback's
simulated link. The phones are the reference ``PhoneClient`` with a ``KeyWallet`` each, set up
through the REST API as people would; each reads its own clock (``DemoPhone.days_ahead`` moves
it on, for an owner who was offline for days).

The car's reconnect waits are the production policy scaled down (a second instead of a minute),
and the phones open a fresh connection per request, so a killed cloud shows as "connection
refused" — what a phone that was idle when the data centre failed sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from ble_fallback.link import Link, LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.radio import SimulatedRadio
from keycore import SoftwareSigner, TrustedClock, TrustStore
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver.auth import device_id_for
from lab.api import call
from lab.processes.base import free_port
from lab.processes.keyserver import OwnKeyserver
from lab.proxy.faultproxy import FaultProxy
from phone.client import ClientPolicy, PhoneClient
from phone.wallet import KeyWallet
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.backoff import CLOUD_LINK_BREAKER, ReconnectPolicy
from vehicle_agent.ble import VehicleBleEndpoint
from vehicle_agent.channel import CloudLink, LinkState
from vehicle_agent.state import AgentState, Identity
from vehicle_agent.vehicle import Vehicle

BOOT_ID = "demo-car"
DRAIN_LIMIT_S = 2.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: the production reconnect policy with its waits scaled down, so the demo takes seconds
DEMO_RECONNECT = ReconnectPolicy(
    first_jitter_s=0.1,
    multiplier_s=0.1,
    max_wait_s=1.0,
    attempt_timeout_s=3.0,
    flush_interval_s=1.0,
    breaker=replace(CLOUD_LINK_BREAKER, wait_in_open_s=0.5),
)
PHONE_POLICY = ClientPolicy(cloud_timeout_s=3.0, follow_deadline_s=10.0, poll_interval_s=0.05)
#: the simulated radio: a few milliseconds per chunk, as a BLE connection interval gives
RADIO = LinkConditions(latency=0.008, jitter=0.004)
SCAN_S = 0.5  # how long a phone looks for the car's advertisement at a press
DAY = 86_400


def demo_vin() -> str:
    """A valid VIN (17 characters, no I, O or Q) of the demo's prefix."""
    return "PKDEM" + "".join(secrets.choice("0123456789") for _ in range(12))


@dataclass
class DemoCar:
    """The car: its agent, its cellular link to the cloud and its Bluetooth side."""

    vin: str
    key: SoftwareSigner = field(repr=False)
    state: AgentState
    vehicle: Vehicle
    actuator: SimulatedActuator
    link: CloudLink
    cellular: FaultProxy
    ble: VehicleBleEndpoint
    serving: list[asyncio.Task[None]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 — radio noise

    def accept(self) -> Link:
        """A phone that found the car's advertisement connects: the car's BLE endpoint serves
        the connection until the phone leaves."""
        phone_end, car_end = SimulatedLink.pair(LinkPolicy(), RADIO, rng=self.rng)
        self.serving.append(asyncio.create_task(self.ble.serve(car_end)))
        return phone_end

    @property
    def online(self) -> bool:
        return self.link.state is LinkState.ONLINE

    async def until(self, predicate: Callable[[], bool], limit_s: float) -> None:
        """Wait (at most ``limit_s``) until ``predicate()`` holds, re-checked on every frame and
        state change of the car's cloud link."""
        async with asyncio.timeout(limit_s):
            await self.link.wait_until(predicate)

    async def close(self) -> None:
        await self.link.stop()
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)
        # the link's connection through the proxy ends on its own once the link has stopped;
        # closing the proxy before would cancel its handler mid-way (noisy on Python 3.11)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LIMIT_S
        while self.cellular.connections and loop.time() < deadline:  # noqa: ASYNC110 — no event
            await asyncio.sleep(0.01)
        await self.cellular.close()
        self.state.close()


@dataclass
class DemoPhone:
    """A person's phone: account, enrolled device key, session, wallet and the phone client."""

    name: str
    email: str
    device: SoftwareSigner = field(repr=False)
    device_id: str
    bearer: str = field(repr=False)
    wallet: KeyWallet
    client: PhoneClient
    key_id: str = ""  # of the key it holds on the car
    days_ahead: float = 0.0  # the phone's own clock, moved on (offline for days)

    def clock(self) -> float:
        return time.time() + self.days_ahead * DAY

    @property
    def signer(self) -> tuple[SoftwareSigner, str]:
        return self.device, self.device_id


@dataclass
class DemoStack:
    work: Path
    keyserver: OwnKeyserver
    api: aiohttp.ClientSession  # REST calls as people and the factory make them
    phones_http: aiohttp.ClientSession  # the phone clients' session
    car: DemoCar | None = None
    phones: dict[str, DemoPhone] = field(default_factory=dict)
    radio: SimulatedRadio = field(default_factory=lambda: SimulatedRadio(rng=random.Random(11)))  # noqa: S311

    @classmethod
    async def start(cls, work: Path) -> DemoStack:
        """The keyserver process (first start makes its SQLite store and issuer keys)."""
        keyserver = OwnKeyserver(work, secrets.token_urlsafe(24), free_port())
        await asyncio.to_thread(keyserver.start)
        api = aiohttp.ClientSession(base_url=keyserver.url, timeout=HTTP_TIMEOUT)
        phones_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return cls(work, keyserver, api, phones_http)

    @property
    def cloud_pid(self) -> int | None:
        server = self.keyserver.server
        return None if server is None or server.process is None else server.process.pid

    def cloud_up(self) -> bool:
        server = self.keyserver.server
        return server is not None and server.process is not None and server.process.poll() is None

    def kill_cloud(self) -> int:
        """SIGKILL the keyserver, as a crash would; its exit status."""
        server = self.keyserver.server
        assert server is not None
        assert server.process is not None
        server.process.kill()
        status = server.process.wait()
        self.keyserver.stop()  # collects the log copier; the process is gone already
        return status

    async def add_car(self) -> DemoCar:
        """Provision a car at the factory, give it its agent state, and connect it."""
        vin, key = demo_vin(), SoftwareSigner.generate()
        registration = {"vin": vin, "public_key": b64url_encode(point_bytes(key.public_key))}
        secret = self.keyserver.secret
        await call(self.api, "/v1/vehicles", registration, authorization=f"Provisioning {secret}")
        async with self.api.get("/v1/trust-update") as response:
            response.raise_for_status()
            update = await response.read()
        root = self.keyserver.root()
        (self.work / "car").mkdir(parents=True, exist_ok=True)
        state = AgentState.open(self.work / "car" / f"{vin}.db")
        cellular = FaultProxy("127.0.0.1", self.keyserver.port)
        try:
            await cellular.start()
            url = f"http://127.0.0.1:{cellular.port}"
            state.set_identity(Identity(vin, key, root, url))
            state.save_trust(TrustStore(root).apply(update))  # verified under the factory's root
            mono = time.monotonic()
            clock = TrustedClock.provisioned(now=time.time(), mono=mono, boot_id=BOOT_ID)
            state.save_clock(clock, mono=mono)
            actuator = SimulatedActuator()
            vehicle = Vehicle.load(state, actuator, boot_id=BOOT_ID)
        except BaseException:
            await cellular.close()
            state.close()
            raise
        link = CloudLink(vehicle, policy=DEMO_RECONNECT)
        link.start()
        ble = VehicleBleEndpoint(vehicle, retry_after=0.25)
        self.car = DemoCar(vin, key, state, vehicle, actuator, link, cellular, ble)
        self.radio.advertise(vin, self.car.accept)
        return self.car

    def walk(self, phone: DemoPhone, *, to_car: bool) -> None:
        """The phone's person walks up to the car, or away from it."""
        assert self.car is not None
        self.radio.move(phone.name, self.car.vin if to_car else None)

    async def reach(self, phone: DemoPhone, vin: str) -> Link | None:
        """The phone's radio: the car's advertisement within its scan, then a connection."""
        return await self.radio.reach(phone.name, vin, scan_s=SCAN_S)

    async def add_phone(self, name: str) -> DemoPhone:
        """Register an account, log in, enrol the phone's device key; an empty wallet."""
        email = f"{name}-{secrets.token_hex(4)}@example.org"
        password = secrets.token_urlsafe(18)
        credentials = {"email": email, "password": password}
        await call(self.api, "/v1/accounts", credentials)
        bearer = str((await call(self.api, "/v1/sessions", credentials))["token"])
        device = SoftwareSigner.generate()
        xy = point_bytes(device.public_key)
        device_id = device_id_for(xy)
        enrolment = {
            "name": f"{name}'s phone",
            "public_key": b64url_encode(xy),
            "password": password,
        }
        await call(self.api, "/v1/devices", enrolment, bearer=bearer, signer=(device, device_id))
        wallet = KeyWallet.open(self.work / f"{name}-wallet.db")
        assert self.car is not None
        phone: DemoPhone

        async def reach(vin: str) -> Link | None:
            return await self.reach(phone, vin)

        client = PhoneClient(
            base_url=self.keyserver.url, session_token=bearer, device=device,
            http=self.phones_http, wallet=wallet, reach_car=reach, policy=PHONE_POLICY,
            clock=lambda: phone.clock(),
        )  # fmt: skip
        phone = DemoPhone(name, email, device, device_id, bearer, wallet, client)
        self.phones[name] = phone
        return phone

    async def pair(self, owner: DemoPhone) -> dict[str, Any]:
        """The car shows a pairing code, the owner enters it, then takes an owner key."""
        car = self.car
        assert car is not None
        shown = await call(
            self.api, f"/v1/vehicles/{car.vin}/pairing-code", signer=(car.key, car.vin)
        )
        await call(
            self.api, f"/v1/vehicles/{car.vin}/owner", {"code": shown["code"]},
            bearer=owner.bearer, signer=owner.signer,
        )  # fmt: skip
        answer = await call(
            self.api, f"/v1/vehicles/{car.vin}/keys", {"device_id": owner.device_id},
            bearer=owner.bearer, signer=owner.signer,
        )  # fmt: skip
        return answer

    async def share(self, owner: DemoPhone, friend: DemoPhone, seconds: int) -> dict[str, Any]:
        """The owner invites the friend to a guest key valid ``seconds``; the friend accepts."""
        assert self.car is not None
        grant = {"role": "guest", "not_after": int(time.time()) + seconds}
        invitation = await call(
            self.api, f"/v1/vehicles/{self.car.vin}/invitations", grant,
            bearer=owner.bearer, signer=owner.signer,
        )  # fmt: skip
        return await call(
            self.api, f"/v1/invitations/{invitation['invitation_id']}/accept",
            {"device_id": friend.device_id}, bearer=friend.bearer, signer=friend.signer,
        )  # fmt: skip

    async def revoke(self, owner: DemoPhone, key_id: str) -> int:
        """The owner revokes a key; the revocation list's new sequence."""
        answer = await call(
            self.api, f"/v1/keys/{key_id}/revoke", bearer=owner.bearer, signer=owner.signer
        )
        return int(answer["revocation_sequence"])

    async def signed_list(self, phone: DemoPhone) -> tuple[int, bytes]:
        """The car's full signed revocation list as the phone fetches it to carry: (sequence,
        the document)."""
        assert self.car is not None
        headers = {"Authorization": f"Bearer {phone.bearer}"}
        async with self.api.get(
            f"/v1/vehicles/{self.car.vin}/revocations", headers=headers
        ) as response:
            response.raise_for_status()
            return int(response.headers["PK-Revocation-Sequence"]), await response.read()

    async def audit(self, owner: DemoPhone) -> list[dict[str, Any]]:
        """The car's audit trail as the keyserver holds it, read by the owner over REST."""
        assert self.car is not None
        answer = await call(
            self.api, f"/v1/vehicles/{self.car.vin}/audit", method="GET", bearer=owner.bearer
        )
        return list(answer["events"])

    async def close(self) -> None:
        """Stop everything this stack started; safe to call on a half-built stack."""
        with contextlib.suppress(Exception):
            if self.car is not None:
                await self.car.close()
        for phone in self.phones.values():
            phone.wallet.close()
        await self.phones_http.close()
        await self.api.close()
        await asyncio.to_thread(self.keyserver.stop)
