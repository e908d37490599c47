"""The phone's real BLE link: a ``Link`` over a ``bleak.BleakClient`` (the GATT central).

``BleakLink.connect`` finds the car by address or advertised name, connects within a timeout,
takes its chunk size from the negotiated MTU and subscribes to the car → phone characteristic.
A chunk sent is one write without response; a chunk received is one notification. bleak's
errors become ``ble_fallback`` errors here; bleak itself is imported only when a link is made
without an injected ``client_factory`` (the ``ble`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ble_fallback.errors import BleReason, LinkClosed, LinkTimeout, LocalProtocolError
from ble_fallback.gatt import (
    CAR_TO_PHONE_UUID,
    PHONE_TO_CAR_UUID,
    BleUnavailable,
    library_errors,
    load,
    mapped_errors,
)
from ble_fallback.link import LinkPolicy

log = logging.getLogger(__name__)


class GattClient(Protocol):
    """The part of ``bleak.BleakClient`` the link uses (tests inject their own)."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def mtu_size(self) -> int: ...

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def start_notify(
        self, char_specifier: str, callback: Callable[[Any, bytearray], None]
    ) -> None: ...

    async def stop_notify(self, char_specifier: str) -> None: ...

    async def write_gatt_char(
        self, char_specifier: str, data: bytes, response: bool | None = None
    ) -> None: ...


#: Builds a client for ``device`` (an address or a found device) that calls ``on_disconnect``.
ClientFactory = Callable[[Any, Callable[[Any], None], float], GattClient]
#: Finds a device by its advertised name within a timeout; None when nothing answered.
DeviceFinder = Callable[[str, float], Awaitable[Any]]


class BleakLink:
    """One connection to a car, from the phone. Make it with ``BleakLink.connect``."""

    def __init__(self, client: GattClient, policy: LinkPolicy) -> None:
        self._client = client
        self._policy = policy
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        *,
        address: str | None = None,
        name: str | None = None,
        policy: LinkPolicy | None = None,
        connect_timeout: float = 10.0,
        client_factory: ClientFactory | None = None,
        find_device: DeviceFinder | None = None,
    ) -> BleakLink:
        """Connect to the car at ``address`` or advertising ``name`` (exactly one).

        Raises BleUnavailable (no bleak, no Bluetooth service), LinkTimeout (not found or no
        connection within ``connect_timeout``) or LinkClosed (the connection failed).
        """
        if (address is None) == (name is None):
            raise ValueError("give exactly one of address and name")
        factory = client_factory or _bleak_client
        policy = policy or LinkPolicy()
        link: BleakLink | None = None
        client: GattClient | None = None

        def on_disconnect(_client: object) -> None:
            if link is not None:
                link._dropped()

        try:
            async with asyncio.timeout(connect_timeout):
                device: Any = address
                if name is not None:
                    with mapped_errors("scan"):
                        device = await (find_device or _find_by_name)(name, connect_timeout)
                    if device is None:
                        raise LinkTimeout(f"no car advertising {name!r}")
                client = factory(device, on_disconnect, connect_timeout)
                with mapped_errors("connect"):
                    await client.connect()
                    link = cls(client, dataclasses.replace(policy, mtu=client.mtu_size))
                    await client.start_notify(CAR_TO_PHONE_UUID, link._notified)
        except BaseException as error:
            if client is not None:  # never leave a half-open connection behind
                await (link or cls(client, policy)).close()
            if isinstance(error, TimeoutError):
                raise LinkTimeout(f"no connection within {connect_timeout} s") from None
            raise
        if not client.is_connected:  # dropped before the link could hear of it
            link._dropped()
        log.info("event=ble_connected mtu=%d chunk=%d", client.mtu_size, link.policy.chunk_size)
        return link

    @property
    def policy(self) -> LinkPolicy:
        return self._policy

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, chunk: bytes) -> None:
        if self._closed:
            raise LinkClosed("phone: link is down")
        if len(chunk) > self._policy.chunk_size:
            raise LocalProtocolError(BleReason.BAD_CHUNK, "chunk larger than the MTU allows")
        with mapped_errors("write"):
            await self._client.write_gatt_char(PHONE_TO_CAR_UUID, chunk, response=False)

    async def receive(self) -> bytes:
        """The next notification. A link silent for the policy's idle timeout is treated as
        dropped: a radio does not always report a disconnect, and the car closes one by then."""
        try:
            async with asyncio.timeout(self._policy.idle_timeout):
                chunk = await self._inbox.get()
        except TimeoutError:
            raise LinkTimeout("phone: no notification within the idle timeout") from None
        if chunk is None:
            self._inbox.put_nowait(None)  # every later receive fails too
            raise LinkClosed("phone: link is down")
        return chunk

    async def close(self) -> None:
        """Unsubscribe and disconnect; never raises (the link may already be gone)."""
        if self._closed:
            return
        self._dropped()
        with contextlib.suppress(*library_errors(), TimeoutError):
            if self._client.is_connected:
                await self._client.stop_notify(CAR_TO_PHONE_UUID)
        with contextlib.suppress(*library_errors(), TimeoutError):
            await self._client.disconnect()

    def _notified(self, _characteristic: object, data: bytearray) -> None:
        if not self._closed:
            self._inbox.put_nowait(bytes(data))

    def _dropped(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put_nowait(None)
            log.info("event=ble_disconnected")


def _bleak_client(device: Any, on_disconnect: Callable[[Any], None], timeout: float) -> GattClient:
    bleak = load("bleak")
    client: GattClient = bleak.BleakClient(
        device, disconnected_callback=on_disconnect, timeout=timeout
    )
    return client


async def _find_by_name(name: str, seconds: float) -> Any:
    bleak = load("bleak")
    return await bleak.BleakScanner.find_device_by_name(name, timeout=seconds)


__all__ = ["BleUnavailable", "BleakLink", "ClientFactory", "DeviceFinder", "GattClient"]
