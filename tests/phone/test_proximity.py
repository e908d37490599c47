"""Proximity first, and never twice: at the car a command goes over Bluetooth; the cloud is asked
only when Bluetooth sent nothing — and never once the command may have run over Bluetooth.
Both orders of failure, a Result saying the car did nothing, and a key that lapsed offline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ble_fallback.link import Link, LinkConditions
from ble_fallback.messages import CarStatus
from ble_fallback.phone import BleUnlockResult
from keycore import Action, SoftwareSigner, TrustStore
from keyserver.app import create_app
from keyserver.config import build
from phone import proximity
from phone.client import ClientPolicy, PhoneClient
from phone.wallet import KeyWallet
from tests.keyserver.keys_harness import DAY, SUSPEND, VIN, Api, Clock, Person, token_bytes
from tests.phone.client_harness import BleCar, closed_port_url, stub_cloud
from tests.vehicle_agent.channel_harness import base_url, frames_in, hub_until, register, start_car

FAST = ClientPolicy(cloud_timeout_s=5.0, follow_deadline_s=10.0, poll_interval_s=0.02)
EXECUTED = {"command_id": "cmd-0000001", "status": "executed", "detail": ""}


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
async def key(api: Api, owner: Person, vehicle_key: SoftwareSigner) -> dict[str, Any]:
    return await api.owner_key(owner)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def wallet(tmp_path: Path) -> Iterator[KeyWallet]:
    with KeyWallet.open(tmp_path / "wallet.db") as opened:
        yield opened


def phone(
    api: Api, owner: Person, http: aiohttp.ClientSession, wallet: KeyWallet, car: BleCar, url: str
) -> PhoneClient:
    return PhoneClient(
        base_url=url, session_token=owner.session, device=owner.phone.key, http=http,
        wallet=wallet, reach_car=car.reach, clock=api.clock, policy=FAST,
    )  # fmt: skip


# never twice, both orders


async def test_a_command_sent_over_bluetooth_whose_result_is_lost_never_goes_to_the_cloud(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    aiohttp_server: Any,
) -> None:
    app, posts = stub_cloud(200, EXECUTED)  # a cloud that would say yes to anything
    server = await aiohttp_server(app)
    # the challenge (1 chunk) and the request (2 chunks) go through; the Result is lost
    car = BleCar(api.trust(), now=api.clock.now, conditions=LinkConditions(disconnect_after=3))
    client = phone(api, owner, http, wallet, car, str(server.make_url("")))
    client.remember(key, now=api.clock.now)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.ok, outcome.may_have_succeeded) == ("ble", False, True)
    assert outcome.reason.endswith("check the car before trying again")
    assert posts() == 0  # the cloud never heard of it
    assert car.connections == 1  # nor was it sent again over Bluetooth
    assert car.executed == [Action.UNLOCK]  # it ran, once
    await car.aclose()


async def test_bluetooth_failing_before_sending_hands_the_command_to_the_cloud_once(
    api: Api,
    owner: Person,
    vehicle_key: SoftwareSigner,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    tmp_path: Path,
) -> None:
    online = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        # every connection drops at the request's first chunk: nothing reaches the car
        ble = BleCar(api.trust(), now=api.clock.now, conditions=LinkConditions(disconnect_after=1))
        client = phone(api, owner, http, wallet, ble, base_url(api))
        client.remember(key, now=api.clock.now)

        outcome = await client.command(VIN, Action.UNLOCK)

        assert (outcome.path, outcome.ok, outcome.status) == ("cloud", True, "executed")
        assert outcome.fell_back
        assert outcome.reason == (
            "Bluetooth failed before sending (closed); unlocked through the cloud"
        )
        assert ble.connections == 1 + FAST.busy_retries  # safe failures are tried again
        assert ble.executed == []
        assert online.actuator.performed == [Action.UNLOCK]  # once, through the cloud
        await ble.aclose()
    finally:
        await online.link.stop()


@pytest.mark.parametrize("code", ["malformed", "busy", "late"])
async def test_a_result_saying_the_car_did_nothing_counts_as_nothing_sent(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
) -> None:
    answered: list[str] = []

    async def car_did_nothing(link: Link, *args: Any, **kwargs: Any) -> BleUnlockResult:
        answered.append(code)
        return BleUnlockResult(False, code, Action.UNLOCK, CarStatus(0, 0, 0, False), 1, 2)

    monkeypatch.setattr(proximity, "unlock_over_ble", car_did_nothing)
    app, posts = stub_cloud(200, EXECUTED)
    server = await aiohttp_server(app)
    car = BleCar(api.trust(), now=api.clock.now)
    client = phone(api, owner, http, wallet, car, str(server.make_url("")))
    client.remember(key, now=api.clock.now)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.ok, outcome.fell_back) == ("cloud", True, True)
    assert outcome.reason.startswith(f"the car did not act on the request ({code}); unlocked")
    assert answered == [code] * (1 + FAST.busy_retries)
    assert posts() == 1
    await car.aclose()


async def test_a_car_that_refuses_the_key_is_not_asked_again_through_the_cloud(
    api: Api,
    owner: Person,
    key: dict[str, Any],
    http: aiohttp.ClientSession,
    wallet: KeyWallet,
    aiohttp_server: Any,
) -> None:
    app, posts = stub_cloud(200, EXECUTED)
    server = await aiohttp_server(app)
    stranger = TrustStore(SoftwareSigner.generate().public_key)  # never trusted this issuer
    car = BleCar(stranger, now=api.clock.now)
    client = phone(api, owner, http, wallet, car, str(server.make_url("")))
    client.remember(key, now=api.clock.now)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.status, outcome.code) == ("ble", "denied", "unknown_key")
    assert posts() == 0  # the car said no: a refusal is an answer, not a failure to go around
    await car.aclose()


# a key that lapsed while the phone was offline


async def test_a_key_that_lapsed_offline_is_renewed_at_the_car_then_used_over_bluetooth(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    held_at = api.clock.now
    api.clock.advance(8 * DAY)  # a week and a day without a network: the token expired
    car = BleCar(api.trust(), now=api.clock.now)
    client = phone(api, owner, http, wallet, car, base_url(api))
    client.remember(key, now=held_at)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.ok) == ("ble", True)
    fresh = wallet.get(VIN)
    assert fresh is not None
    assert fresh.expires > api.clock.now
    assert car.executed == [Action.UNLOCK]
    await car.aclose()


async def test_a_key_that_lapsed_offline_with_no_network_says_what_to_do(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    held = wallet.put(str(key["key_id"]), token_bytes(key["token"]), now=api.clock.now)
    api.clock.advance(8 * DAY)
    car = BleCar(api.trust(), now=api.clock.now)
    client = phone(api, owner, http, wallet, car, closed_port_url())

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.status) == ("none", "not_sent")
    assert outcome.reason == (
        f"your key expired on {held.valid_until} while the phone was offline and could not be "
        "renewed (connection refused): connect the phone to the internet once to renew it; "
        "cloud unreachable (connection refused), so nothing was sent"
    )
    assert car.connections == 0  # an expired key is not even tried: the car would refuse it
    await car.aclose()


async def test_a_lapsed_key_the_keyserver_will_not_renew_says_to_ask_the_owner(
    api: Api, owner: Person, key: dict[str, Any], http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    held = wallet.put(str(key["key_id"]), token_bytes(key["token"]), now=api.clock.now)
    api.clock.advance(8 * DAY)
    reply = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert reply.status == 200
    car = BleCar(api.trust(), now=api.clock.now)
    client = phone(api, owner, http, wallet, car, base_url(api))

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.status) == ("cloud", "queued")  # no car on the channel here
    assert outcome.reason == (
        f"the car is not reachable from the cloud and your key expired on {held.valid_until} and "
        "the keyserver would not renew it (HTTP 403 key_suspended): ask the car's owner; the "
        "command stays queued and runs only if the car connects before it expires"
    )  # no Bluetooth hint: this phone holds no usable key
    assert car.connections == 0
    assert wallet.get(VIN) == held  # the refusal changed nothing
    await car.aclose()
