"""The world's people and keys, made through the keyserver's REST API as real users would.

Cars are provisioned by the factory and paired by their owners, who give their own phones owner
keys and share time-limited keys with friends (who accept them). Mallory, the attacker, ends up
with keys that must not open anything: one the owner revoked on each car, one per car that has
expired, and one valid key for a car parked elsewhere (the "decoy", never simulated), to try on
the others. A visitor account takes the keys owners share and revoke during the run.

A set-up call is retried only when the keyserver certainly did nothing: it refused to connect,
or answered 429/503 (after its Retry-After). Anything else fails the set-up with one line.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_decode, b64url_encode
from keycore.request_proof import HEADER, sign_request
from keyserver.auth import device_id_for
from lab.api import ApiCallError, call
from lab.errors import LabError

DAY = 86_400
FRIEND_SHARE_S = 3 * DAY  # a friend's key: time-limited, as a guest's always is
VISITOR_SHARE_S = DAY
EXPIRING_SHARE_S = 4  # mallory's soon-expired key: accepted at once, dead seconds later
CONCURRENCY = 8
RETRY_WAIT_S = (0.2, 5.0)  # first and longest wait between set-up attempts
_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"  # no I, O or Q
ATTACKS = ("revoked", "expired", "foreign", "replayed")
T = TypeVar("T")
ACCEPTED = (200, 202)  # a revocation applied, or journaled to be applied (accepted_pending)


class WorldError(LabError, RuntimeError):
    """The world could not be set up or given bad input; one line for a person."""


@dataclass
class Person:
    name: str
    email: str
    password: str = field(repr=False)
    bearer: str = field(default="", repr=False)


@dataclass(frozen=True)
class Device:
    signer: SoftwareSigner = field(repr=False)
    device_id: str

    @classmethod
    def generate(cls) -> Device:
        signer = SoftwareSigner.generate()
        return cls(signer, device_id_for(point_bytes(signer.public_key)))

    @property
    def proof(self) -> tuple[SoftwareSigner, str]:
        return self.signer, self.device_id


@dataclass
class Holder:
    """A phone on the keyserver: its person, device and key answers (VIN -> issue/accept)."""

    name: str
    person: Person
    device: Device
    owner: bool
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Population:
    trust_update: bytes
    vins: list[str]
    car_keys: dict[str, SoftwareSigner]
    owner_of: dict[str, Holder]
    phones: list[Holder]
    visitor: Holder
    mallory: dict[str, Holder]  # attack kind -> holder (no device used for "replayed")
    decoy: str
    revoked: list[tuple[str, str, int]] = field(default_factory=list)  # (VIN, key id, status)


def world_vins(count: int) -> tuple[list[str], str]:
    """``count`` VINs of this world and its decoy's: 17 characters, a run tag against reuse."""
    tag = "".join(secrets.choice(_VIN_ALPHABET) for _ in range(4))
    return [f"PKW{tag}{n:010d}" for n in range(count)], f"PKW{tag}9999999999"


def token_bytes(answer: dict[str, Any]) -> bytes:
    text = str(answer["token"])
    return b64url_decode(text)


class Rest:
    """Set-up calls, retried while the keyserver certainly did nothing, until ``deadline``."""

    def __init__(self, api: aiohttp.ClientSession, *, deadline: float) -> None:
        self.api = api
        self.deadline = deadline  # time.monotonic()

    async def __call__(
        self, path: str, body: dict[str, Any] | None = None, *, method: str = "POST",
        person: Person | None = None, device: Device | None = None,
        signer: tuple[SoftwareSigner, str] | None = None, authorization: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        bearer = None if person is None else person.bearer
        signer = device.proof if device is not None else signer
        return await self._retrying(method, path, lambda: call(
            self.api, path, body, method=method, bearer=bearer, signer=signer,
            authorization=authorization,
        ))  # fmt: skip

    async def document(self, path: str) -> bytes:
        """A signed document's bytes (``GET``; not JSON)."""

        async def fetch() -> bytes:
            async with self.api.get(path) as response:
                data = await response.read()
                if response.status != 200:
                    raise ApiCallError("GET", path, response.status, data)
                return data

        return await self._retrying("GET", path, fetch)

    async def _retrying(self, method: str, path: str, attempt: Callable[[], Awaitable[T]]) -> T:
        wait = RETRY_WAIT_S[0]
        while True:
            try:
                return await attempt()
            except ApiCallError as error:
                if error.status not in (429, 503):
                    raise WorldError(f"set-up failed: {error}") from None
                pause = error.retry_after if error.retry_after is not None else wait
                problem: Exception = error
            except aiohttp.ClientConnectorError as error:  # nothing was sent
                pause, problem = wait, error
            except (aiohttp.ClientError, TimeoutError) as error:
                raise WorldError(f"set-up failed: {method} {path}: {error!r}") from None
            if time.monotonic() + pause > self.deadline:
                raise WorldError(f"set-up gave up: {method} {path}: {problem}")
            await asyncio.sleep(pause * random.uniform(1.0, 1.5))  # noqa: S311 — jitter
            wait = min(wait * 2, RETRY_WAIT_S[1])


async def gather_bounded(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Every step, at most CONCURRENCY at once (the keyserver's pace, not ours), in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(step: Awaitable[T]) -> T:
        async with gate:
            return await step

    return list(await asyncio.gather(*(one(step) for step in steps)))


async def sign_up(rest: Rest, person: Person) -> None:
    credentials = {"email": person.email, "password": person.password}
    await rest("/v1/accounts", credentials)
    person.bearer = str((await rest("/v1/sessions", credentials))["token"])


async def enroll(rest: Rest, person: Person, name: str) -> Device:
    device = Device.generate()
    body = {"name": name, "public_key": b64url_encode(point_bytes(device.signer.public_key)),
            "password": person.password}  # fmt: skip
    await rest("/v1/devices", body, person=person, device=device)
    return device


async def provision_and_pair(rest: Rest, vin: str, secret: str, owner: Holder) -> SoftwareSigner:
    key = SoftwareSigner.generate()
    registration = {"vin": vin, "public_key": b64url_encode(point_bytes(key.public_key))}
    await rest("/v1/vehicles", registration, authorization=f"Provisioning {secret}")
    shown = await rest(f"/v1/vehicles/{vin}/pairing-code", signer=(key, vin))
    body = {"code": shown["code"]}
    await rest(f"/v1/vehicles/{vin}/owner", body, person=owner.person, device=owner.device)
    return key


async def share(
    rest: Rest, vin: str, owner: Holder, holder: Holder, seconds: int
) -> dict[str, Any]:
    """The owner invites ``holder`` to a guest key for ``seconds``; the holder accepts it."""
    offer = {"role": "guest", "not_after": int(time.time()) + seconds}
    invitation = await rest(
        f"/v1/vehicles/{vin}/invitations", offer, person=owner.person, device=owner.device
    )
    answer = await rest(
        f"/v1/invitations/{invitation['invitation_id']}/accept",
        {"device_id": holder.device.device_id}, person=holder.person, device=holder.device,
    )  # fmt: skip
    holder.keys[vin] = answer
    return answer


async def revoke_key(api: aiohttp.ClientSession, key_id: str, owner: Holder) -> int:
    """One revocation asked by the owner: the HTTP status (0: no answer came). Asking again is
    safe: a revoked key is revoked again."""
    path = f"/v1/keys/{key_id}/revoke"
    proof = sign_request(owner.device.signer, device_id=owner.device.device_id, method="POST",
                         path=path, body=b"", timestamp=int(time.time()))  # fmt: skip
    headers = {"Authorization": f"Bearer {owner.person.bearer}", HEADER: proof}
    try:
        async with api.post(path, headers=headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0


async def set_up(rest: Rest, *, cars: int, phones: int, secret: str) -> Population:
    """Everyone and every key, as the module docstring says."""
    trust_update = await rest.document("/v1/trust-update")
    vins, decoy = world_vins(cars)
    tag = vins[0][3:7].lower()
    owners = min(cars, phones)

    def person(name: str) -> Person:
        return Person(name, f"{name}-{tag}@example.org", secrets.token_urlsafe(18))

    names = [f"owner-{i}" if i < owners else f"friend-{i - owners}" for i in range(phones)]
    people = [person(name) for name in names]
    visitor, mallory = person("visitor"), person("mallory")
    await gather_bounded(sign_up(rest, p) for p in [*people, visitor, mallory])
    devices = await gather_bounded(enroll(rest, p, f"{p.name}'s phone") for p in [*people, visitor])
    holders = [
        Holder(p.name, p, device, n < owners)
        for n, (p, device) in enumerate(zip(people, devices, strict=False))
    ]
    attackers = {"replayed": Holder("mallory-replayed", mallory, Device.generate(), False)}
    for kind in ATTACKS[:3]:  # one account, a device per kind (enrolment is rate-limited)
        device = await enroll(rest, mallory, kind)
        attackers[kind] = Holder(f"mallory-{kind}", mallory, device, False)
    everything = [*vins, decoy]
    owner_of = {vin: holders[n % owners] for n, vin in enumerate(everything)}
    keys = await gather_bounded(
        provision_and_pair(rest, v, secret, owner_of[v]) for v in everything
    )
    car_keys = dict(zip(vins, keys, strict=False))  # the decoy is parked elsewhere: not simulated
    await gather_bounded(_owner_key(rest, vin, owner_of[vin]) for vin in vins)
    friends = holders[owners:]
    await gather_bounded(
        share(rest, vins[n % cars], owner_of[vins[n % cars]], friend, FRIEND_SHARE_S)
        for n, friend in enumerate(friends)
    )
    visiting = Holder("visitor", visitor, devices[-1], False)
    population = Population(
        trust_update, vins, car_keys, owner_of, holders, visiting, attackers, decoy
    )
    await share(rest, decoy, owner_of[decoy], attackers["foreign"], VISITOR_SHARE_S)
    await gather_bounded(_mallorys_keys(rest, population, vin) for vin in vins)
    return population


async def _owner_key(rest: Rest, vin: str, owner: Holder) -> None:
    body = {"device_id": owner.device.device_id}
    answer = await rest(f"/v1/vehicles/{vin}/keys", body, person=owner.person, device=owner.device)
    owner.keys[vin] = answer


async def _mallorys_keys(rest: Rest, population: Population, vin: str) -> None:
    owner, mallory = population.owner_of[vin], population.mallory
    answer = await share(rest, vin, owner, mallory["revoked"], VISITOR_SHARE_S)
    key_id = str(answer["key_id"])
    status = await revoke_key(rest.api, key_id, owner)
    population.revoked.append((vin, key_id, status))
    if status not in ACCEPTED:
        raise WorldError(f"set-up failed: revoking {key_id} on {vin} answered {status}")
    for _ in range(3):  # accepted late (a slow keyserver), the invitation has ended: again
        try:
            await share(rest, vin, owner, mallory["expired"], EXPIRING_SHARE_S)
            return
        except WorldError as error:
            if "invitation_not_found" not in str(error):
                raise
    raise WorldError(f"set-up failed: no soon-expiring key could be accepted on {vin}")
