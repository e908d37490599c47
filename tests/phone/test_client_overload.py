"""The phone client under overload (G6): it sends its deadline, honours Retry-After, throttles
itself while the cloud refuses (SRE adaptive throttling), keeps re-reads within its retry budget,
and takes a 429 ``deadline_exceeded`` to a command as "may have acted" — never as a licence to
unlock over Bluetooth as well."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ble_fallback.link import Link
from keycore import Action, SoftwareSigner
from phone.client import ClientPolicy, PhoneClient
from phone.wallet import KeyWallet
from resilience.overload import DEADLINE_HEADER, AdaptiveThrottle, RetryBudget
from tests.keyserver.keys_harness import VIN
from tests.phone.client_harness import queued_view

POLICY = ClientPolicy(cloud_timeout_s=2.0, follow_deadline_s=0.3, poll_interval_s=0.02)


class Cloud:
    """A stand-in keyserver: command POSTs get ``answer``; command reads get a 500."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.answer = (status, body, headers)
        self.posts: list[dict[str, str]] = []
        self.reads = 0

    def app(self) -> web.Application:
        async def post(request: web.Request) -> web.Response:
            self.posts.append(dict(request.headers))
            await request.read()
            status, body, headers = self.answer
            return web.json_response(body, status=status, headers=headers)

        async def read(request: web.Request) -> web.Response:
            self.reads += 1
            return web.json_response({"error": {"code": "internal"}}, status=500)

        app = web.Application()
        app.router.add_post("/v1/vehicles/{vin}/commands", post)
        app.router.add_get("/v1/commands/{command_id}", read)
        return app


async def out_of_range(vin: str) -> Link | None:
    return None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def wallet(tmp_path: Path) -> Iterator[KeyWallet]:
    with KeyWallet.open(tmp_path / "wallet.db") as opened:
        yield opened


async def phone_for(
    cloud: Cloud, aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet, **more: Any
) -> PhoneClient:
    server = await aiohttp_server(cloud.app())
    return PhoneClient(
        base_url=str(server.make_url("")),
        session_token="session",
        device=SoftwareSigner.generate(),
        http=http,
        wallet=wallet,
        reach_car=out_of_range,
        policy=POLICY,
        **more,
    )


OVERLOADED = {"error": {"code": "overloaded", "message": "retry later"}}


async def test_the_deadline_travels_and_retry_after_keeps_the_phone_away(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    cloud = Cloud(429, OVERLOADED, {"Retry-After": "30"})
    client = await phone_for(cloud, aiohttp_server, http, wallet)

    first = await client.command(VIN, Action.UNLOCK)
    second = await client.command(VIN, Action.UNLOCK)

    assert cloud.posts[0][DEADLINE_HEADER] == "2000"  # cloud_timeout_s
    assert len(cloud.posts) == 1  # the second waited out Retry-After locally
    assert (first.path, first.may_have_succeeded) == ("none", False)  # refused: safe to retry
    assert (second.path, second.may_have_succeeded) == ("none", False)
    assert "refused locally" in second.reason


async def test_the_throttle_refuses_locally_while_the_cloud_refuses(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    cloud = Cloud(429, OVERLOADED, {})  # no Retry-After: only the throttle holds the phone back
    # rng 0.5: P(reject) = refused/(requests+1) passes 1/2 after the second refusal; the clock
    # stands still, so the throttle's probe (one request per interval whatever P) never falls due
    throttle = AdaptiveThrottle(rng=lambda: 0.5, clock=lambda: 1000.0)
    client = await phone_for(cloud, aiohttp_server, http, wallet, throttle=throttle)

    outcomes = [await client.command(VIN, Action.UNLOCK) for _ in range(3)]

    assert len(cloud.posts) == 2
    assert "refused locally" in outcomes[2].reason
    assert not any(o.may_have_succeeded for o in outcomes)
    assert (throttle.requests, throttle.accepts) == (3, 0)  # a local refusal counts as a request


async def test_once_the_cloud_is_back_the_throttles_probe_gets_the_phone_through(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    cloud = Cloud(429, OVERLOADED, {})
    clock = [1000.0]
    # the worst draws: every request is refused locally while P > 0 (issue 14)
    throttle = AdaptiveThrottle(rng=lambda: 0.0, clock=lambda: clock[0])
    client = await phone_for(cloud, aiohttp_server, http, wallet, throttle=throttle)

    await client.command(VIN, Action.UNLOCK)
    locked = await client.command(VIN, Action.UNLOCK)
    assert "refused locally" in locked.reason
    cloud.answer = (403, {"error": {"code": "not_entitled", "message": "no"}}, {})  # back
    clock[0] += throttle.probe_interval_s
    through = await client.command(VIN, Action.UNLOCK)

    assert len(cloud.posts) == 2  # the first refusal, then the probe
    assert "refused locally" not in through.reason
    assert throttle.reject_probability() < 1 / 2  # an accepted answer: the rest follow soon


async def test_accepted_answers_keep_the_throttle_open(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    cloud = Cloud(403, {"error": {"code": "not_entitled", "message": "no"}}, {})
    throttle = AdaptiveThrottle(rng=lambda: 0.0)
    client = await phone_for(cloud, aiohttp_server, http, wallet, throttle=throttle)
    for _ in range(3):
        await client.command(VIN, Action.UNLOCK)
    assert len(cloud.posts) == 3  # a refusal that is not overload is an accepted request
    assert throttle.reject_probability() == 0.0


async def test_a_command_past_its_deadline_may_have_acted(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    body = {"error": {"code": "deadline_exceeded", "message": "it may have acted: check"}}
    cloud = Cloud(429, body, {"Retry-After": "1"})
    client = await phone_for(cloud, aiohttp_server, http, wallet)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert (outcome.path, outcome.may_have_succeeded) == ("cloud", True)


async def test_re_reading_a_command_spends_from_the_retry_budget(
    aiohttp_server: Any, http: aiohttp.ClientSession, wallet: KeyWallet
) -> None:
    cloud = Cloud(202, queued_view(), {})
    budget = RetryBudget(ratio=0.0, min_per_s=0.0)  # no retries at all
    client = await phone_for(cloud, aiohttp_server, http, wallet, retry_budget=budget)

    outcome = await client.command(VIN, Action.UNLOCK)

    assert outcome.may_have_succeeded  # still queued at the deadline: the phone cannot know
    assert cloud.reads == 1  # the read after the failed one would have been a retry
    assert budget.denied >= 1
    assert budget.retries == 0
