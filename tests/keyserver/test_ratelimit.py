"""Rate limits over HTTP (keyserver.ratelimit): on each state-changing route that had none, the
request after the limit is 429 ``rate_limited`` with ``Retry-After``, changes nothing in the store,
and is counted by route and scope; a revocation never waits on or is refused for the limiter's
store; every state-changing route declares a limit or why it has none."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keycore.request_proof import HEADER, sign_request
from keyserver import app as keyserver_app
from keyserver import auth, ratelimit
from keyserver.admission import Criticality
from keyserver.app import OPENAPI, REPLAYER, create_app
from keyserver.config import Config, build, load
from keyserver.degraded import Behaviour
from keyserver.models import KeyStatus, Session
from keyserver.routing import Route, RouteDeclarationError
from keyserver.store.guarded import READS
from lab.processes.keyserver import STAGING_RATE_LIMITS
from tests.keyserver.flaky_store import PROVISIONING_SECRET, FlakyStore
from tests.keyserver.keys_harness import (
    ACCEPT,
    INVITATIONS,
    KEYS,
    RESUME,
    REVOCATIONS,
    REVOKE,
    SUSPEND,
    VIN,
    Api,
    Clock,
    Person,
    Reply,
)
from tests.vehicle_agent.channel_harness import metric

LIMIT = 2
COMMANDS = "/v1/vehicles/{vin}/commands"
TRANSFER = "/v1/vehicles/{vin}/transfer"
LOGOUT = "/v1/sessions/current"
# what a refused request may still touch: the limiter's own count, the proof's nonce, and reads
ALLOWED_WHEN_REFUSED = READS | {"hit", "claim_nonce", "refresh_context"}


class RecordingStore(FlakyStore):
    """The flaky store, also noting the name of every operation called on it."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        call = super().__getattr__(name)

        async def noted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await call(*args, **kwargs)

        return noted


@pytest.fixture
async def recording(tmp_path: Path) -> Any:
    from keyserver.store.sqlite import SQLiteStore

    store = RecordingStore(await SQLiteStore.open(tmp_path / "keyserver.db"))
    yield store
    await store.close()


async def limited_api(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, store: Any, **settings: Any
) -> Api:
    clock.now -= clock.now % 60  # the start of a window: no test straddles two
    config = build(
        {"data_dir": str(tmp_path / "server"), "provisioning_secret": PROVISIONING_SECRET}
        | settings
    )
    app = create_app(config, store=store)
    return Api(app, await aiohttp_client(app), clock)


class Scene:
    """An owner with an owner key and a car, a driver with a shared key, a recipient."""

    async def build(self, api: Api) -> Scene:
        self.api = api
        self.owner = await api.person("owner")
        await api.vehicle(self.owner)
        self.owner_key = await api.owner_key(self.owner)
        self.driver = await api.person("driver")
        self.driver_key = await api.share(self.owner, self.driver)
        self.recipient = await api.person("recipient")
        self.invitation = await api.invite(self.owner)
        # sessions of the owner's own: a logout ends the one it is made with
        self.sessions = []
        for _ in range(LIMIT + 1):
            token, token_hash = auth.new_session_token()
            await api.store.put_session(Session(token_hash, self.owner.account_id, 2**40))
            self.sessions.append(Person("owner", self.owner.account_id, token, self.owner.phone))
        return self

    async def logout(self) -> Reply:
        return await self.api.call(self.sessions.pop(), "DELETE", LOGOUT, proof=False)


def _owner(method: str, template: str, body: Any = None, **params: Any) -> Any:
    def request(s: Scene) -> Awaitable[Reply]:
        values = {k: v(s) if callable(v) else v for k, v in params.items()}
        payload = body(s) if callable(body) else body
        return s.api.call(s.owner, method, template, payload, **values)

    return request


def _driver_key(s: Scene) -> str:
    return str(s.driver_key["key_id"])


_n = 0


def _command_body(_: Scene) -> dict[str, str]:
    global _n
    _n += 1
    return {"action": "lock", "idempotency_key": f"limit-{_n:08d}"}


ROUTES: dict[str, Callable[[Scene], Awaitable[Reply]]] = {
    REVOKE: _owner("POST", REVOKE, key_id=_driver_key),
    SUSPEND: _owner("POST", SUSPEND, key_id=_driver_key),
    RESUME: _owner("POST", RESUME, key_id=_driver_key),
    REVOCATIONS: _owner(
        "POST", REVOCATIONS, lambda s: {"device_id": s.driver.phone.device_id}, vin=VIN
    ),
    INVITATIONS: _owner("POST", INVITATIONS, {"role": "driver"}, vin=VIN),
    ACCEPT: lambda s: s.api.accept(s.recipient, s.invitation),
    KEYS: _owner("POST", KEYS, lambda s: {"device_id": s.owner.phone.device_id}, vin=VIN),
    COMMANDS: _owner("POST", COMMANDS, _command_body, vin=VIN),
    TRANSFER: _owner("POST", TRANSFER, {"to_email": "nobody@example.com"}, vin=VIN),
    LOGOUT: Scene.logout,
}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_the_request_after_the_limit_is_refused_and_changes_nothing(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore, route: str
) -> None:
    api = await limited_api(
        tmp_path, aiohttp_client, clock, recording, account_writes_per_minute=LIMIT
    )
    scene = await Scene().build(api)
    clock.advance(60)  # a fresh window: the scene's own requests are not counted in it
    request = ROUTES[route]
    for _ in range(LIMIT):
        reply = await request(scene)
        assert reply.status < 500, reply.data
        assert reply.code != "rate_limited", reply.data
    before = await api.state()
    recording.calls.clear()
    refused = await request(scene)
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert refused.headers["Retry-After"] == "60"  # the whole window is left: clock at its start
    assert set(recording.calls) <= ALLOWED_WHEN_REFUSED, recording.calls
    assert await api.state() == before
    assert metric(api, "keyserver_rate_limited_total", route=route, scope="account") == 1
    # refused on the account's count; the address's (600 a minute) is far off
    assert metric(api, "keyserver_rate_limited_total", scope="address") == 0


async def test_the_address_limit_counts_every_account_from_one_address(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore
) -> None:
    api = await limited_api(tmp_path, aiohttp_client, clock, recording, address_writes_per_minute=3)
    scene = await Scene().build(api)
    clock.advance(60)
    people = [scene.owner, scene.driver, scene.recipient]
    for who in people:  # three accounts, one address (the test client's)
        body = {"action": "lock", "idempotency_key": secrets.token_hex(8)}
        assert (await api.call(who, "POST", COMMANDS, body, vin=VIN)).status in (202, 404)
    body = {"action": "lock", "idempotency_key": secrets.token_hex(8)}
    refused = await api.call(scene.owner, "POST", COMMANDS, body, vin=VIN)
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert metric(api, "keyserver_rate_limited_total", route=COMMANDS, scope="address") == 1
    clock.advance(int(refused.headers["Retry-After"]))  # the next window counts afresh
    assert (await api.call(scene.owner, "POST", COMMANDS, body, vin=VIN)).status == 202


async def test_registration_is_limited_per_address_for_an_hour(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore
) -> None:
    api = await limited_api(tmp_path, aiohttp_client, clock, recording, registrations_per_hour=2)
    clock.now -= clock.now % 3600

    async def register(email: str) -> Any:
        body = {"email": email, "password": "correct horse battery"}
        return await api.client.post("/v1/accounts", json=body)

    assert (await register("a@example.com")).status == 201
    assert (await register("a@example.com")).status == 409  # taken: counted all the same
    recording.calls.clear()
    refused = await register("b@example.com")
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "3600"
    assert set(recording.calls) == {"hit"}  # not even asked whether the address is taken
    assert await api.store.account_by_email("b@example.com") is None
    assert metric(api, "keyserver_rate_limited_total", route="/v1/accounts", scope="address") == 1


async def test_provisioning_and_pairing_codes_are_limited(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore
) -> None:
    api = await limited_api(
        tmp_path, aiohttp_client, clock, recording,
        account_writes_per_minute=1, address_writes_per_minute=2,
    )  # fmt: skip
    car = SoftwareSigner.generate()
    body = {"vin": VIN, "public_key": b64url_encode(point_bytes(car.public_key))}
    factory = {"Authorization": f"Provisioning {PROVISIONING_SECRET}"}
    assert (await api.client.post("/v1/vehicles", json=body, headers=factory)).status == 201

    async def code() -> Any:
        path = f"/v1/vehicles/{VIN}/pairing-code"
        proof = sign_request(
            car, device_id=VIN, method="POST", path=path, body=b"", timestamp=clock.now
        )
        return await api.client.post(path, headers={HEADER: proof})

    assert (await code()).status == 201
    refused = await code()  # the car's own count: one per minute here
    assert refused.status == 429
    assert metric(api, "keyserver_rate_limited_total", scope="vehicle") == 1
    taken = await api.client.post("/v1/vehicles", json=body, headers=factory)
    assert taken.status == 409  # each route has its own count: the second provisioning here
    refused = await api.client.post("/v1/vehicles", json=body, headers=factory)
    assert refused.status == 429  # the factory's address: two per minute, this is the third
    assert refused.headers["Retry-After"] == "60"
    assert metric(api, "keyserver_rate_limited_total", route="/v1/vehicles") == 1


# the store down


async def test_a_revocation_with_the_store_down_is_journaled_not_refused(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore
) -> None:
    api = await limited_api(
        tmp_path, aiohttp_client, clock, recording, account_writes_per_minute=LIMIT
    )
    scene = await Scene().build(api)
    await api.call(scene.owner, "GET", KEYS, proof=False, vin=VIN)  # known here, as in an outage
    clock.advance(60)
    recording.fail()
    recording.calls.clear()
    reply = await api.call(scene.owner, "POST", REVOKE, key_id=_driver_key(scene))
    assert reply.status == 202, reply.data
    assert reply.body["status"] == "accepted_pending"
    assert "hit" not in recording.calls  # a revocation's limit never asks the store
    # the limit still holds, counted in this process
    reply = await api.call(scene.owner, "POST", SUSPEND, key_id=str(scene.owner_key["key_id"]))
    assert reply.status == 202
    repeat = await api.call(scene.owner, "POST", REVOKE, key_id=_driver_key(scene))
    assert repeat.status in (200, 202)  # a repeat: already revoked, as far as this process knows
    refused = await api.call(scene.owner, "POST", REVOKE, key_id=_driver_key(scene))
    assert (refused.status, refused.code) == (429, "rate_limited")
    recording.recover()
    await api.app[REPLAYER].replay_once()
    key = await recording.inner.key(_driver_key(scene))
    assert key is not None
    assert key.status is KeyStatus.REVOKED


async def test_a_shared_limit_counts_in_this_process_while_the_store_is_down(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, recording: RecordingStore
) -> None:
    api = await limited_api(
        tmp_path, aiohttp_client, clock, recording, account_writes_per_minute=LIMIT
    )
    scene = await Scene().build(api)
    clock.advance(60)
    invitations = [scene.invitation, *[await api.invite(scene.owner) for _ in range(LIMIT)]]
    await api.call(scene.recipient, "GET", "/v1/devices", proof=False)  # known here
    clock.advance(60)
    recording.fail()
    for invitation in invitations[:LIMIT]:  # journaled: the limiter's store down refuses nothing
        assert (await api.accept(scene.recipient, invitation)).status == 202
    fallbacks = metric(api, "keyserver_rate_limit_fallbacks_total", route=ACCEPT)
    assert fallbacks == 2 * LIMIT  # the account's count and the address's, for each request
    refused = await api.accept(scene.recipient, invitations[LIMIT])
    assert (refused.status, refused.code) == (429, "rate_limited")


# declarations


def test_every_state_changing_route_declares_a_limit_or_why_not(tmp_path: Path) -> None:
    app = create_app(build({"data_dir": str(tmp_path)}))
    declared = {r.key: r.rate_limit for r in keyserver_app.ROUTES if r.rate_limit is not None}
    doc = app[OPENAPI]
    for route in app.router.routes():
        if route.resource is None or route.method not in ratelimit.WRITE_METHODS:
            continue
        path = route.resource.canonical
        assert (route.method, path) in declared, path
        operation = doc["paths"][path][route.method.lower()]
        assert "x-rate-limit" in operation, path
        if isinstance(declared[route.method, path], ratelimit.RateLimit):
            response = operation["responses"]["429"]
            assert "rate_limited" in response["description"], path
            assert "Retry-After" in response["headers"], path
    assert declared["POST", REVOKE] == ratelimit.WITHDRAWALS  # counted in this process


def test_a_state_changing_route_without_a_declaration_stops_start_up() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/undeclared", handler)
    with pytest.raises(ratelimit.UndeclaredRateLimit, match="POST /v1/undeclared"):
        ratelimit.setup(app, Config(), metric_registry(), {}, store=lambda: None)


def test_a_write_cannot_be_declared_without_a_limit() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(RouteDeclarationError, match="POST /v1/undeclared"):
        Route(
            "POST", "/v1/undeclared", handler, "undeclared", "test", "a write",
            criticality=Criticality.SHEDDABLE, degraded=Behaviour.TRY_LATER,
            responses={"200": {"description": "done"}},
        )  # fmt: skip


def metric_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def test_a_limit_names_settings_per_minute_or_hour() -> None:
    with pytest.raises(ValueError, match="account"):
        ratelimit.RateLimit(account="max_in_flight")
    with pytest.raises(ValueError, match="address"):
        ratelimit.RateLimit(address="no_such_per_minute")


# this process's counts


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    hits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 600)), max_size=400),
)
def test_this_process_holds_at_most_capacity_counts_whatever_is_asked(
    capacity: int, hits: list[tuple[int, int]]
) -> None:
    counts = ratelimit.WindowCounts(capacity)
    now = 1_800_000_000
    for key, step in hits:  # many distinct keys (addresses, accounts), time moving forward
        now += step
        counts.hit(f"k{key}", now=now, window=60, limit=3)
        assert len(counts) <= capacity
    assert len(counts) == min(capacity, len({key for key, _ in hits}))


@given(others=st.integers(0, 99), limit=st.integers(1, 20))
def test_a_key_over_its_limit_is_refused_however_many_others_are_counted(
    others: int, limit: int
) -> None:
    counts = ratelimit.WindowCounts(100)
    now = 1_800_000_020
    answers = []
    for n in range(limit + 1):
        answers.append(counts.hit("attacker", now=now, window=60, limit=limit))
        for other in range(others):  # fewer than the capacity: the attacker's count is kept
            counts.hit(f"other{n}:{other}", now=now, window=60, limit=limit)
    assert answers == [True] * limit + [False]
    assert counts.hit("attacker", now=now + 40, window=60, limit=limit)  # the next window


def test_ten_times_the_capacity_in_addresses_takes_no_more_room_than_the_capacity() -> None:
    counts = ratelimit.WindowCounts(1024)
    for n in range(10 * 1024):
        counts.hit(f"rate:keys.revoke:address:{n:032x}", now=1_800_000_000, window=60, limit=1)
    assert len(counts) == 1024


def test_the_staging_limits_are_settings_the_keyserver_accepts() -> None:
    config = load(env=STAGING_RATE_LIMITS)  # a bad one would stop every staging keyserver
    assert config.address_writes_per_minute > Config().address_writes_per_minute
