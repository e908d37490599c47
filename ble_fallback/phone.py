"""The phone's side of the BLE fallback: unlock a car, and carry documents to it, over a Link.

One exchange at a time: the phone sends, then re-sends the same frame every retry interval
until the car's Result arrives (the car answers a repeat from its cache, so nothing runs twice).
When a command was sent and no result came back, the error says ``may_have_succeeded`` and the
phone must not replay it. A ``late`` refusal is retried with the car's fresh challenge: the car
refused it before deciding anything. Any Result is the car's word that it handled the message:
only ``granted`` ran anything; ``malformed`` says the car could not even read the request (a
DER-encoded proof, a wrong-typed field), so sending the same bytes again cannot help.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ble_fallback.errors import CarBusy, LinkClosed, LinkTimeout
from ble_fallback.link import Link
from ble_fallback.messages import (
    LATE,
    CarStatus,
    Courier,
    Result,
    RevocationList,
    TimeAnswer,
    TrustUpdate,
    UnlockRequest,
)
from ble_fallback.protocol import (
    BusyReceived,
    NeedData,
    PhoneEvent,
    PhoneSession,
    ResultReceived,
)
from keycore import cose
from keycore.errors import InvalidToken
from keycore.proof import prove
from keycore.roles import Action
from keycore.token import MAX_TOKEN_BYTES, TYP_KEY_TOKEN, decode_claims

log = logging.getLogger(__name__)

#: Fetches a server-signed time answer to the car's nonce (the keyserver, when online).
SignedTimeSource = Callable[[bytes], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class BleUnlockResult:
    """The car's decision. ``code`` is "granted" or why not; ``car`` is what the car knows now."""

    granted: bool
    code: str
    action: Action
    car: CarStatus
    attempts: int  # unlock requests sent (a ``late`` answer is retried with a fresh challenge)
    round_trips: int  # car messages waited for on this connection, the challenge included


class CarConnection:
    """The phone's connection to one car, opened by the car's challenge."""

    def __init__(self, link: Link) -> None:
        self.link = link
        policy = link.policy
        self.session = PhoneSession(chunk_size=policy.chunk_size, gap_timeout=policy.gap_timeout)
        self.round_trips = 0

    @classmethod
    async def open(cls, link: Link) -> CarConnection:
        """Wait for the car's challenge (it re-sends it); raises CarBusy, LinkTimeout, ..."""
        connection = cls(link)
        policy = link.policy
        deadline = _now() + policy.retry_interval * policy.max_attempts
        event = await connection._next(deadline)
        if event is None:
            raise LinkTimeout("no challenge from the car")
        if isinstance(event, BusyReceived):
            raise CarBusy(event.busy.retry_after_ms / 1000)
        connection.round_trips += 1
        return connection

    @property
    def status(self) -> CarStatus:
        assert self.session.challenge is not None
        return self.session.challenge.status

    async def unlock(
        self,
        token: bytes,
        device: cose.Signer,
        action: Action,
        *,
        vin: str | None = None,
        late_retries: int = 2,
    ) -> BleUnlockResult:
        """Ask the car to perform ``action``, proving possession of ``device``'s key."""
        vin = vin_of(token) if vin is None else vin
        attempt = 0
        while True:
            attempt += 1
            assert self.session.challenge is not None
            nonce = self.session.challenge.nonce
            proof = prove(device, challenge=nonce, vin=vin, action=action, token=token)
            result = await self.exchange(UnlockRequest(token, action, proof))
            if result.code != LATE or attempt > late_retries:
                break
            log.info("event=ble_late_retry attempt=%d", attempt)
        return BleUnlockResult(
            result.ok, result.code, action, result.status, attempt, self.round_trips
        )

    async def carry(
        self,
        *,
        trust_update: bytes | None = None,
        signed_time: SignedTimeSource | None = None,
        revocation_list: bytes | None = None,
    ) -> list[Result]:
        """Hand the car newer documents. Trust first (a list may be signed by a new issuer key),
        then time (a list's issuer key is judged at the car's time), then revocations."""
        results = []
        if trust_update is not None:
            results.append(await self.exchange(TrustUpdate(trust_update)))
        if signed_time is not None:
            assert self.session.challenge is not None
            answer = await signed_time(self.session.challenge.time_nonce)
            results.append(await self.exchange(TimeAnswer(answer)))
        if revocation_list is not None:
            results.append(await self.exchange(RevocationList(revocation_list)))
        return results

    async def exchange(self, message: UnlockRequest | Courier) -> Result:
        """Send ``message`` and return the car's Result, re-sending until it comes."""
        policy = self.link.policy
        command = isinstance(message, UnlockRequest)
        chunks = self.session.send(message)
        in_doubt = False
        try:
            for i, chunk in enumerate(chunks):
                in_doubt = command and i == len(chunks) - 1
                await self.link.send(chunk)
            for sends in range(1, policy.max_attempts + 1):
                event = await self._next(_now() + policy.retry_interval)
                if isinstance(event, ResultReceived):
                    self.round_trips += 1
                    return event.result
                if sends < policy.max_attempts:
                    await _send_all(self.link, self.session.retransmit())
        except LinkClosed as error:
            raise LinkClosed(error.detail, may_have_succeeded=in_doubt) from None
        raise LinkTimeout("no result from the car", may_have_succeeded=command)

    async def _next(self, deadline: float) -> PhoneEvent | None:
        """The next event, or None at ``deadline``."""
        event = self.session.next_event()
        if not isinstance(event, NeedData):
            return event
        try:
            async with asyncio.timeout_at(deadline):
                while isinstance(event, NeedData):
                    self.session.receive_data(await self.link.receive(), _now())
                    event = self.session.next_event()
        except TimeoutError:
            return None
        return event


async def unlock_over_ble(
    link: Link, token: bytes, device: cose.Signer, action: Action, *, vin: str | None = None
) -> BleUnlockResult:
    """Connect-to-result unlock over ``link``: the car's challenge, our request, its result."""
    connection = await CarConnection.open(link)
    return await connection.unlock(token, device, action, vin=vin)


async def carry_over_ble(
    link: Link,
    *,
    trust_update: bytes | None = None,
    signed_time: SignedTimeSource | None = None,
    revocation_list: bytes | None = None,
) -> list[Result]:
    """Carry documents to the car; each Result says ``applied`` or why not (e.g. ``stale``)."""
    connection = await CarConnection.open(link)
    return await connection.carry(
        trust_update=trust_update, signed_time=signed_time, revocation_list=revocation_list
    )


def vin_of(token: bytes) -> str:
    """The VIN a key token is for, read without verifying it (the phone trusts its own wallet)."""
    try:
        msg = cose.parse_sign1(
            token, typ=TYP_KEY_TOKEN, max_size=MAX_TOKEN_BYTES, error=InvalidToken
        )
        return decode_claims(msg.payload, msg.kid).vin
    except InvalidToken:
        raise ValueError("not a key token") from None


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _send_all(link: Link, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        await link.send(chunk)
