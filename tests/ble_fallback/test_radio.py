"""The simulated radio: a phone finds a car only by its advertisement — next to it and while it
advertises — within its scan; a connection that cannot be made fails before anything is sent.
On virtual time: the waits are the model's, never real."""

from __future__ import annotations

import asyncio
import random

import pytest

from ble_fallback.errors import LinkClosed
from ble_fallback.link import Link, SimulatedLink
from ble_fallback.radio import RadioTiming, SimulatedRadio
from ble_fallback.virtual_time import run_simulated

TIMING = RadioTiming(advertising_interval_s=0.1, connect_s=(0.02, 0.06))
VIN = "WDB0000000000TEST"


class Car:
    """An advertising car's side: counts the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0

    def accept(self) -> Link:
        self.accepted += 1
        phone, _car = SimulatedLink.pair(rng=random.Random(0))
        return phone


def radio() -> SimulatedRadio:
    return SimulatedRadio(rng=random.Random(7), timing=TIMING)


def test_a_phone_far_from_the_car_finds_nothing_within_its_scan() -> None:
    async def main() -> tuple[Link | None, float, int]:
        air, car = radio(), Car()
        air.advertise(VIN, car.accept)
        loop = asyncio.get_running_loop()
        began = loop.time()
        found = await air.reach("phone", VIN, scan_s=0.5)
        return found, loop.time() - began, car.accepted

    found, waited, accepted = run_simulated(main())
    assert found is None
    assert waited == pytest.approx(0.5)
    assert accepted == 0


def test_a_phone_walking_up_sees_the_advertisement_within_one_interval_and_connects() -> None:
    async def main() -> tuple[bool, bool, float, int]:
        air, car = radio(), Car()
        air.advertise(VIN, car.accept)
        air.move("phone", VIN)
        at_arrival = air.sees("phone", VIN)
        loop = asyncio.get_running_loop()
        began = loop.time()
        found = await air.reach("phone", VIN, scan_s=0.5)
        return at_arrival, found is not None, loop.time() - began, car.accepted

    at_arrival, found, waited, accepted = run_simulated(main())
    assert not at_arrival  # the next advertising event has not come yet
    assert found
    assert 0.02 <= waited <= 0.1 + 0.06
    assert accepted == 1


def test_a_silent_car_is_out_of_range_until_it_advertises_again() -> None:
    async def main() -> tuple[Link | None, Link | None]:
        air, car = radio(), Car()
        air.advertise(VIN, car.accept)
        air.move("phone", VIN)
        await asyncio.sleep(0.2)
        air.silence(VIN)  # its agent died: no endpoint, no advertisement
        gone = await air.reach("phone", VIN, scan_s=0.3)
        asyncio.get_running_loop().call_later(0.1, air.advertise, VIN, car.accept)
        back = await air.reach("phone", VIN, scan_s=0.5)
        return gone, back

    gone, back = run_simulated(main())
    assert gone is None
    assert back is not None


def test_walking_off_while_connecting_fails_before_anything_is_sent() -> None:
    async def main() -> LinkClosed:
        air, car = radio(), Car()
        air.advertise(VIN, car.accept)
        air.move("phone", VIN)
        await asyncio.sleep(0.2)
        asyncio.get_running_loop().call_later(0.01, air.move, "phone", None)
        with pytest.raises(LinkClosed) as failed:
            await air.reach("phone", VIN, scan_s=0.5)
        return failed.value

    failed = run_simulated(main())
    assert failed.retry_safe
    assert not failed.may_have_succeeded


def test_a_phone_next_to_one_car_does_not_see_another() -> None:
    async def main() -> Link | None:
        air, car = radio(), Car()
        air.advertise(VIN, car.accept)
        air.advertise("WDB0000000000OTHR", Car().accept)
        air.move("phone", "WDB0000000000OTHR")
        return await air.reach("phone", VIN, scan_s=0.5)

    assert run_simulated(main()) is None
