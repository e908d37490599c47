"""The keyserver's metrics that the alert rules read (deploy/prometheus/alerts.yml): degraded
answers by reason, counted once per answer that carries the marker, and command results by the
status the car reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keycore import Action
from keyserver.app import METRICS, create_app
from keyserver.config import build
from keyserver.degraded import DEGRADED_HEADER
from tests.keyserver.flaky_store import FlakyStore
from tests.keyserver.keys_harness import VIN, Api, Clock
from tests.vehicle_agent.channel_harness import (
    applied_results,
    command,
    command_state,
    frames_in,
    hub_until,
    metric,
    register,
    start_car,
)
from vehicle_agent.actuator import SimulatedActuator


def degraded_answers(api: Api, reason: str) -> float:
    return metric(api, "keyserver_degraded_answers_total", reason=reason)


async def test_every_degraded_answer_is_counted_once_by_its_reason(
    flaky_api: Api, flaky: FlakyStore, clock: Clock
) -> None:
    api = flaky_api
    owner = await api.person("owner")
    await api.vehicle(owner)
    fresh = await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN)
    assert DEGRADED_HEADER not in fresh.headers
    assert degraded_answers(api, "store_unavailable") == 0

    # the car is not connected: 202 queued, marked car_unreachable
    queued = await command(api, owner, "lock", "lock-00001")
    assert queued.headers[DEGRADED_HEADER] == "car_unreachable"
    assert degraded_answers(api, "car_unreachable") == 1

    stranger = await api.person("stranger")  # never seen by this process
    clock.advance(10)
    flaky.fail()
    answers = [
        await api.call(owner, "GET", "/v1/vehicles/{vin}", proof=False, vin=VIN),
        await api.call(stranger, "GET", "/v1/accounts/me", proof=False),
    ]  # a stale read, then a "try later" for a caller this process has never seen
    assert [a.headers.get(DEGRADED_HEADER) for a in answers] == ["store_unavailable"] * 2
    assert [a.status for a in answers] == [200, 429]
    assert degraded_answers(api, "store_unavailable") == 2
    assert degraded_answers(api, "car_unreachable") == 1
    plain = await api.client.get("/healthz")  # no marker, not counted
    assert DEGRADED_HEADER not in plain.headers
    assert degraded_answers(api, "store_unavailable") == 2


@pytest.mark.parametrize(
    ("actuator", "clock_ahead", "status"),
    [
        (SimulatedActuator(), 0, "executed"),
        (SimulatedActuator(refuse=frozenset({Action.START})), 0, "failed"),
        (SimulatedActuator(), 120, "expired"),  # expired by the car's own clock: never run
    ],
)
async def test_command_results_are_counted_by_the_status_the_car_reported(
    tmp_path: Path,
    aiohttp_client: Any,
    clock: Clock,
    actuator: SimulatedActuator,
    clock_ahead: int,
    status: str,
) -> None:
    app = create_app(build({"data_dir": str(tmp_path / "server")}))
    api = Api(app, await aiohttp_client(app), clock)
    owner = await api.person("owner")
    car = await start_car(
        api, tmp_path, await register(api, owner), actuator=actuator, clock_ahead=clock_ahead
    )
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        reply = await command(api, owner, "start", "start-0001")
        await hub_until(api, lambda: applied_results(api) >= 1)
        shown = await command_state(api, owner, reply.body["command_id"])
        assert shown["status"] == status
    finally:
        await car.link.stop()
    results = app[METRICS].registry
    assert (
        results.get_sample_value(
            "keyserver_command_results_total", {"outcome": "applied", "status": status}
        )
        == 1
    )
    assert metric(api, "keyserver_command_results_total") == 1
