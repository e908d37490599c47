"""The phone's Bluetooth path at the car: find the car, connect, send one command, read its
Result — and say whether anything may have run, which is all the client's policy needs to know
(``phone.client``).

    the Bluetooth path came to                            ``AtCar.kind``    may the cloud run it
    no advertisement within the scan (out of range)       out_of_range      yes: nothing was sent
    busy (Busy answer, or a Result busy / malformed /     not_sent          yes: nothing ran
      late) or a link failure before the request's
      last chunk, on every try
    the car's Result: granted                             granted           no: done
    the car's Result: any other refusal                   denied            no: the car said no
    the request's last chunk went out, no Result          in_doubt          never: it may have run

A busy car is asked again after its ``retry_after`` (up to ``max_busy_wait_s``), a safe failure
at once; both within ``busy_retries`` further connections. Nothing that may have run is retried
(vehicle-command's MayHaveSucceeded rule).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ble_fallback.errors import BleError, CarBusy
from ble_fallback.link import Link
from ble_fallback.messages import LATE
from ble_fallback.phone import unlock_over_ble
from keycore import cose
from keycore.errors import Reason
from keycore.roles import Action

#: Connects the phone to the car over BLE: looks for its advertisement (the radio's scan), then
#: connects; None when no advertisement was seen (out of range). Raises BleError when the
#: connection could not be made (nothing was sent).
ReachCar = Callable[[str], Awaitable[Link | None]]
#: Result codes that say the car did nothing with the request: busy, could not read it, or
#: refused it as late before deciding anything. Such a press is "nothing was sent".
NOTHING_RAN = frozenset({"busy", Reason.MALFORMED.value, LATE})

AtCarKind = Literal["out_of_range", "not_sent", "granted", "denied", "in_doubt"]


@dataclass(frozen=True, slots=True)
class AtCar:
    """What the Bluetooth path came to, and why, in words for the user."""

    kind: AtCarKind
    why: str
    code: str | None = None  # the car's Result code, when it answered

    @property
    def cloud_may_run(self) -> bool:
        """Nothing can have run on this path: the cloud may be asked."""
        return self.kind in ("out_of_range", "not_sent")


@dataclass(frozen=True, slots=True)
class BleTries:
    """How hard the Bluetooth path tries before it says "not sent"."""

    busy_retries: int = 2  # further connections after a busy car or a safe failure
    max_busy_wait_s: float = 5.0  # a car asking for a longer wait is not waited for


async def command_at_car(
    reach: ReachCar,
    token: bytes,
    device: cose.Signer,
    vin: str,
    action: Action,
    *,
    tries: BleTries,
    sleep: Callable[[float], Awaitable[None]],
) -> AtCar:
    """One command over Bluetooth with the wallet's ``token``: see the module's table."""
    why = "not sent"
    for attempt in range(tries.busy_retries + 1):
        last = attempt == tries.busy_retries
        try:
            link = await reach(vin)
        except BleError as error:  # the connection was never made
            why = f"the Bluetooth connection failed ({error.reason.value})"
            continue
        if link is None:
            if attempt == 0:
                return AtCar("out_of_range", "the car is not in Bluetooth range")
            return AtCar("not_sent", f"{why}, then the car was out of Bluetooth range")
        try:
            async with _closing(link):
                result = await unlock_over_ble(link, token, device, action, vin=vin)
        except CarBusy as busy:
            why = "the car is busy with other phones"
            if last or busy.retry_after > tries.max_busy_wait_s:
                break
            await sleep(busy.retry_after)
            continue
        except BleError as error:
            if error.may_have_succeeded:
                return AtCar("in_doubt", "the Bluetooth link failed after the command was sent")
            why = f"Bluetooth failed before sending ({error.reason.value})"
            continue
        if result.granted:
            return AtCar("granted", "granted", result.code)
        if result.code in NOTHING_RAN:
            why = f"the car did not act on the request ({result.code})"
            continue
        return AtCar("denied", f"the car refused over Bluetooth ({result.code})", result.code)
    return AtCar("not_sent", why)


@contextlib.asynccontextmanager
async def _closing(link: Link) -> AsyncIterator[Link]:
    try:
        yield link
    finally:
        with contextlib.suppress(BleError):
            await link.close()
