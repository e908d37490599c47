"""Reconnects paced by the keyserver (issue 14): channel upgrades over the configured rate get
429 reconnect_paced with a slot in Retry-After — the next free one, so the refused cars come back
at the admitted rate — the same slot when asked again, and a schedule bounded by construction."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycore import SoftwareSigner
from keycore.channel import RECONNECT_PACED, REFUSAL_HEADER, Hello, decode_from_server
from keycore.cose import point_bytes
from keycore.request_proof import HEADER, sign_request
from keyserver.app import METRICS, create_app
from keyserver.config import ConfigError, build
from keyserver.models import Vehicle as VehicleRecord
from keyserver.pacing import PACING, Paced, ReconnectPacer
from tests.keyserver.keys_harness import Api, Clock
from tests.resilience.test_breaker import FakeClock

# ---------------------------------------------------------------------------------------------
# the pacer, on a fake clock


def pacer(rate: float = 10, **more: Any) -> tuple[ReconnectPacer, FakeClock]:
    clock = FakeClock()
    return ReconnectPacer(rate, clock=clock, **more), clock


def test_refused_cars_get_the_next_free_slots_at_the_admitted_rate() -> None:
    paced, _ = pacer(10)  # 10 a second, a burst of 10
    decisions = [paced.ask(f"car-{i}") for i in range(60)]
    assert sum(d.admitted for d in decisions) == 10
    refused = decisions[10:]
    assert {d.reason for d in refused} == {Paced.SLOT}
    # slot k (k = 1…50) is at k × 0.1 s: ten cars told to come back in each second, not all
    # of them told the same thing
    assert Counter(d.retry_after_s for d in refused) == {1: 10, 2: 10, 3: 10, 4: 10, 5: 10}


def test_a_car_asking_again_keeps_its_slot_and_is_admitted_at_it() -> None:
    paced, clock = pacer(10)
    for i in range(10):
        assert paced.ask(f"car-{i}").admitted
    first = paced.ask("late")
    assert (first.reason, first.retry_after_s) == (Paced.SLOT, 1)  # slot at 0.1 s
    clock.advance(0.05)
    again = paced.ask("late")
    assert (again.reason, again.retry_after_s) == (Paced.EARLY, 1)  # the same slot
    assert paced.ask("next").retry_after_s == 1  # the next slot, 0.2 s: the repeat took none
    clock.advance(0.05)
    assert paced.ask("late").admitted  # at its slot
    assert len(paced) == 1  # only "next" holds one now


def test_cars_at_their_slots_do_not_spend_the_rate_again() -> None:
    paced, clock = pacer(10)
    for i in range(30):
        paced.ask(f"car-{i}")  # 10 admitted, 20 slots: 0.1 … 2.0 s
    clock.advance(2.0)
    assert all(paced.ask(f"car-{i}").admitted for i in range(10, 30))
    assert len(paced) == 0
    # had they spent it again, the schedule would run to 4.0 s; it ends at 2.0 s
    clock.advance(0.1)
    assert paced.ask("newcomer").admitted


def test_when_the_horizon_is_booked_cars_are_told_its_end_without_a_slot() -> None:
    paced, _ = pacer(10, horizon_s=2.0, grace_s=1.0)
    decisions = [paced.ask(f"car-{i}") for i in range(100)]
    assert sum(d.reason is Paced.SLOT for d in decisions) == 20  # 2 s of slots at 10 a second
    full = [d for d in decisions if d.reason is Paced.FULL]
    assert len(full) == 70
    assert {d.retry_after_s for d in full} == {2}
    assert len(paced) == 20 <= paced.max_entries


def test_a_slot_nobody_comes_to_is_forgotten_after_its_grace() -> None:
    paced, clock = pacer(1, burst=1, grace_s=10.0)
    assert paced.ask("first").admitted
    assert paced.ask("absent").reason is Paced.SLOT  # slot at 1 s
    clock.advance(1.0 + 10.0)
    assert len(paced) == 1  # still within its grace
    clock.advance(0.5)
    assert paced.ask("other").admitted
    assert len(paced) == 0


def test_overflow_before_the_proof_is_spread_at_the_rate_within_the_horizon() -> None:
    paced, clock = pacer(10, horizon_s=5)
    told = [paced.overflow() for _ in range(80)]
    assert {d.reason for d in told} == {Paced.OVERFLOW}
    # one interval apart, rounded up to whole seconds: ten told each second, not all the same
    assert Counter(d.retry_after_s for d in told[:50]) == {1: 10, 2: 10, 3: 10, 4: 10, 5: 10}
    assert {d.retry_after_s for d in told[50:]} == {5}  # capped at the horizon
    assert len(paced) == 0  # nothing kept per car: the tail is one number
    clock.advance(60)  # the tail does not outlive the wait it gave
    assert paced.overflow().retry_after_s == 1


def test_the_pacer_refuses_settings_that_make_no_schedule() -> None:
    for bad in ({"rate_per_s": 0}, {"rate_per_s": 10, "horizon_s": 0}):
        with pytest.raises(ValueError, match="positive"):
            ReconnectPacer(**bad)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([1.0, 3.0, 10.0, 250.0]),
    steps=st.lists(st.tuples(st.integers(0, 400), st.floats(0, 30, allow_nan=False)), max_size=400),
)
def test_the_schedule_stays_within_its_bound_and_the_rate(
    rate: float, steps: list[tuple[int, float]]
) -> None:
    """Any sequence of asks (400 cars, repeats included) and time advances: never more slots
    than max_entries, every Retry-After within 1…horizon, a repeat never later than its slot, and
    the cars let in — outright or at their slots — within burst + rate × elapsed time."""
    paced, clock = pacer(rate, horizon_s=20.0, grace_s=5.0)
    start = clock.now
    admitted = 0
    held: dict[str, float] = {}  # car -> its slot
    for car, advance in steps:
        clock.advance(advance)
        vin = f"car-{car}"
        decision = paced.ask(vin)
        assert len(paced) <= paced.max_entries
        if decision.retry_after_s is None:
            admitted += 1
            held.pop(vin, None)
        else:
            assert 1 <= decision.retry_after_s <= math.ceil(paced.horizon_s)
            if decision.reason is Paced.EARLY:  # the same slot, and Retry-After reaches it
                assert paced._slots[vin] == held[vin]
                assert held[vin] <= clock.now + decision.retry_after_s + 1e-6
            elif decision.reason is Paced.SLOT:
                held[vin] = paced._slots[vin]
                assert held[vin] <= clock.now + decision.retry_after_s + 1e-6
        assert admitted <= paced.burst + rate * (clock.now - start) + 1


# ---------------------------------------------------------------------------------------------
# the channel route

VIN_A, VIN_B = "1PKPACE0000000001", "1PKPACE0000000002"


def _proof(key: SoftwareSigner, vin: str, now: int) -> str:
    path = f"/v1/vehicles/{vin}/channel"
    return sign_request(key, device_id=vin, method="GET", path=path, body=b"", timestamp=now)


def _paced_metric(api: Api, reason: str) -> float:
    return sum(
        s.value
        for family in api.app[METRICS].registry.collect()
        for s in family.samples
        if s.name == "keyserver_channel_upgrades_paced_total" and s.labels.get("reason") == reason
    )


async def test_the_channel_paces_upgrades_and_admitted_ones_still_work(
    tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    app = create_app(build({"data_dir": str(tmp_path / "server"), "channel_upgrades_per_s": 1}))
    api = Api(app, await aiohttp_client(app), clock)
    owner = await api.person("owner")
    keys = {}
    for vin in (VIN_A, VIN_B):
        keys[vin] = SoftwareSigner.generate()
        record = VehicleRecord(vin, point_bytes(keys[vin].public_key), owner.account_id, clock.now)
        await api.store.add_vehicle(record)
    pace_clock = FakeClock()
    app[PACING].pacer = ReconnectPacer(1, clock=pace_clock)  # 1 a second, a burst of 1
    client = api.client

    async def upgrade(vin: str) -> aiohttp.ClientWebSocketResponse:
        headers = {HEADER: _proof(keys[vin], vin, clock.now)}
        return await client.ws_connect(f"/v1/vehicles/{vin}/channel", headers=headers)

    first = await upgrade(VIN_A)
    assert isinstance(decode_from_server(await first.receive_bytes()), Hello)  # admitted, served
    await first.close()

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await upgrade(VIN_B)
    assert refused.value.status == 429
    assert refused.value.headers is not None
    assert refused.value.headers["Retry-After"] == "1"
    assert refused.value.headers[REFUSAL_HEADER] == RECONNECT_PACED

    pace_clock.advance(0.5)  # early: the same slot, and the JSON body says why
    reply = await client.get(
        f"/v1/vehicles/{VIN_B}/channel",
        headers={
            HEADER: _proof(keys[VIN_B], VIN_B, clock.now),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert reply.status == 429
    assert (await reply.json())["error"]["code"] == RECONNECT_PACED
    assert reply.headers["Retry-After"] == "1"

    pace_clock.advance(0.5)  # its slot
    second = await upgrade(VIN_B)
    assert isinstance(decode_from_server(await second.receive_bytes()), Hello)
    await second.close()
    assert (_paced_metric(api, "slot"), _paced_metric(api, "early")) == (1, 1)


async def test_an_unproven_upgrade_takes_no_slot(
    tmp_path: Path, aiohttp_client: Any, clock: Clock
) -> None:
    app = create_app(build({"data_dir": str(tmp_path / "server"), "channel_upgrades_per_s": 1}))
    api = Api(app, await aiohttp_client(app), clock)
    for _ in range(5):
        reply = await api.client.get(f"/v1/vehicles/{VIN_A}/channel")
        assert reply.status == 401
    assert len(app[PACING].pacer) == 0
    assert _paced_metric(api, "slot") == 0


def test_the_rate_is_a_setting_with_bounds() -> None:
    assert build({}).channel_upgrades_per_s == 250.0
    with pytest.raises(ConfigError, match="channel_upgrades_per_s"):
        build({"channel_upgrades_per_s": 0})
