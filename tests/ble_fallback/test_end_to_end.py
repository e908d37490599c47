"""Phone and car over the simulated link with 5 % chunk loss, 50 ms jitter and duplicated
chunks, on virtual time: unlock, lock, a courier-delivered revocation, and every denial."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from ble_fallback.car import CarEndpoint
from ble_fallback.errors import CarBusy, LinkClosed
from ble_fallback.link import LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.messages import UnlockRequest
from ble_fallback.phone import CarConnection, carry_over_ble, unlock_over_ble
from ble_fallback.protocol import CarEvent, CourierHandled, ReplyRepeated, RequestHandled
from ble_fallback.virtual_time import run_simulated
from keycore import Action, RevocationLedger, Role, TrustedClock, prove, sign_time
from tests.ble_fallback.harness import car_state, drain, random_source, revocation_of
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World

LOSSY = LinkConditions(latency=0.01, jitter=0.05, loss=0.05, duplicate=0.02)
POLICY = LinkPolicy(mtu=185, allowed_latency=0.5, retry_interval=0.15)
SEEDS = range(6)


class Garage:
    """One car serving BLE connections, recording what it did."""

    def __init__(
        self,
        world: World,
        *,
        seed: int = 0,
        conditions: LinkConditions = LOSSY,
        policy: LinkPolicy = POLICY,
        max_connections: int = 2,
        clock: TrustedClock | None = None,
    ) -> None:
        self.state = car_state(world, clock=clock)
        self.events: list[CarEvent] = []
        self.endpoint = CarEndpoint(
            self.state,
            max_connections=max_connections,
            on_event=self.events.append,
            random_bytes=random_source(seed),
        )
        self.conditions, self.policy = conditions, policy
        self.rng = random.Random(seed)

    @contextlib.asynccontextmanager
    async def connect(
        self, conditions: LinkConditions | None = None
    ) -> AsyncIterator[SimulatedLink]:
        phone, car = SimulatedLink.pair(self.policy, conditions or self.conditions, rng=self.rng)
        serving = asyncio.create_task(self.endpoint.serve(car))
        try:
            yield phone
        finally:
            await phone.close()
            await serving

    @property
    def executed(self) -> list[Action]:
        return [e.action for e in self.events if isinstance(e, RequestHandled) and e.allowed]


@pytest.mark.parametrize("seed", SEEDS)
def test_unlock_then_lock_each_execute_exactly_once(world: World, seed: int) -> None:
    garage = Garage(world, seed=seed)
    token = world.token()

    async def scenario() -> list[str]:
        codes = []
        for action in (Action.UNLOCK, Action.LOCK):
            async with garage.connect() as link:
                result = await unlock_over_ble(link, token, world.phone, action)
                assert result.round_trips == 2
                codes.append(result.code)
        return codes

    assert run_simulated(scenario()) == ["granted", "granted"]
    assert garage.executed == [Action.UNLOCK, Action.LOCK]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_revocation_carried_by_any_phone_denies_the_revoked_key(world: World, seed: int) -> None:
    garage = Garage(world, seed=seed)
    token = world.token(token_id=b"\x42" * 16)
    document = revocation_of(world, b"\x42" * 16, sequence=3)

    async def scenario() -> str:
        async with garage.connect() as link:
            assert (await unlock_over_ble(link, token, world.phone, Action.UNLOCK)).granted
        async with garage.connect() as link:  # a friend's phone, with no key for this car
            [result] = await carry_over_ble(link, revocation_list=document)
            assert result.code == "applied"
            assert result.status.revocation_sequence == 3
        async with garage.connect() as link:
            return (await unlock_over_ble(link, token, world.phone, Action.UNLOCK)).code

    assert run_simulated(scenario()) == "revoked"
    assert garage.executed == [Action.UNLOCK]
    assert [e.code for e in garage.events if isinstance(e, CourierHandled)] == ["applied"]


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_replayed_request_is_denied_on_the_same_and_a_new_connection(
    world: World, seed: int
) -> None:
    garage = Garage(world, seed=seed)
    token = world.token()

    async def scenario() -> list[str]:
        async with garage.connect() as link:
            connection = await CarConnection.open(link)
            assert connection.session.challenge is not None
            nonce = connection.session.challenge.nonce
            proof = prove(world.phone, challenge=nonce, vin=VIN, action=Action.UNLOCK, token=token)
            recorded = UnlockRequest(token, Action.UNLOCK, proof)  # what a sniffer heard
            codes = [(await connection.exchange(recorded)).code]
            codes.append((await connection.exchange(recorded)).code)
        async with garage.connect() as link:
            connection = await CarConnection.open(link)
            codes.append((await connection.exchange(recorded)).code)
        return codes

    first, *replays = run_simulated(scenario())
    assert first == "granted"
    # Denied for its proof, or for its lateness when loss made the (re)sent copy miss the
    # deadline: either way, nothing runs again.
    assert all(code in ("bad_proof", "late") for code in replays)
    assert garage.executed == [Action.UNLOCK]


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_key_for_another_car_is_denied(world: World, seed: int) -> None:
    garage = Garage(world, seed=seed)
    token = world.token(vin=OTHER_VIN)

    async def scenario() -> list[str]:
        codes = []
        for vin in (None, VIN):  # the proof names the token's car / this car
            async with garage.connect() as link:
                result = await unlock_over_ble(link, token, world.phone, Action.UNLOCK, vin=vin)
                codes.append(result.code)
        return codes

    assert run_simulated(scenario()) == ["bad_proof", "wrong_vehicle"]
    assert garage.executed == []


def test_a_late_answer_is_denied_and_retried_at_most_twice(world: World) -> None:
    # a relay adds 0.6 s to every round trip, on top of the lossy air
    relay = LinkConditions(latency=0.3, jitter=0.05, loss=0.05, duplicate=0.02)
    garage = Garage(world, conditions=relay)

    async def scenario() -> tuple[str, int]:
        async with garage.connect() as link:
            result = await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)
            return result.code, result.attempts

    assert run_simulated(scenario()) == ("late", 3)
    assert garage.executed == []
    assert [e.code for e in garage.events if isinstance(e, RequestHandled)] == ["late"] * 3


def test_a_busy_car_answers_busy_and_a_later_retry_works(world: World) -> None:
    garage = Garage(world, max_connections=1, conditions=LinkConditions())
    token = world.token()

    async def scenario() -> str:
        async with garage.connect() as first:
            await CarConnection.open(first)  # holds the car's only connection
            async with garage.connect() as second:
                with pytest.raises(CarBusy) as caught:
                    await unlock_over_ble(second, token, world.phone, Action.UNLOCK)
        assert caught.value.retry_safe
        await asyncio.sleep(caught.value.retry_after)
        async with garage.connect() as third:
            return (await unlock_over_ble(third, token, world.phone, Action.UNLOCK)).code

    assert run_simulated(scenario()) == "granted"
    assert garage.executed == [Action.UNLOCK]


def test_a_lost_result_may_have_succeeded_and_is_not_retry_safe(world: World) -> None:
    # Challenge (1 chunk) and request (2 chunks) go through; the link drops with the result.
    garage = Garage(world, conditions=LinkConditions(disconnect_after=3))

    async def scenario() -> None:
        async with garage.connect() as link:
            with pytest.raises(LinkClosed) as caught:
                await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)
            assert caught.value.may_have_succeeded
            assert not caught.value.retry_safe

    run_simulated(scenario())
    assert garage.executed == [Action.UNLOCK]


def test_unlock_works_at_the_smallest_mtu_over_a_lossy_link(world: World) -> None:
    garage = Garage(world, policy=LinkPolicy(mtu=23, allowed_latency=0.8, retry_interval=0.15))

    async def scenario() -> str:
        async with garage.connect() as link:
            return (await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)).code

    assert run_simulated(scenario()) == "granted"


def test_a_phone_brings_signed_time_to_a_car_whose_clock_was_reset(world: World) -> None:
    reset = TrustedClock.unknown(mono=0.0, boot_id="car")
    garage = Garage(world, clock=TrustedClock.restore(reset.encode(0.0), mono=0.0, boot_id="b"))
    guest = world.token(Role.GUEST, expires=NOW + DAY)

    async def signed_time(nonce: bytes) -> bytes:  # the keyserver, reached by the phone
        await asyncio.sleep(0.3)
        return sign_time(world.issuer, nonce=nonce, now=NOW + 10)

    async def scenario() -> list[str]:
        async with garage.connect() as link:
            connection = await CarConnection.open(link)
            before = await connection.unlock(guest, world.phone, Action.UNLOCK)
            [carried] = await connection.carry(signed_time=signed_time)
            after = await connection.unlock(guest, world.phone, Action.UNLOCK)
            assert not after.car.clock_reset
            assert after.car.trusted_time >= NOW + 10
            return [before.code, carried.code, after.code]

    assert run_simulated(scenario()) == ["untrusted_time", "applied", "granted"]


def test_the_car_closes_a_silent_connection(world: World) -> None:
    garage = Garage(world, conditions=LinkConditions())

    async def silent_from_the_start() -> int:
        async with garage.connect() as link:
            return len(await drain(link))  # the car re-sends its challenge, then gives up

    async def idle_after_an_unlock() -> float:
        async with garage.connect() as link:
            await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)
            start = asyncio.get_running_loop().time()
            with pytest.raises(LinkClosed):
                await link.receive()
            return asyncio.get_running_loop().time() - start

    assert run_simulated(silent_from_the_start()) == POLICY.max_attempts
    assert run_simulated(idle_after_an_unlock()) == pytest.approx(POLICY.idle_timeout)
    assert garage.endpoint.active == 0


def test_many_unlocks_over_the_lossy_link_each_run_once(world: World) -> None:
    garage = Garage(world, seed=42)
    token = world.token()
    air = []

    async def scenario() -> list[str]:
        codes = []
        for i in range(30):
            async with garage.connect() as link:
                action = (Action.UNLOCK, Action.LOCK)[i % 2]
                codes.append((await unlock_over_ble(link, token, world.phone, action)).code)
                air.append(link.stats)
        return codes

    assert run_simulated(scenario()) == ["granted"] * 30
    assert garage.executed == [(Action.UNLOCK, Action.LOCK)[i % 2] for i in range(30)]
    # The air really was bad, and retransmissions really were answered from the cache.
    assert sum(s.lost for s in air) > 0
    assert sum(s.duplicated for s in air) > 0
    assert any(isinstance(e, ReplyRepeated) for e in garage.events)


def test_a_long_revocation_list_crosses_a_lossy_link_at_the_smallest_mtu(world: World) -> None:
    """~1 400 chunks at 5 % loss: no copy arrives whole, yet the retransmissions fill the holes."""
    garage = Garage(world, policy=LinkPolicy(mtu=23), seed=7)
    ledger = RevocationLedger(VIN)
    for i in range(1000):
        ledger.revoke_token(i.to_bytes(16, "big"), NOW + DAY)
    document = ledger.document(world.issuer, now=NOW)
    assert len(document) > 20_000

    async def scenario() -> str:
        async with garage.connect() as link:
            [result] = await carry_over_ble(link, revocation_list=document)
            return result.code

    assert run_simulated(scenario()) == "applied"
    assert len(garage.state.revocations) == 1000
