"""The real BLE adapters, without a radio: the phone's BleakLink on a real ``bleak.BleakClient``
over a fake backend, the car's BlessPeripheral on bless's own server base class, both joined
into one unlock; the UUIDs they use; error mapping; and what happens with no BLE stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ble_fallback import gatt
from ble_fallback.bleak_link import BleakLink
from ble_fallback.bless_link import BlessPeripheral, PeripheralLink
from ble_fallback.car import CarEndpoint
from ble_fallback.errors import LinkClosed, LinkTimeout, LocalProtocolError
from ble_fallback.link import Link
from ble_fallback.phone import unlock_over_ble
from ble_fallback.protocol import CarEvent, RequestHandled
from ble_fallback.virtual_time import run_simulated
from keycore import Action
from tests.ble_fallback.harness import car_state, drain, random_source
from tests.conftest import World

try:  # the ``ble`` extra; without it only the UUIDs and the import guard are tested
    from bleak.backends.device import BLEDevice
    from bleak.exc import BleakError
    from bless import GATTAttributePermissions, GATTCharacteristicProperties

    from tests.ble_fallback.gatt_fakes import Air, FakeServer, bleak_factory, car_services

    HAS_BLE = True
except ImportError:
    BleakError = OSError  # type: ignore[misc,assignment]
    HAS_BLE = False

needs_ble = pytest.mark.skipif(not HAS_BLE, reason="needs the ble extra: pip install '.[ble]'")
ADDRESS = "AA:BB:CC:DD:EE:FF"
NO_SYSTEM_BUS = not Path("/var/run/dbus/system_bus_socket").exists()


async def phone(air: Air, **options: object) -> BleakLink:
    return await BleakLink.connect(address=ADDRESS, client_factory=bleak_factory(air), **options)  # type: ignore[arg-type]


@pytest.fixture
async def car(world: World) -> AsyncIterator[tuple[Air, BlessPeripheral, list[CarEvent]]]:
    """A car on bless (FakeServer) with its endpoint, and the Air a phone reaches it through."""
    air, events = Air(), []
    endpoint = CarEndpoint(car_state(world), on_event=events.append, random_bytes=random_source())
    peripheral = BlessPeripheral(
        endpoint.serve, name="car", server_factory=lambda name, loop: FakeServer(name, air)
    )
    air.on_subscribe, air.on_unsubscribe = peripheral.connected, peripheral.disconnected
    await peripheral.start()
    yield air, peripheral, events
    await peripheral.stop()


def test_the_uuids_are_fixed_and_documented() -> None:
    assert (gatt.SERVICE_UUID, gatt.PHONE_TO_CAR_UUID, gatt.CAR_TO_PHONE_UUID) == (
        "107d0001-b72e-47d0-8f92-1ef6d7c1227c",
        "107d0002-b72e-47d0-8f92-1ef6d7c1227c",
        "107d0003-b72e-47d0-8f92-1ef6d7c1227c",
    )
    assert all(uuid in (gatt.__doc__ or "") for uuid in (gatt.SERVICE_UUID, gatt.CAR_TO_PHONE_UUID))


@needs_ble
async def test_a_phone_on_bleak_unlocks_a_car_on_bless(world: World, car: tuple) -> None:
    air, peripheral, events = car
    link = await phone(air)
    assert link.policy.mtu == air.mtu
    assert link.policy.chunk_size == air.mtu - 3
    result = await unlock_over_ble(link, world.token(), world.phone, Action.UNLOCK)
    await link.close()
    assert result.granted
    assert [e.action for e in events if isinstance(e, RequestHandled) and e.allowed] == [
        Action.UNLOCK
    ]
    backend = air.backend
    assert backend is not None
    # every phone chunk a write without response to the phone → car characteristic, ≤ MTU − 3,
    # the long request cut at exactly MTU − 3; every car chunk a notification ≤ 20 (MTU 23)
    assert {(uuid, response) for uuid, _, response in backend.writes} == {
        (gatt.PHONE_TO_CAR_UUID, False)
    }
    sizes = [len(data) for _, data, _ in backend.writes]
    assert max(sizes) == air.mtu - 3
    assert air.server is not None
    assert air.server.notified
    assert max(len(chunk) for chunk in air.server.notified) == 20
    assert backend.calls[-2:] == ["stop_notify", "disconnect"]
    assert peripheral.link is None  # the phone left: the car dropped its side


@needs_ble
async def test_the_car_publishes_its_service_with_bless_flags(car: tuple) -> None:
    air, _, _ = car
    server = air.server
    write = server.get_characteristic(gatt.PHONE_TO_CAR_UUID)
    notify = server.get_characteristic(gatt.CAR_TO_PHONE_UUID)
    assert server.started
    assert server.get_service(gatt.SERVICE_UUID) is not None
    assert write.properties == GATTCharacteristicProperties.write_without_response
    assert notify.properties == GATTCharacteristicProperties.notify
    assert write.permissions == GATTAttributePermissions.writeable


@needs_ble
async def test_a_drop_reaches_both_ends_as_link_closed(car: tuple) -> None:
    air, peripheral, _ = car
    link = await phone(air)
    car_link = peripheral.link
    assert isinstance(car_link, PeripheralLink)
    assert await link.receive()  # the first chunk of the car's challenge
    air.backend.drop()  # the radio link ends: bleak's disconnected callback fires
    await drain(link)  # chunks notified before the drop are still read, then LinkClosed
    with pytest.raises(LinkClosed):
        await link.send(b"\0\0\0\1")
    with pytest.raises(LinkClosed):
        await car_link.send(b"\0\0\0\1")
    with pytest.raises(LinkClosed):
        await car_link.receive()


@needs_ble
async def test_writes_to_other_characteristics_and_oversized_chunks(car: tuple) -> None:
    air, peripheral, _ = car
    link = await phone(air)
    with pytest.raises(LocalProtocolError):
        await link.send(bytes(air.mtu - 2))
    car_link = peripheral.link
    peripheral._written(type("C", (), {"uuid": gatt.CAR_TO_PHONE_UUID})(), bytearray(b"x"))
    air.server.write_request(gatt.PHONE_TO_CAR_UUID, bytearray(b"\1\2\3\4"))
    assert await car_link.receive() == b"\1\2\3\4"  # only the write characteristic's chunk
    with pytest.raises(LocalProtocolError):
        await car_link.send(bytes(21))
    await link.close()


@needs_ble
@pytest.mark.parametrize(
    ("operation", "raised", "expected"),
    [
        ("connect", BleakError("le-connection-abort-by-local"), LinkClosed),
        ("connect", OSError(113, "No route to host"), LinkClosed),
        ("connect", FileNotFoundError(2, "no D-Bus socket"), gatt.BleUnavailable),
        ("connect", TimeoutError(), LinkTimeout),
        ("start_notify", BleakError("Not connected"), LinkClosed),
    ],
)
async def test_connect_errors_are_mapped(
    operation: str, raised: BaseException, expected: type[Exception]
) -> None:
    air = Air()
    air.fail[operation] = raised
    with pytest.raises(expected) as error:
        await phone(air)
    assert error.value.retry_safe
    assert type(error.value).__module__.startswith("ble_fallback")


@needs_ble
async def test_a_car_without_our_service_is_refused_by_bleak() -> None:
    air = Air()
    factory = bleak_factory(air)

    def wrong(device: object, on_disconnect: object, timeout: float) -> object:
        client = factory(device, on_disconnect, timeout)  # type: ignore[arg-type]
        client._backend.services_factory = lambda: car_services(notify_uuid=gatt.SERVICE_UUID)
        return client

    with pytest.raises(LinkClosed, match="BleakCharacteristicNotFoundError"):
        await BleakLink.connect(address=ADDRESS, client_factory=wrong)  # type: ignore[arg-type]


@needs_ble
async def test_write_errors_are_mapped_and_close_never_raises() -> None:
    air = Air()
    link = await phone(air)
    air.fail["write"] = BleakError("write failed")
    with pytest.raises(LinkClosed) as error:
        await link.send(b"\0\0\0\1")
    assert not isinstance(error.value.__cause__, LinkClosed)
    air.fail["stop_notify"] = air.fail["disconnect"] = BleakError("gone")
    await link.close()
    assert link.closed


@needs_ble
def test_connect_by_name_and_its_timeout() -> None:
    air = Air()

    async def scenario() -> None:
        async def found(name: str, seconds: float) -> BLEDevice:
            return BLEDevice(ADDRESS, name, None)

        link = await BleakLink.connect(
            name="car", client_factory=bleak_factory(air), find_device=found
        )
        assert air.backend is not None
        assert air.backend.address == ADDRESS
        await link.close()

        async def nothing(name: str, seconds: float) -> None:
            return None

        with pytest.raises(LinkTimeout, match="no car advertising"):
            await BleakLink.connect(
                name="car", client_factory=bleak_factory(air), find_device=nothing
            )

        async def hangs(name: str, seconds: float) -> None:
            await asyncio.Event().wait()

        with pytest.raises(LinkTimeout, match=r"within 2\.0 s"):
            await BleakLink.connect(
                name="car",
                connect_timeout=2.0,
                client_factory=bleak_factory(air),
                find_device=hangs,
            )

    run_simulated(scenario())


@needs_ble
def test_the_peripheral_notices_subscriptions_by_polling() -> None:
    air = Air()  # its hooks stay unset: only the peripheral's poll can see the phone
    served: list[Link] = []

    async def scenario() -> None:
        started, ended = asyncio.Event(), asyncio.Event()

        async def serve(link: Link) -> None:
            served.append(link)
            started.set()
            with pytest.raises(LinkClosed):
                await link.receive()
            ended.set()

        peripheral = BlessPeripheral(
            serve, name="car", server_factory=lambda name, loop: FakeServer(name, air)
        )
        await peripheral.start()
        link = await phone(air)
        await started.wait()  # the next poll saw the subscription
        await link.close()
        await ended.wait()  # and a later one saw it end
        await peripheral.stop()

    run_simulated(scenario())
    assert len(served) == 1


@needs_ble
@pytest.mark.skipif(not NO_SYSTEM_BUS, reason="this machine has a D-Bus system bus")
async def test_real_bleak_and_bless_without_a_bluetooth_service() -> None:
    # bleak's BlueZ backend runs until it finds no D-Bus socket; the peripheral looks first
    with pytest.raises(gatt.BleUnavailable, match="no Bluetooth service"):
        await BleakLink.connect(address=ADDRESS, connect_timeout=5.0)
    with pytest.raises(gatt.BleUnavailable, match="no D-Bus system bus"):
        await BlessPeripheral(serve_nothing, name="car").start()


async def serve_nothing(link: Link) -> None:
    await link.close()


def test_importing_without_the_ble_extra() -> None:
    code = (
        "import sys; sys.modules.update(bleak=None, bless=None)\n"
        "import asyncio, ble_fallback, ble_fallback.bleak_link, ble_fallback.bless_link\n"
        "import vehicle_agent.ble\n"
        "from ble_fallback.gatt import BleUnavailable\n"
        "async def main():\n"
        "    for attempt in (ble_fallback.bleak_link.BleakLink.connect(address='x'),\n"
        "                    ble_fallback.bless_link.BlessPeripheral(None, name='car').start()):\n"
        "        try:\n"
        "            await attempt\n"
        "        except BleUnavailable as error:\n"
        "            print(error)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == [
        "closed: bleak is not installed: pip install 'phonekey[ble]'",
        "closed: bless is not installed: pip install 'phonekey[ble]'",
    ]
