"""The phone client against a real keyserver on a loopback port, real cars on its channel and a
car's Bluetooth side over the simulated link: which path each command takes and why (proximity
first: Bluetooth at the car, the cloud for a car out of range), that a command that may have
succeeded is never sent again by another path, and that the wallet is kept fresh through the
real refresh route. The never-twice rule across both orders is in test_proximity.py."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import ble_fallback.phone
from ble_fallback.link import LinkConditions
from ble_fallback.phone import CarConnection
from keycore import Action, SoftwareSigner, TrustStore, prove
from keyserver.app import create_app
from keyserver.config import build
from phone.client import DEGRADED_HEADER, ClientPolicy, CommandOutcome, PhoneClient
from phone.wallet import KeyWallet
from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tests.keyserver.keys_harness import DAY, SUSPEND, VIN, Api, Clock, Person, token_bytes
from tests.phone.client_harness import (
    BleCar,
    LosingServer,
    closed_port_url,
    queued_view,
    stub_cloud,
)
from tests.vectors.ble import der
from tests.vehicle_agent.channel_harness import (
    GatedActuator,
    applied_results,
    base_url,
    frames_in,
    hub_until,
    register,
    start_car,
)

FAST = ClientPolicy(cloud_timeout_s=5.0, follow_deadline_s=10.0, poll_interval_s=0.02)


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path / "server")}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def owner(api: Api) -> Person:
    return await api.person("owner")


@pytest.fixture
async def vehicle_key(api: Api, owner: Person) -> SoftwareSigner:
    return await register(api, owner)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def wallet(tmp_path: Path) -> Iterator[KeyWallet]:
    with KeyWallet.open(tmp_path / "wallet.db") as opened:
        yield opened


@pytest.fixture
async def ble_car(api: Api) -> AsyncIterator[BleCar]:
    car = BleCar(api.trust(), now=api.clock.now)
    yield car
    await car.aclose()


@pytest.fixture
async def key(api: Api, owner: Person, vehicle_key: SoftwareSigner) -> dict[str, Any]:
    """The owner's key, issued through the real API (the phone was online then)."""
    return await api.owner_key(owner)


def phone(
    api: Api,
    owner: Person,
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    car: BleCar,
    *,
    url: str | None = None,
    **options: Any,
) -> PhoneClient:
    options.setdefault("policy", FAST)
    return PhoneClient(
        base_url=url or base_url(api),
        session_token=owner.session,
        device=owner.phone.key,
        http=http,
        wallet=wallet,
        reach_car=car.reach,
        clock=api.clock,
        **options,
    )


def filled(client: PhoneClient, api: Api, key: dict[str, Any]) -> PhoneClient:
    client.remember(key, now=api.clock.now)
    return client


# the cloud is down


@pytest.mark.parametrize("outage", ["closed port", "server stopped"])
async def test_with_the_cloud_down_from_the_start_the_phone_unlocks_over_bluetooth(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    outage: str,
) -> None:
    url = base_url(api)
    client = filled(phone(api, owner, http, wallet, ble_car), api, key)
    if outage == "closed port":
        client.base_url = closed_port_url()
    else:
        await api.client.close()  # the keyserver stops; its port refuses connections
        client.base_url = url

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.ok, outcome.status) == ("ble", True, "granted")
    assert not outcome.fell_back  # at the car Bluetooth is the first path, not a fallback
    assert not outcome.may_have_succeeded
    expires = wallet.entries()[0].valid_until
    assert outcome.reason == f"unlocked over Bluetooth with your key valid until {expires}"
    assert ble_car.executed == [Action.UNLOCK]
    assert ble_car.connections == 1


async def test_car_out_of_range_and_cloud_down_sends_nothing_and_says_why(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    away = BleCar(api.trust(), now=api.clock.now, in_range=False)
    client = filled(phone(api, owner, http, wallet, away, url=closed_port_url()), api, key)

    outcome = await client.command(VIN, "unlock")

    assert (outcome.path, outcome.ok, outcome.status) == ("none", False, "not_sent")
    assert not outcome.fell_back
    assert not outcome.may_have_succeeded
    assert outcome.reason == (
        "the car is not in Bluetooth range; cloud unreachable (connection refused), "
        "so nothing was sent"
    )
    assert away.connections == 0


async def test_no_key_in_the_wallet_and_no_cloud_says_what_to_do(
    api: Api, owner: Person, http: aiohttp.ClientSession, wallet: KeyWallet, ble_car: BleCar
) -> None:
    client = phone(api, owner, http, wallet, ble_car, url=closed_port_url())
    outcome = await client.command(VIN, Action.UNLOCK)
    assert (outcome.path, outcome.status) == ("none", "not_sent")
    assert outcome.reason == (
        "this phone holds no key for this car yet: open the app online once to fetch it (or ask "
        "the owner to share one); cloud unreachable (connection refused), so nothing was sent"
    )
    assert ble_car.connections == 0


async def test_an_open_breaker_skips_the_cloud_and_a_dead_cloud_opens_it(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    breaker = CircuitBreaker(
        "keyserver", BreakerConfig(window_size=2, minimum_calls=2, wait_in_open_s=60)
    )
    car = BleCar(api.trust(), now=api.clock.now, in_range=False)  # remote commands
    client = phone(api, owner, http, wallet, car, url=closed_port_url(), breaker=breaker)
    filled(client, api, key)
    reasons = [(await client.command(VIN, a)).reason for a in (Action.UNLOCK, Action.LOCK)]
    assert all("cloud unreachable (connection refused)" in r for r in reasons)
    assert breaker.state is BreakerState.OPEN

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.status) == ("none", "not_sent")
    assert outcome.reason == (
        "the car is not in Bluetooth range; cloud unreachable (circuit breaker open), "
        "so nothing was sent"
    )
    assert breaker.metrics.not_permitted == 1
    car.in_range = True  # the owner walks to the car: Bluetooth, whatever the breaker says
    near = await client.command(VIN, Action.UNLOCK)
    assert (near.path, near.ok) == ("ble", True)
    assert breaker.metrics.not_permitted == 1
    assert car.executed == [Action.UNLOCK]
    await car.aclose()


# the cloud is up


async def test_a_car_out_of_range_is_commanded_through_a_healthy_cloud(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    tmp_path: Path,
) -> None:
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        ble_car.in_range = False
        client = filled(phone(api, owner, http, wallet, ble_car), api, key)

        outcome = await client.command(VIN, Action.UNLOCK)

        assert (outcome.path, outcome.ok, outcome.status) == ("cloud", True, "executed")
        assert outcome.reason == "unlocked through the cloud"
        assert not outcome.fell_back
        assert outcome.command_id is not None
        assert car.actuator.performed == [Action.UNLOCK]
        assert ble_car.connections == 0
    finally:
        await car.link.stop()


async def test_a_car_in_range_is_commanded_over_bluetooth_with_a_healthy_cloud_unasked(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    tmp_path: Path,
) -> None:
    car = await start_car(api, tmp_path, vehicle_key)  # online: the cloud could do it too
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        client = filled(phone(api, owner, http, wallet, ble_car), api, key)

        outcome = await client.command(VIN, Action.UNLOCK)

        assert (outcome.path, outcome.ok, outcome.fell_back) == ("ble", True, False)
        assert outcome.command_id is None  # the cloud was never asked
        assert ble_car.executed == [Action.UNLOCK]
        assert car.actuator.performed == []
    finally:
        await car.link.stop()


async def test_a_queued_command_for_a_car_out_of_every_reach_stays_queued_and_says_so(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    away = BleCar(api.trust(), now=api.clock.now, in_range=False)
    client = filled(phone(api, owner, http, wallet, away), api, key)

    outcome = await client.command(VIN, Action.UNLOCK)

    # the cloud holds it for the car's next connection: it may yet run
    assert (outcome.path, outcome.status, outcome.may_have_succeeded) == ("cloud", "queued", True)
    expires = wallet.entries()[0].valid_until
    assert outcome.reason == (
        "the car is not reachable from the cloud and the car is not in Bluetooth range; "
        "the command stays queued and runs only if the car connects before it expires; "
        f"at the car, your phone key works over Bluetooth (valid until {expires})"
    )
    assert outcome.command_id is not None
    assert away.connections == 0


async def test_a_command_accepted_but_not_final_by_the_deadline_is_never_sent_over_bluetooth(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    tmp_path: Path,
) -> None:
    actuator = GatedActuator()  # the car has the command and is moving, slowly
    car = await start_car(api, tmp_path, vehicle_key, actuator=actuator)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        policy = ClientPolicy(follow_deadline_s=0.3, poll_interval_s=0.02)
        ble_car.in_range = False
        client = filled(phone(api, owner, http, wallet, ble_car, policy=policy), api, key)

        outcome = await client.command(VIN, Action.UNLOCK)

        assert (outcome.path, outcome.ok, outcome.may_have_succeeded) == ("cloud", False, True)
        assert outcome.status in ("queued", "delivered")
        assert outcome.reason.endswith("check the car before trying again")
        assert ble_car.connections == 0  # no second path for a command that may have run
        actuator.gate.set()
        await hub_until(api, lambda: applied_results(api) >= 1)
        assert actuator.performed == [Action.UNLOCK]  # it did run, once
    finally:
        await car.link.stop()


@pytest.mark.parametrize("mode", ["drop", "silent"])
async def test_a_command_whose_answer_is_lost_may_have_succeeded_and_is_not_resent(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    mode: str,
) -> None:
    async with LosingServer(mode) as cloud:
        policy = ClientPolicy(cloud_timeout_s=0.3)
        ble_car.in_range = False  # a remote command
        client = phone(api, owner, http, wallet, ble_car, url=cloud.url, policy=policy)
        filled(client, api, key)

        outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.may_have_succeeded, outcome.fell_back) == ("cloud", True, False)
    why = "dropped the connection" if mode == "drop" else "gave no answer within 0.3 s"
    assert outcome.reason == (
        f"the cloud {why} after the command was sent: "
        "it may have succeeded: check the car before trying again"
    )
    assert len(cloud.requests) == 1
    assert cloud.requests[0].startswith(b"POST /v1/vehicles/")
    assert ble_car.connections == 0

    # The user walks to the car, checks it, and asks again knowingly: over Bluetooth only.
    ble_car.in_range = True
    again = await client.over_ble(VIN, Action.UNLOCK)
    assert (again.path, again.ok) == ("ble", True)
    assert again.reason.startswith("unlocked over Bluetooth")
    assert len(cloud.requests) == 1
    assert ble_car.executed == [Action.UNLOCK]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (503, {"error": {"code": "store_unavailable"}}, None, "not sent"),
        (429, {"error": {"code": "overloaded"}}, None, "not sent"),
        (500, {"error": {"code": "internal"}}, None, "not sent"),
        (202, {"status": "not_sent"}, None, "not sent"),
        (202, queued_view(), {DEGRADED_HEADER: "store"}, "queued"),
        (202, {**queued_view(), "degraded": {"reason": "store"}}, None, "queued"),
        (202, queued_view(hint=True), None, "queued"),
        (503, {"error": {"code": "outcome_unknown"}}, None, "in doubt"),
        (504, {}, None, "in doubt"),
        (202, {"something": "else"}, None, "in doubt"),
        (202, {**queued_view(), "padding": "x" * 70_000}, None, "in doubt"),  # over the cap
        (403, {"error": {"code": "not_entitled"}}, None, "refused"),
    ],
)
async def test_each_cloud_answer_to_a_remote_command_says_what_happened(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    aiohttp_server: Any,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    expected: str,
) -> None:
    app, posts = stub_cloud(status, body, headers)
    server = await aiohttp_server(app)
    ble_car.in_range = False
    client = phone(api, owner, http, wallet, ble_car, url=str(server.make_url("")))
    filled(client, api, key)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert posts() == 1  # the cloud is never asked twice
    assert not outcome.ok
    assert ble_car.connections == 0
    if expected == "not sent":
        assert (outcome.path, outcome.status, outcome.may_have_succeeded) == (
            "none",
            "not_sent",
            False,
        )
    else:
        assert outcome.path == "cloud"
        assert outcome.may_have_succeeded is (expected in ("in doubt", "queued"))
    if expected == "queued":  # it may yet run when the car connects: the answer says so
        assert outcome.status == "queued"
        assert "at the car, your phone key works over Bluetooth" in outcome.reason
    if expected == "refused":
        assert (outcome.status, outcome.code) == ("refused", "not_entitled")


# over Bluetooth


async def test_a_bluetooth_result_lost_after_sending_is_not_retried(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    # the challenge (1 chunk) and the request (2 chunks) go through; the result is lost
    car = BleCar(api.trust(), now=api.clock.now, conditions=LinkConditions(disconnect_after=3))
    client = filled(phone(api, owner, http, wallet, car, url=closed_port_url()), api, key)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.status, outcome.may_have_succeeded) == ("ble", "unknown", True)
    assert outcome.reason == (
        "the Bluetooth link failed after the command was sent: "
        "it may have succeeded: check the car before trying again"
    )
    assert outcome.reason.endswith("check the car before trying again")
    assert car.connections == 1
    assert car.executed == [Action.UNLOCK]
    await car.aclose()


async def test_a_busy_car_is_asked_again_after_its_retry_after(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    car = BleCar(api.trust(), now=api.clock.now, max_connections=1, retry_after=0.25)
    other_phone = await car.reach(VIN)
    assert other_phone is not None
    await CarConnection.open(other_phone)  # holds the car's only connection
    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the other phone leaves while we wait
        waited.append(seconds)
        await other_phone.close()
        await car.serving[0]  # the car has let it go

    client = phone(api, owner, http, wallet, car, url=closed_port_url(), sleep=sleep)
    outcome = await filled(client, api, key).command(VIN, Action.LOCK)

    assert (outcome.path, outcome.ok) == ("ble", True)
    assert waited == [0.25]
    assert car.connections == 3  # the other phone, the busy answer, the retry
    assert car.executed == [Action.LOCK]
    await car.aclose()


async def test_a_request_the_car_cannot_read_counts_as_nothing_sent(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A phone app that signs with the platform's default DER encoding: the car answers
    ``malformed``, so the phone knows nothing ran — not "may have succeeded"."""

    def prove_der(*args: Any, **kwargs: Any) -> bytes:
        return der(prove(*args, **kwargs))

    monkeypatch.setattr(ble_fallback.phone, "prove", prove_der)
    client = filled(phone(api, owner, http, wallet, ble_car, url=closed_port_url()), api, key)

    outcome = await client.command(VIN, Action.UNLOCK)

    # nothing ran, so the press may go to the cloud (here unreachable): never "may have
    # succeeded" (phone.proximity's policy)
    assert (outcome.ok, outcome.status, outcome.may_have_succeeded) == (False, "not_sent", False)
    assert ble_car.executed == []
    assert {type(e).__name__ for e in ble_car.events} == {"RequestMalformed"}


async def test_a_car_that_refuses_the_key_says_why(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    stranger = TrustStore(SoftwareSigner.generate().public_key)  # never trusted this issuer
    car = BleCar(stranger, now=api.clock.now)
    client = filled(phone(api, owner, http, wallet, car, url=closed_port_url()), api, key)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.ok, outcome.status) == ("ble", False, "denied")
    assert outcome.code == "unknown_key"
    assert outcome.reason == "the car refused over Bluetooth (unknown_key)"
    assert car.executed == []
    await car.aclose()


async def test_bad_commands_are_refused_before_anything_is_sent(
    api: Api, owner: Person, http: aiohttp.ClientSession, wallet: KeyWallet, ble_car: BleCar
) -> None:
    client = phone(api, owner, http, wallet, ble_car)
    bad: list[tuple[str, Action | str]] = [
        ("NOT-A-VIN", "unlock"), (VIN, "fly"), (VIN, Action.MANAGE_KEYS),
    ]  # fmt: skip
    for vin, action in bad:
        with pytest.raises(ValueError):  # noqa: PT011 - three different messages
            await client.command(vin, action)
    assert ble_car.connections == 0


# the wallet, kept fresh through the real refresh route


async def test_tokens_are_refreshed_ahead_of_expiry_through_the_keyserver(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = filled(phone(api, owner, http, wallet, ble_car), api, key)
    first = wallet.entries()[0]
    assert first.expires == api.clock.now + 7 * DAY
    assert await client.refresh_wallet(api.clock.now) == []  # days of validity left

    api.clock.advance(4 * DAY)  # three days left: time to renew
    [report] = await client.refresh_wallet(api.clock.now)

    fresh = wallet.get(VIN)
    assert fresh is not None
    assert report.refreshed
    assert report.vin == VIN
    assert fresh.expires == api.clock.now + 7 * DAY == report.expires
    assert (fresh.refreshed_at, fresh.key_id) == (api.clock.now, key["key_id"])
    assert fresh.token != first.token
    for token in (first.token, fresh.token):
        for spelling in _spellings(token):
            assert spelling not in caplog.text
            assert spelling not in repr(fresh) + repr(wallet) + repr(client)


async def test_a_failed_refresh_keeps_the_old_token(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    ble_car: BleCar,
) -> None:
    client = filled(phone(api, owner, http, wallet, ble_car), api, key)
    held = wallet.get(VIN)
    api.clock.advance(5 * DAY)
    reply = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert reply.status == 200

    [refused] = await client.refresh_wallet(api.clock.now)
    client.base_url = closed_port_url()
    [unreachable] = await client.refresh_wallet(api.clock.now)

    assert not refused.refreshed
    assert refused.reason == "kept the old token: HTTP 403 key_suspended"
    assert not unreachable.refreshed
    assert unreachable.reason == "kept the old token: connection refused"
    assert wallet.get(VIN) == held


def _spellings(token: bytes) -> list[str]:
    return [
        token.hex(),
        base64.urlsafe_b64encode(token).decode().rstrip("="),
        base64.b64encode(token).decode(),
        repr(token)[2:40],
    ]


async def test_the_outcome_and_key_answers_never_carry_the_token(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    assert token_bytes(key["token"])  # the answer really held one
    car = BleCar(api.trust(), now=api.clock.now)
    client = filled(phone(api, owner, http, wallet, car, url=closed_port_url()), api, key)
    outcome: CommandOutcome = await client.command(VIN, Action.UNLOCK)
    assert key["token"] not in repr(outcome)
    await car.aclose()
