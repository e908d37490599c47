"""A harness for the key API tests: people with sessions and phones, a clock, a car's checks.

Accounts, sessions, devices and vehicles go straight into the app's store (their own routes are
tested elsewhere); every key operation goes through HTTP, signed like a phone signs, and every
answer is checked against the schema /openapi.json gives for it.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema_rs import Draft202012Validator  # schemathesis's own validator

from keycore import Action, InvalidToken, Reason, RevocationState, SoftwareSigner, verify
from keycore.cose import point_bytes
from keycore.encoding import b64url_decode
from keycore.request_proof import HEADER, sign_request
from keyserver import auth
from keyserver.app import KEYRING, OPENAPI, STORE
from keyserver.models import Account, Device, Session, Vehicle
from keyserver.store import Store

VIN = "5YJ3E1EA7KF000001"
OTHER_VIN = "1HGCM82633A004352"
DAY = 86_400
# settings that take the per-route rate limits (keyserver.ratelimit) out of a test's way: for
# tests that repeat one operation thousands of times from one account and address
NO_RATE_LIMITS = {"account_writes_per_minute": 10_000_000, "address_writes_per_minute": 10_000_000}

KEYS = "/v1/vehicles/{vin}/keys"
INVITATIONS = "/v1/vehicles/{vin}/invitations"
ACCEPT = "/v1/invitations/{invitation_id}/accept"
SUSPEND = "/v1/keys/{key_id}/suspend"
RESUME = "/v1/keys/{key_id}/resume"
REVOKE = "/v1/keys/{key_id}/revoke"
TOKEN = "/v1/keys/{key_id}/token"
REVOCATIONS = "/v1/vehicles/{vin}/revocations"

Client = TestClient[web.Request, web.Application]


class Clock:
    """The server's clock (``keyserver.clock.now``), moved by hand. A few seconds ahead of the
    wall clock, so the issuer key made at start-up is valid at every time the tests use."""

    def __init__(self) -> None:
        self.now = int(time.time()) + 5

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Phone:
    key: SoftwareSigner
    xy: bytes
    device_id: str


@dataclass(frozen=True)
class Person:
    name: str
    account_id: str
    session: str
    phone: Phone


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    data: bytes
    body: Any = field(default=None)

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"]["code"])
        return None


def token_bytes(text: str) -> bytes:
    return b64url_decode(text)


class Api:
    def __init__(self, app: web.Application, client: Client, clock: Clock) -> None:
        self.app = app
        self.client = client
        self.clock = clock

    @property
    def store(self) -> Store:
        return self.app[STORE]

    async def person(self, name: str, *, password_hash: str = "-") -> Person:
        account_id = secrets.token_hex(8)
        now = self.clock.now
        email = f"{name}@example.com"
        await self.store.create_account(Account(account_id, email, password_hash, now))
        token, token_hash = auth.new_session_token()
        await self.store.put_session(Session(token_hash, account_id, now + 30 * DAY))
        return Person(name, account_id, token, await self.phone(account_id))

    async def phone(self, account_id: str) -> Phone:
        key = SoftwareSigner.generate()
        xy = point_bytes(key.public_key)
        phone = Phone(key, xy, auth.device_id_for(xy))
        await self.store.add_device(
            Device(phone.device_id, account_id, xy, "phone", self.clock.now)
        )
        return phone

    async def vehicle(self, owner: Person, vin: str = VIN) -> None:
        car = point_bytes(SoftwareSigner.generate().public_key)
        await self.store.add_vehicle(Vehicle(vin, car, owner.account_id, self.clock.now))

    async def call(
        self,
        who: Person,
        method: str,
        template: str,
        body: object = None,
        *,
        phone: Phone | None = None,
        proof: bool = True,
        query: str = "",
        **params: str,
    ) -> Reply:
        """One request as ``who``, signed by ``phone`` (default: theirs) unless ``proof`` is
        False; the answer is checked against the documented response."""
        path = template.format(**params) + (f"?{query}" if query else "")
        raw = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {who.session}"}
        if raw:
            headers["Content-Type"] = "application/json"
        if proof:
            signer = phone or who.phone
            headers[HEADER] = sign_request(
                signer.key,
                device_id=signer.device_id,
                method=method,
                path=path,
                body=raw,
                timestamp=self.clock.now,
            )
        response = await self.client.request(method, path, data=raw or None, headers=headers)
        reply = Reply(response.status, dict(response.headers), await response.read())
        self._check_documented(reply, method.lower(), template)
        return reply

    def _check_documented(self, reply: Reply, method: str, template: str) -> None:
        doc = self.app[OPENAPI]
        described = doc["paths"][template][method]["responses"][str(reply.status)]
        for name, header in described.get("headers", {}).items():
            if header.get("required"):
                assert name in reply.headers, name
        content = described.get("content")
        if content is None:
            assert reply.data == b""
            return
        if "application/json" in content:
            reply.body = json.loads(reply.data)
            schema = content["application/json"]["schema"]
            Draft202012Validator({**schema, "components": doc["components"]}).validate(reply.body)
        else:
            assert reply.headers["Content-Type"].startswith("application/cbor")

    # the car's side

    def trust(self) -> Any:
        return self.app[KEYRING].trust_store()

    def car(self, *lists: bytes, vin: str = VIN) -> RevocationState:
        """A car's revocation state after applying ``lists`` in order."""
        state = RevocationState(vin)
        for data in lists:
            state = state.apply(data, trust=self.trust(), now=self.clock.now)
        return state

    def check(
        self,
        token: str,
        *,
        action: Action = Action.UNLOCK,
        vin: str = VIN,
        revocations: RevocationState | None = None,
        at: int | None = None,
    ) -> Reason | None:
        """None if a car with ``revocations`` honours ``token`` for ``action``, else why not."""
        try:
            verify(
                token_bytes(token),
                vin=vin,
                action=action,
                now=self.clock.now if at is None else at,
                trust=self.trust(),
                revocations=RevocationState(vin) if revocations is None else revocations,
            )
        except InvalidToken as error:
            return error.reason
        return None

    # common steps

    async def owner_key(self, owner: Person, phone: Phone | None = None) -> dict[str, Any]:
        device = phone or owner.phone
        reply = await self.call(
            owner, "POST", KEYS, {"device_id": device.device_id}, vin=VIN, phone=phone
        )
        assert reply.status == 201, reply.data
        return dict(reply.body)

    async def invite(self, owner: Person, role: str = "driver", **grant: object) -> str:
        if role == "guest":
            grant.setdefault("not_after", self.clock.now + 3 * DAY)
        reply = await self.call(owner, "POST", INVITATIONS, {"role": role, **grant}, vin=VIN)
        assert reply.status == 201, reply.data
        return str(reply.body["invitation_id"])

    async def accept(self, who: Person, invitation_id: str) -> Reply:
        return await self.call(
            who, "POST", ACCEPT, {"device_id": who.phone.device_id}, invitation_id=invitation_id
        )

    async def share(self, owner: Person, to: Person, role: str = "driver", **grant: object) -> Any:
        reply = await self.accept(to, await self.invite(owner, role, **grant))
        assert reply.status == 201, reply.data
        return reply.body

    async def revocation_list(self, who: Person, since: int = 0) -> Reply:
        return await self.call(who, "GET", REVOCATIONS, vin=VIN, query=f"since={since}")

    async def state(self) -> tuple[list[tuple[str, str]], int]:
        """Key statuses and the ledger sequence: what a refused request must leave alone."""
        keys = [(k.key_id, k.status.value) for k in await self.store.keys_of_vehicle(VIN)]
        sequence, _ = await self.store.revocations(VIN)
        return keys, sequence
