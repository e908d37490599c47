"""The car's real BLE side: a GATT server through ``bless`` (the peripheral) that hands each
connected phone to the car's endpoint as a ``Link``.

``BlessPeripheral.start`` publishes the service of ``ble_fallback.gatt`` and advertises. bless
reports no connect event and does not say which central wrote, but it does say whether one is
subscribed to the notify characteristic (``is_connected``) — so a subscription is a connection
here: when one begins, a ``PeripheralLink`` is opened and served (e.g. ``CarEndpoint.serve``);
when it ends, the link drops. Consequently one phone is served at a time over bless. A chunk
received is one write; a chunk sent is the notify characteristic's new value pushed with
``update_value``. bless is imported only when no ``server_factory`` is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ble_fallback.errors import BleReason, LinkClosed, LocalProtocolError
from ble_fallback.gatt import (
    CAR_TO_PHONE_UUID,
    MIN_MTU,
    PHONE_TO_CAR_UUID,
    SERVICE_UUID,
    BleUnavailable,
    library_errors,
    load,
    mapped_errors,
)
from ble_fallback.link import Link, LinkPolicy

log = logging.getLogger(__name__)


class GattServer(Protocol):
    """The part of ``bless.BlessServer`` the peripheral uses (tests inject their own)."""

    write_request_func: Callable[..., Any]
    read_request_func: Callable[..., Any]

    async def start(self) -> Any: ...

    async def stop(self) -> Any: ...

    async def is_connected(self) -> bool: ...

    async def add_new_service(self, uuid: str) -> Any: ...

    async def add_new_characteristic(
        self, service_uuid: str, char_uuid: str, properties: Any, value: Any, permissions: Any
    ) -> Any: ...

    def get_characteristic(self, uuid: str) -> Any: ...

    def update_value(self, service_uuid: str, char_uuid: str) -> bool: ...


#: Builds a server advertising ``name`` on ``loop``.
ServerFactory = Callable[[str, asyncio.AbstractEventLoop], GattServer]
#: Serves one connection until it ends, e.g. ``CarEndpoint.serve``.
Serve = Callable[[Link], Coroutine[Any, Any, None]]


class PeripheralLink:
    """The car's end of one phone connection through the GATT server."""

    def __init__(self, server: GattServer, policy: LinkPolicy) -> None:
        self._server = server
        self._policy = policy
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False

    @property
    def policy(self) -> LinkPolicy:
        return self._policy

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, chunk: bytes) -> None:
        if self._closed:
            raise LinkClosed("car: link is down")
        if len(chunk) > self._policy.chunk_size:
            raise LocalProtocolError(BleReason.BAD_CHUNK, "chunk larger than the MTU allows")
        with mapped_errors("notify"):
            characteristic = self._server.get_characteristic(CAR_TO_PHONE_UUID)
            characteristic.value = bytearray(chunk)
            if not self._server.update_value(SERVICE_UUID, CAR_TO_PHONE_UUID):
                raise LinkClosed("car: the notify characteristic is gone")

    async def receive(self) -> bytes:
        chunk = await self._inbox.get()
        if chunk is None:
            self._inbox.put_nowait(None)  # every later receive fails too
            raise LinkClosed("car: link is down")
        return chunk

    async def close(self) -> None:
        """Stop serving this phone. bless cannot disconnect a central: the phone, hearing
        nothing more, disconnects itself (or its link's idle timeout does)."""
        self.drop()

    def arrive(self, chunk: bytes) -> None:
        if not self._closed:
            self._inbox.put_nowait(chunk)

    def drop(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put_nowait(None)


class BlessPeripheral:
    """The car's GATT server; each phone that subscribes is served by ``serve``.

    ``policy.mtu`` bounds the car's notifications: bless cannot tell the negotiated MTU, so it
    defaults to the 23 every device supports. ``poll_interval`` is how often the server is asked
    whether a phone is subscribed (bless has no event for it; the call is local, not radio).
    """

    def __init__(
        self,
        serve: Serve,
        *,
        name: str,
        policy: LinkPolicy | None = None,
        poll_interval: float | None = None,
        server_factory: ServerFactory | None = None,
    ) -> None:
        self._serve = serve
        self.name = name
        self.policy = policy or LinkPolicy(mtu=MIN_MTU)
        self.poll_interval = poll_interval or self.policy.retry_interval
        self._factory = server_factory or _bless_server
        self._server: GattServer | None = None
        self.link: PeripheralLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    async def start(self) -> None:
        """Publish the service and advertise. Raises BleUnavailable with no BLE stack."""
        loop = asyncio.get_running_loop()
        properties, permissions = _gatt_flags(required=self._factory is _bless_server)
        server = self._factory(self.name, loop)
        try:
            with mapped_errors("start"):
                server.read_request_func = _read_nothing
                server.write_request_func = self._written
                await server.add_new_service(SERVICE_UUID)
                for uuid, kind in ((PHONE_TO_CAR_UUID, "write"), (CAR_TO_PHONE_UUID, "notify")):
                    await server.add_new_characteristic(
                        SERVICE_UUID, uuid, properties[kind], None, permissions[kind]
                    )
                await server.start()
        except BleUnavailable:
            raise
        except LinkClosed as error:
            raise BleUnavailable(error.detail) from error
        except Exception as error:  # bless raises a bare Exception when it finds no adapter
            raise BleUnavailable(f"start: {type(error).__name__}: {error}") from error
        self._server, self._loop, self._thread = server, loop, threading.get_ident()
        self._watcher = loop.create_task(self._watch())
        log.info("event=ble_advertising name=%s service=%s", self.name, SERVICE_UUID)

    async def stop(self) -> None:
        """Stop advertising and serving; waits for the connection being served to end."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.disconnected()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(*library_errors()):
                await server.stop()

    def connected(self) -> None:
        """A phone subscribed: open a link for it and serve it (in a task)."""
        if self._server is None or (self.link is not None and not self.link.closed):
            return
        link = self.link = PeripheralLink(self._server, self.policy)
        task = asyncio.get_running_loop().create_task(self._serve(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("event=ble_central_subscribed name=%s", self.name)

    def disconnected(self) -> None:
        """The phone unsubscribed or disconnected: its link drops."""
        if self.link is not None:
            self.link.drop()
            self.link = None

    async def _watch(self) -> None:
        was = False
        while self._server is not None:
            try:
                now = await self._server.is_connected()
            except library_errors() as error:
                log.warning("event=ble_poll_failed error=%s", type(error).__name__)
                now = False
            if now and not was:
                self.connected()
            elif was and not now:
                self.disconnected()
            was = now
            await asyncio.sleep(self.poll_interval)

    def _written(self, characteristic: Any, value: Any, *_: Any, **__: Any) -> None:
        """bless's write callback; on some platforms it runs off the event loop's thread."""
        link = self.link
        if link is None or str(getattr(characteristic, "uuid", "")).lower() != PHONE_TO_CAR_UUID:
            return  # no phone subscribed yet, or a write to anything but our characteristic
        if threading.get_ident() == self._thread:
            link.arrive(bytes(value))
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(link.arrive, bytes(value))


def _read_nothing(characteristic: Any, *_: Any, **__: Any) -> bytearray:
    return bytearray()  # nothing is readable: chunks go out as notifications only


def _gatt_flags(*, required: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """bless's property and permission flags for the two characteristics; plain names when
    bless is missing but not ``required`` (an injected server has no use for bless's)."""
    try:
        bless = load("bless")
    except BleUnavailable:
        if required:
            raise
        return (
            {"write": "write-without-response", "notify": "notify"},
            {"write": "writeable", "notify": "readable"},
        )
    props, perms = bless.GATTCharacteristicProperties, bless.GATTAttributePermissions
    return (
        {"write": props.write_without_response, "notify": props.notify},
        {"write": perms.writeable, "notify": perms.readable},
    )


def _bless_server(name: str, loop: asyncio.AbstractEventLoop) -> GattServer:
    bless = load("bless")
    if sys.platform == "linux":
        # bless talks to BlueZ over the D-Bus system bus; without one, its dbus_next leaks a
        # socket on every attempt before failing, so look before building the server.
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", _SYSTEM_BUS)
        path = address.removeprefix("unix:path=").split(",")[0]
        if address.startswith("unix:path=") and not os.path.exists(path):
            raise BleUnavailable(f"start: no Bluetooth service (no D-Bus system bus at {path})")
    server: GattServer = bless.BlessServer(name=name, loop=loop)
    return server


_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
