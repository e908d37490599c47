"""Reconnection backoff: full jitter within bounds, Retry-After honoured (plus jitter), attempts
bounded per cycle. The sleep is injected: these tests record the waits instead of waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from keycore import SoftwareSigner
from keycore.channel import RECONNECT_PACED, REFUSAL_HEADER
from resilience.breaker import BreakerState, CircuitBreaker
from resilience.overload import AdaptiveThrottle
from tests.keyserver.keys_harness import VIN, Api
from tests.resilience.test_breaker import FakeClock
from tests.vehicle_agent.channel_harness import HANG_GUARD_S, provision
from vehicle_agent import channel as channel_module
from vehicle_agent.actuator import SimulatedActuator
from vehicle_agent.backoff import CLOUD_LINK_BREAKER, ConnectThrottle, ReconnectPolicy
from vehicle_agent.channel import CloudLink, LinkState
from vehicle_agent.vehicle import Vehicle


def test_the_wait_after_a_drop_is_full_jitter_in_a_growing_bounded_window() -> None:
    policy = ReconnectPolicy(first_jitter_s=1.0, max_wait_s=30.0)
    for drops, window in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (500, 30.0)]:
        waits = [policy.after_drop(drops) for _ in range(200)]
        assert all(0 <= w <= window for w in waits)
        assert max(waits) > window / 2  # spread over the window, not bunched at its start
    assert all(0 <= policy.rest() <= 30.0 for _ in range(100))


async def test_the_car_honours_retry_after_and_bounds_its_attempts(
    api: Api,
    vehicle_key: SoftwareSigner,
    tmp_path: Path,
    aiohttp_server: Any,
) -> None:
    refusals = 0

    async def busy(request: web.Request) -> web.Response:
        nonlocal refusals
        refusals += 1
        return web.json_response(
            {"error": {"code": "overloaded", "message": "later"}},
            status=503,
            headers={"Retry-After": "7"},
        )

    app = web.Application()
    app.router.add_get(f"/v1/vehicles/{VIN}/channel", busy)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")

    waits: list[float] = []
    enough = asyncio.Event()

    async def recorded(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= 3:  # two waits between the three attempts, then the rest
            enough.set()
            await asyncio.Event().wait()  # the loop stops here for good

    policy = ReconnectPolicy(attempts=3, multiplier_s=0.5, max_wait_s=4.0)
    state = provision(api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=url)
    vehicle = Vehicle.load(state, SimulatedActuator(), boot_id="test-boot")
    never = ConnectThrottle(AdaptiveThrottle(rng=lambda: 1.0))  # every attempt reaches the server
    link = CloudLink(vehicle, policy=policy, sleep=recorded, throttle=never)
    link.start()
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            await enough.wait()
        assert refusals == 3  # the cycle's attempts, no more
        between, rest = waits[:2], waits[2]
        assert all(7 <= w <= 7 + 4.0 for w in between)  # Retry-After plus jitter
        assert 0 <= rest <= 4.0  # then a jittered rest before the next cycle
        assert link.state is LinkState.OFFLINE
        assert link.stats.last_error == "upgrade refused: 503"
    finally:
        await link.stop()


async def test_a_dead_cloud_trips_the_link_breaker_and_costs_no_more_sockets(
    api: Api, vehicle_key: SoftwareSigner, tmp_path: Path, aiohttp_server: Any
) -> None:
    upgrades = 0

    async def dead(request: web.Request) -> web.Response:
        nonlocal upgrades
        upgrades += 1
        return web.json_response({"error": {"code": "down", "message": "down"}}, status=502)

    app = web.Application()
    app.router.add_get(f"/v1/vehicles/{VIN}/channel", dead)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    clock = [1000.0]
    breaker = CircuitBreaker("cloud-link", CLOUD_LINK_BREAKER, clock=lambda: clock[0])
    waits: list[float] = []
    enough = asyncio.Event()

    async def recorded(seconds: float) -> None:  # time does not pass: the breaker stays open
        waits.append(seconds)
        if len(waits) >= 30:
            enough.set()
            await asyncio.Event().wait()

    state = provision(api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=url)
    vehicle = Vehicle.load(state, SimulatedActuator(), boot_id="test-boot")
    link = CloudLink(vehicle, sleep=recorded, breaker=breaker)
    link.start()
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            await enough.wait()
        assert upgrades == link.stats.attempts == CLOUD_LINK_BREAKER.minimum_calls
        assert breaker.state is BreakerState.OPEN
        assert link.stats.last_error == "cloud-link breaker open"
        # refused attempts wait out the breaker (5–15 s) plus jitter, never a tight loop
        assert sum(w >= 5.0 for w in waits) >= 10
        clock[0] += 16  # then the wait passes: one probe goes through, and only one
        assert breaker.try_acquire() is not None
        assert breaker.try_acquire() is None
    finally:
        await link.stop()


PACED_SLOT_S = 7


async def test_a_paced_car_comes_back_at_its_slot_without_backing_off_further(
    api: Api, vehicle_key: SoftwareSigner, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Issue 14: told 429 reconnect_paced with Retry-After T, the car comes back in
    [T, T + retry_after_jitter_s] every time — more refusals than a cycle has attempts, and no
    wait grows, no rest, no local throttling and no breaker failure in between."""
    paced_answers = ReconnectPolicy().attempts + 4
    upgrades = 0

    async def pacing(request: web.Request) -> web.StreamResponse:
        nonlocal upgrades
        upgrades += 1
        if upgrades <= paced_answers:
            return web.json_response(
                {"error": {"code": RECONNECT_PACED, "message": "come back at your slot"}},
                status=429,
                headers={"Retry-After": str(PACED_SLOT_S), REFUSAL_HEADER: RECONNECT_PACED},
            )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # held open until the car closes it
        return ws

    app = web.Application()
    app.router.add_get(f"/v1/vehicles/{VIN}/channel", pacing)
    server = await aiohttp_server(app)
    clock = FakeClock()  # moved by the car's own sleeps: the throttle's and the breaker's time
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    # the worst draws: any P > 0 would refuse locally, so a counted refusal would show
    throttle = ConnectThrottle(AdaptiveThrottle(clock=clock, rng=lambda: 0.0))
    breaker = CircuitBreaker("cloud-link", CLOUD_LINK_BREAKER, clock=clock)
    state = provision(
        api, tmp_path / "agent.db", vehicle_key=vehicle_key, url=str(server.make_url(""))
    )
    vehicle = Vehicle.load(state, SimulatedActuator(), boot_id="test-boot")
    policy = ReconnectPolicy()
    link = CloudLink(vehicle, policy=policy, sleep=sleep, breaker=breaker, throttle=throttle)
    link.start()
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            await link.wait_until(lambda: link.state is LinkState.ONLINE)
        assert upgrades == paced_answers + 1
        assert link.stats.paced == paced_answers
        assert len(waits) == paced_answers
        jitter = policy.retry_after_jitter_s
        assert all(PACED_SLOT_S <= w <= PACED_SLOT_S + jitter for w in waits)
        assert (throttle.rejected, throttle.throttle.requests) == (0, 1)  # only the success
        assert breaker.metrics.failed == 0
        assert link.stats.last_error == ""  # a paced refusal is not an error
    finally:
        await link.stop()


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        pytest.param(7.0, 7.0, 8.0, id="the-slot-plus-jitter"),
        pytest.param(0.0, 1.0, 2.0, id="zero-is-one-second"),
        pytest.param(86_400.0, 600.0, 601.0, id="a-day-is-capped"),
    ],
)
def test_the_paced_wait_is_the_slot_capped_plus_a_little_jitter(
    retry_after: float, low: float, high: float
) -> None:
    policy = ReconnectPolicy(max_retry_after_s=600.0, retry_after_jitter_s=1.0)
    waits = [policy.paced_wait(retry_after) for _ in range(200)]
    assert all(low <= w <= high for w in waits)
    assert max(waits) - min(waits) > 0.5  # jittered, not one instant for every car


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("²", None),
        ("7.5", None),
        ("-1", None),
        ("1" * 10, None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_ascii_delta_seconds_only(
    header: str, expected: float | None
) -> None:
    error = aiohttp.WSServerHandshakeError(
        cast(Any, None),
        (),
        status=429,
        headers=CIMultiDictProxy(CIMultiDict({"Retry-After": header})),
    )
    assert channel_module._retry_after(error) == expected
