"""The simulated link and the virtual-time loop it runs on: order, loss, duplicates, MTU,
disconnects and graceful close — deterministic for a seed, and never a real wait."""

from __future__ import annotations

import asyncio
import random

import pytest

from ble_fallback.errors import LinkClosed, LocalProtocolError
from ble_fallback.link import LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.virtual_time import SimulationDeadlock, VirtualTimeLoop, run_simulated
from tests.ble_fallback.harness import drain

POLICY = LinkPolicy(mtu=23)


def chunk(i: int) -> bytes:
    return i.to_bytes(4, "big")


async def exchange(conditions: LinkConditions, n: int, seed: int = 1) -> list[bytes]:
    phone, car = SimulatedLink.pair(POLICY, conditions, rng=random.Random(seed))
    for i in range(n):
        await phone.send(chunk(i))
    await phone.close()
    return await drain(car)


def test_jitter_delays_chunks_but_keeps_their_order() -> None:
    received = run_simulated(exchange(LinkConditions(latency=0.01, jitter=0.05), 200))
    assert received == [chunk(i) for i in range(200)]


def test_loss_and_duplicates_follow_the_seeded_rates() -> None:
    conditions = LinkConditions(loss=0.05, duplicate=0.05, jitter=0.05)
    received = run_simulated(exchange(conditions, 2000))
    assert received == run_simulated(exchange(conditions, 2000))  # same seed, same air
    distinct = set(received)
    assert 2000 * 0.02 < 2000 - len(distinct) < 2000 * 0.08
    assert 2000 * 0.02 < len(received) - len(distinct) < 2000 * 0.08
    assert received == sorted(received, key=lambda c: int.from_bytes(c, "big"))


def test_latency_is_virtual_time() -> None:
    async def scenario() -> float:
        phone, car = SimulatedLink.pair(
            POLICY, LinkConditions(latency=3600.0), rng=random.Random(0)
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        await phone.send(b"late")
        assert await car.receive() == b"late"
        return loop.time() - start

    assert run_simulated(scenario()) == pytest.approx(3600.0)


def test_a_chunk_over_the_mtu_is_our_own_protocol_error() -> None:
    async def scenario() -> None:
        phone, _ = SimulatedLink.pair(POLICY, rng=random.Random(0))
        with pytest.raises(LocalProtocolError):
            await phone.send(bytes(POLICY.chunk_size + 1))
        await phone.send(bytes(POLICY.chunk_size))

    run_simulated(scenario())


def test_disconnect_after_n_chunks_drops_the_link_for_both_ends() -> None:
    async def scenario() -> None:
        phone, car = SimulatedLink.pair(
            POLICY, LinkConditions(disconnect_after=2), rng=random.Random(0)
        )
        await phone.send(b"one")
        await car.send(b"two")
        with pytest.raises(LinkClosed):
            await phone.send(b"three")
        # What arrived before the drop is still read; then the link is down for both ends.
        assert await drain(phone) == [b"two"]
        assert await drain(car) == [b"one"]
        for end in (phone, car):
            with pytest.raises(LinkClosed):
                await end.receive()
            with pytest.raises(LinkClosed):
                await end.send(b"more")

    run_simulated(scenario())


def test_an_abrupt_disconnect_loses_chunks_in_flight() -> None:
    async def scenario() -> None:
        phone, car = SimulatedLink.pair(POLICY, LinkConditions(latency=0.1), rng=random.Random(0))
        await phone.send(b"in flight")
        phone.disconnect()
        with pytest.raises(LinkClosed):
            await car.receive()

    run_simulated(scenario())


def test_the_virtual_loop_reports_a_deadlock_instead_of_hanging() -> None:
    async def forever() -> None:
        await asyncio.get_running_loop().create_future()

    loop = VirtualTimeLoop(idle_wait=0.01)
    try:
        with pytest.raises(SimulationDeadlock):
            loop.run_until_complete(forever())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_policy_validation_and_derived_sizes() -> None:
    assert LinkPolicy(mtu=23).chunk_size == 20
    assert LinkPolicy(mtu=247).chunk_size == 244
    assert LinkPolicy(retry_interval=0.2).gap_timeout == pytest.approx(0.6)
    with pytest.raises(ValueError, match="timings"):
        LinkPolicy(allowed_latency=0)
    with pytest.raises(ValueError, match="loss"):
        LinkConditions(loss=1.0)
