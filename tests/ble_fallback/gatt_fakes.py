"""Radio-less stand-ins behind the BLE libraries' own seams, for the adapter tests.

``FakeBackend`` is a bleak client backend (bleak's ``backend=`` parameter): the real
``bleak.BleakClient`` runs over it — characteristic lookup by UUID, the notify-callback wrapping,
the disconnected callback. ``FakeServer`` is a ``bless`` server on bless's own base class: its
write dispatch (``write_request`` → ``get_characteristic`` → ``write_request_func``) is bless's.
``Air`` joins the two so a phone on bleak talks to a car on bless with no radio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bless.backends.server import BaseBlessServer

from ble_fallback.gatt import CAR_TO_PHONE_UUID, PHONE_TO_CAR_UUID, SERVICE_UUID


class Air:
    """What joins a phone's FakeBackend to a car's FakeServer; None while nobody is there."""

    def __init__(self) -> None:
        self.server: FakeServer | None = None
        self.backend: FakeBackend | None = None
        self.mtu = 100
        self.on_subscribe: Callable[[], None] = lambda: None
        self.on_unsubscribe: Callable[[], None] = lambda: None
        self.fail: dict[str, BaseException] = {}  # operation name → what the backend raises


def car_services(
    *, write_uuid: str = PHONE_TO_CAR_UUID, notify_uuid: str = CAR_TO_PHONE_UUID
) -> BleakGATTServiceCollection:
    """The car's GATT table as bleak's service discovery would build it."""
    services = BleakGATTServiceCollection()
    service = BleakGATTService(None, 1, SERVICE_UUID)
    services.add_service(service)
    for handle, uuid, props in (
        (2, write_uuid, "write-without-response"),
        (4, notify_uuid, "notify"),
    ):
        services.add_characteristic(
            BleakGATTCharacteristic(None, handle, uuid, [props], lambda: 20, service)
        )
    return services


class FakeBackend(BaseBleakClient):
    """A bleak backend whose radio is an ``Air``; records every write."""

    air: Air  # set by ``client_factory`` before use
    services_factory = staticmethod(car_services)

    def __init__(self, address: Any, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self.connected = False
        self.writes: list[tuple[str, bytes, bool]] = []
        self.notify: dict[str, Callable[[bytearray], None]] = {}
        self.calls: list[str] = []

    @property
    def mtu_size(self) -> int:
        return self.air.mtu

    @property
    def is_connected(self) -> bool:
        return self.connected

    def _maybe_fail(self, operation: str) -> None:
        self.calls.append(operation)
        if operation in self.air.fail:
            raise self.air.fail[operation]

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        self._maybe_fail("connect")
        self.connected, self.services = True, self.services_factory()
        self.air.backend = self

    async def disconnect(self) -> None:
        self._maybe_fail("disconnect")
        if self.connected:
            self.drop()

    def drop(self) -> None:
        """The radio link ends (as on a disconnect from either side)."""
        self.connected = False
        if self.notify:
            self.notify.clear()
            self.air.on_unsubscribe()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        self._maybe_fail("write")
        self.writes.append((characteristic.uuid, bytes(data), response))
        if self.air.server is not None:
            self.air.server.write_request(characteristic.uuid, bytearray(data))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: Any, **kwargs: Any
    ) -> None:
        self._maybe_fail("start_notify")
        self.notify[characteristic.uuid] = callback
        self.air.on_subscribe()

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._maybe_fail("stop_notify")
        if self.notify.pop(characteristic.uuid, None) is not None:
            self.air.on_unsubscribe()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def unpair(self) -> None:
        raise NotImplementedError

    async def read_gatt_char(self, *args: Any, **kwargs: Any) -> bytearray:
        raise NotImplementedError

    async def read_gatt_descriptor(self, *args: Any, **kwargs: Any) -> bytearray:
        raise NotImplementedError

    async def write_gatt_descriptor(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def bleak_factory(air: Air) -> Callable[[Any, Callable[[Any], None], float], BleakClient]:
    """A ``client_factory`` that builds a real BleakClient on a FakeBackend."""

    def factory(device: Any, on_disconnect: Callable[[Any], None], timeout: float) -> BleakClient:
        backend = type("Backend", (FakeBackend,), {"air": air})
        return BleakClient(device, on_disconnect, timeout=timeout, backend=backend)

    return factory


class _Characteristic:
    def __init__(self, uuid: str, properties: Any, permissions: Any) -> None:
        self.uuid, self.properties, self.permissions = uuid, properties, permissions
        self.value = bytearray()


class _Service:
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.characteristics: dict[str, _Characteristic] = {}

    def get_characteristic(self, uuid: str) -> _Characteristic | None:
        return self.characteristics.get(str(UUID(uuid)))


class FakeServer(BaseBlessServer):
    """A bless server with an in-memory GATT table; notifications go to the Air's phone."""

    def __init__(self, name: str, air: Air, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name, self.air = name, air
        self.started = False
        self.notified: list[bytes] = []
        air.server = self

    async def start(self, **kwargs: Any) -> bool:
        if "start" in self.air.fail:
            raise self.air.fail["start"]
        self.started = True
        return True

    async def stop(self) -> bool:
        self.started = False
        return True

    async def is_connected(self) -> bool:
        backend = self.air.backend
        return backend is not None and CAR_TO_PHONE_UUID in backend.notify

    async def is_advertising(self) -> bool:
        return self.started

    async def add_new_service(self, uuid: str) -> None:
        self.services[str(UUID(uuid))] = _Service(str(UUID(uuid)))

    async def add_new_characteristic(
        self, service_uuid: str, char_uuid: str, properties: Any, value: Any, permissions: Any
    ) -> None:
        service = self.services[str(UUID(service_uuid))]
        service.characteristics[str(UUID(char_uuid))] = _Characteristic(
            str(UUID(char_uuid)), properties, permissions
        )

    async def add_new_descriptor(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def update_value(self, service_uuid: str, char_uuid: str) -> bool:
        service = self.get_service(service_uuid)
        if service is None:
            return False
        value = bytes(service.get_characteristic(char_uuid).value)
        self.notified.append(value)
        backend = self.air.backend
        callback = None if backend is None else backend.notify.get(str(UUID(char_uuid)))
        if callback is not None:
            callback(bytearray(value))
        return True
