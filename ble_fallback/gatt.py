"""The car's GATT service (its fixed UUIDs) and what the two BLE adapters share.

One primary service with two characteristics; the phone is the GATT client (central), the car
the server (peripheral). Every chunk of docs/protocol.md §16.1 is one GATT operation:

    service      107d0001-b72e-47d0-8f92-1ef6d7c1227c
    phone → car  107d0002-b72e-47d0-8f92-1ef6d7c1227c   write without response
    car → phone  107d0003-b72e-47d0-8f92-1ef6d7c1227c   notify

Writes without response and notifications are unacknowledged on purpose: the protocol core
retransmits whole frames itself (§16.4), and waiting for per-write acks is what made field
unlocks take seconds. The BLE libraries (``bleak`` on the phone, ``bless`` on the car) come with
the ``ble`` extra; they are imported only when an adapter is built, and their errors are mapped
here to ``ble_fallback.errors`` so none leaks past an adapter.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

from ble_fallback.errors import BleReason, LinkClosed, LinkError, LinkTimeout

SERVICE_UUID = "107d0001-b72e-47d0-8f92-1ef6d7c1227c"
PHONE_TO_CAR_UUID = "107d0002-b72e-47d0-8f92-1ef6d7c1227c"
CAR_TO_PHONE_UUID = "107d0003-b72e-47d0-8f92-1ef6d7c1227c"

#: The ATT MTU every BLE device supports. The car cannot learn the negotiated MTU through
#: ``bless``, so it notifies in chunks that fit this one unless told otherwise.
MIN_MTU = 23

INSTALL_HINT = "pip install 'phonekey[ble]'"


class BleUnavailable(LinkError):
    """No BLE stack: the ``ble`` extra is not installed, or the OS has no Bluetooth service.

    Nothing was sent, so retrying (elsewhere, or later) is always safe.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(BleReason.CLOSED, detail)


def load(name: str) -> ModuleType:
    """Import a BLE library of the ``ble`` extra, or raise BleUnavailable saying how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BleUnavailable(f"{name} is not installed: {INSTALL_HINT}") from None


def library_errors() -> tuple[type[BaseException], ...]:
    """What the BLE libraries raise for a failed operation, whichever of them is installed.

    OSError covers a missing D-Bus socket or a dead adapter; EOFError a D-Bus connection that
    closed mid-call.
    """
    errors: list[type[BaseException]] = [OSError, EOFError]
    for module, name in (
        ("bleak.exc", "BleakError"),
        ("bless.exceptions", "BlessError"),
        ("dbus_next.errors", "DBusError"),
        ("dbus_fast.errors", "DBusError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


@contextlib.contextmanager
def mapped_errors(operation: str) -> Iterator[None]:
    """Raise ``ble_fallback`` errors for what a BLE library raises during ``operation``.

    The original stays chained as the cause for operators; the message names only the
    operation and the library's exception type (never a chunk: it may hold a token).
    """
    try:
        yield
    except LinkError:
        raise
    except TimeoutError as error:
        raise LinkTimeout(f"{operation}: timed out") from error
    except library_errors() as error:
        if _no_stack(error):
            raise BleUnavailable(
                f"{operation}: no Bluetooth service ({type(error).__name__})"
            ) from error
        raise LinkClosed(f"{operation}: {type(error).__name__}") from error


def _no_stack(error: BaseException) -> bool:
    """The OS has no Bluetooth stack to talk to (no D-Bus system bus, no BlueZ, no adapter)."""
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        return True
    name = type(error).__name__
    return name == "BleakBluetoothNotAvailableError"
