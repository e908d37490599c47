"""The reference phone client: a remote command goes through the cloud, or over Bluetooth with the
wallet's key when the cloud cannot do it — never both for one command — and the wallet is kept
refreshed while online.

The fallback policy (``PhoneClient.command``), by what the cloud path came to:

    cloud path came to                                  car in BLE range     car out of range
    final: executed / failed / expired                  cloud result         cloud result
    refused before acting: connection refused,          BLE                  none
      connect timeout, breaker open, 429, 500,
      503 (not outcome_unknown), 401 (session)
    202 queued + ``car_unreachable`` hint, or a         BLE                  cloud: queued,
      ``PK-Degraded`` header / ``degraded`` field                            may have succeeded
    may have acted: POST sent and answer lost or        cloud: may have      cloud: may have
      timed out, 502, 504, 503 outcome_unknown,         succeeded, no BLE    succeeded
      unreadable 2xx, not final by the deadline
    other 4xx (not entitled, unknown vehicle, ...)      cloud: refused       cloud: refused

On the BLE path a ``CarBusy`` is retried after its ``retry_after`` and a failure before the
request was sent is retried, both within ``busy_retries``; an error with ``may_have_succeeded``
is never retried (vehicle-command's MayHaveSucceeded rule). The car's Result is final and says
what ran:

    the car's Result        outcome
    granted                 ok, status "granted"
    malformed               nothing ran: counts as "nothing was sent" (status "not_sent",
                            code "malformed"); the car could not read the request, so the
                            same request is not sent again — a phone bug to fix, not a denial
    any other code          nothing ran: status "denied", code = the car's reason

(a cloud copy of the command still queued keeps ``may_have_succeeded`` in every row but the
first, as below).

Against overload (G6): every request carries its deadline (``PK-Deadline-Ms``); an adaptive
throttle (SRE, K = 2) refuses cloud requests locally while the cloud answers 429/503 — a local
refusal is a "refused before acting", like a 429 — and after a Retry-After the cloud is not asked
again until it has passed. Re-reading a command after a failed read spends from a retry budget.
A 429 ``deadline_exceeded`` to a write means the cloud may have acted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from ble_fallback.errors import BleError, CarBusy
from ble_fallback.link import Link
from ble_fallback.messages import MALFORMED
from ble_fallback.phone import unlock_over_ble
from ble_fallback.wallet import KeyWallet, WalletCorrupt, WalletEntry, read_token
from keycore import cose
from keycore.breaker import CallNotPermitted, CircuitBreaker
from keycore.overload import DEADLINE_HEADER, AdaptiveThrottle, RetryBudget
from keycore.request_proof import HEADER, sign_request
from keycore.roles import Action
from keycore.token import check_vin

log = logging.getLogger(__name__)

DAY = 86_400
DEGRADED_HEADER = "PK-Degraded"
MAX_ANSWER_BYTES = 64 * 1024  # a keyserver answer is a small JSON object
#: Connects the phone to the car over BLE; None when the car is out of range.
ReachCar = Callable[[str], Awaitable[Link | None]]
CommandPath = Literal["cloud", "ble", "none"]

_FINAL = ("executed", "failed", "expired")
_DONE = {
    Action.UNLOCK: "unlocked", Action.LOCK: "locked", Action.START: "started",
    Action.TRUNK: "opened the trunk", Action.CLIMATE: "turned on the climate",
}  # fmt: skip
_CHECK = "it may have succeeded: check the car before trying again"
_STAYS_QUEUED = "the command stays queued and runs only if the car connects before it expires"


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    cloud_timeout_s: float = 5.0  # one request, connect to last byte
    follow_deadline_s: float = 20.0  # from the POST until the command must be final
    poll_interval_s: float = 0.5
    refresh_ahead_s: int = 3 * DAY  # renew tokens this long before they expire
    busy_retries: int = 2  # further BLE connections after a busy car or a safe failure
    max_busy_wait_s: float = 5.0  # a car asking for a longer wait is not waited for
    max_retry_after_s: float = 60.0  # the cloud's Retry-After is honoured up to this


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What happened to one command, and a sentence for the user saying which path and why."""

    path: CommandPath
    ok: bool
    status: str  # the cloud command's state, or granted / denied / unknown / busy / not_sent
    reason: str
    fell_back: bool = False
    may_have_succeeded: bool = False
    command_id: str | None = None
    code: str | None = None  # the car's reason code on a BLE denial, the keyserver's on a refusal


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    vin: str
    refreshed: bool
    reason: str
    expires: int  # of the token the wallet holds now


class _CloudFailure(Exception):
    """The cloud did not do the request. ``in_doubt``: it may have acted all the same."""

    def __init__(self, why: str, *, in_doubt: bool, code: str | None = None) -> None:
        super().__init__(why)
        self.why, self.in_doubt, self.code = why, in_doubt, code


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or None


@dataclass(frozen=True, slots=True)
class _Fallback:
    """The cloud cannot do it and has not done it: the BLE path may run."""

    why: str
    queued: Mapping[str, Any] | None = None  # the cloud's queued command, when there is one


class PhoneClient:
    """One phone: its device key, its account session, the keyserver, its wallet and the car."""

    def __init__(
        self,
        *,
        base_url: str,
        session_token: str,
        device: cose.Signer,
        http: aiohttp.ClientSession,
        wallet: KeyWallet,
        reach_car: ReachCar,
        breaker: CircuitBreaker | None = None,
        policy: ClientPolicy | None = None,
        throttle: AdaptiveThrottle | None = None,
        retry_budget: RetryBudget | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session_token = session_token
        self._device = device
        self.device_id = cose.holder_id(cose.point_bytes(device.public_key)).hex()
        self._http = http
        self.wallet = wallet
        self._reach_car = reach_car
        self.breaker = breaker
        self.policy = policy or ClientPolicy()
        self.throttle = throttle or AdaptiveThrottle()
        self.retry_budget = retry_budget or RetryBudget()
        self._quiet_until = 0.0  # loop time before which the cloud asked not to be asked
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"PhoneClient(base_url={self.base_url!r}, device_id={self.device_id!r})"

    # -- the wallet ------------------------------------------------------------------------

    def remember(
        self, answer: Mapping[str, Any], *, now: int, vin: str | None = None
    ) -> WalletEntry:
        """Hold the token of a key answer (issue, accept or refresh). ValueError, and nothing
        stored, unless it is a key token for this phone's device key (and for ``vin``)."""
        token = _token_of(answer)
        claims = read_token(token)
        if claims.holder != cose.point_bytes(self._device.public_key):
            raise ValueError("the token is bound to another device")
        if vin is not None and claims.vin != vin:
            raise ValueError("the token is for another car")
        return self.wallet.put(str(answer["key_id"]), token, now=now)

    async def refresh_wallet(self, now: int) -> list[RefreshOutcome]:
        """Renew every token due at ``now``. A failure keeps the old token and is reported."""
        outcomes = []
        for entry in self.wallet.due_for_refresh(now, self.policy.refresh_ahead_s):
            outcomes.append(await self._refresh(entry, now))
        return outcomes

    async def _refresh(self, entry: WalletEntry, now: int) -> RefreshOutcome:
        def kept(why: str) -> RefreshOutcome:
            log.warning("event=token_refresh_failed vin=%s why=%s", entry.vin, why)
            return RefreshOutcome(entry.vin, False, f"kept the old token: {why}", entry.expires)

        path = f"/v1/keys/{entry.key_id}/token"
        # the current token goes along: with its store down, the keyserver can still re-sign a
        # valid, unrevoked token from its key ring (a degraded refresh)
        body = json.dumps({"token": _b64url(entry.token)}).encode()
        try:
            reply = await self._send(
                "POST", path, body, now=now, budget_s=self.policy.cloud_timeout_s
            )
        except _CloudFailure as failure:
            return kept(failure.why)
        if reply.status != 200:
            return kept(f"HTTP {reply.status} {_error_code(reply.body) or ''}".rstrip())
        try:
            fresh = self.remember(reply.body, now=now, vin=entry.vin)
        except ValueError:
            return kept("the keyserver's answer holds no usable token for this car")
        log.info("event=token_refreshed vin=%s expires=%d", fresh.vin, fresh.expires)
        return RefreshOutcome(fresh.vin, True, f"valid until {fresh.valid_until}", fresh.expires)

    # -- commands --------------------------------------------------------------------------

    async def command(self, vin: str, action: Action | str) -> CommandOutcome:
        """Do ``action`` on the car: through the cloud, or over BLE when the cloud cannot and
        has not done it. Raises ValueError for a bad VIN or action, nothing else."""
        check_vin(vin)
        act = _action(action)
        cloud = await self._cloud_command(vin, act)
        outcome = cloud if isinstance(cloud, CommandOutcome) else await self._ble(vin, act, cloud)
        log.info(
            "event=phone_command vin=%s action=%s path=%s status=%s fell_back=%s "
            "may_have_succeeded=%s command_id=%s",
            vin, act.name.lower(), outcome.path, outcome.status, outcome.fell_back,
            outcome.may_have_succeeded, outcome.command_id,
        )  # fmt: skip
        return outcome

    async def over_ble(self, vin: str, action: Action | str) -> CommandOutcome:
        """Do ``action`` over BLE only: for a user who checked the car after an outcome that
        may have succeeded, and asks again knowingly."""
        check_vin(vin)
        act = _action(action)
        return await self._ble(vin, act, _Fallback("you asked for Bluetooth"))

    async def _cloud_command(self, vin: str, action: Action) -> CommandOutcome | _Fallback:
        deadline = asyncio.get_running_loop().time() + self.policy.follow_deadline_s
        key = secrets.token_urlsafe(16)  # fresh per command: a repeat is never a new command
        body = json.dumps({"action": action.name.lower(), "idempotency_key": key}).encode()
        try:
            reply = await self._send(
                "POST", f"/v1/vehicles/{vin}/commands", body,
                now=int(self._clock()), budget_s=self.policy.cloud_timeout_s,
            )  # fmt: skip
        except _CloudFailure as failure:
            if failure.in_doubt:
                return _in_doubt(f"the cloud {failure.why} after the command was sent")
            return _Fallback(f"cloud unreachable ({failure.why})")
        if reply.status == 401:
            return _Fallback("the cloud refused the session (sign in again)")
        if reply.status == 202 and isinstance(reply.body, dict):
            status, command_id = reply.body.get("status"), reply.body.get("command_id")
            if status == "not_sent":  # the store write certainly failed: nothing will run
                return _Fallback("the cloud could not record the command (degraded)")
            if status == "may_be_queued":
                return _in_doubt(
                    "the cloud may have queued the command (degraded)",
                    status="queued", command_id=command_id if isinstance(command_id, str) else None,
                )  # fmt: skip
        view = _command_view(reply.body)
        if reply.status not in (200, 202):
            code = _error_code(reply.body)
            why = f"the cloud refused the command (HTTP {reply.status}{f' {code}' if code else ''})"
            return CommandOutcome("cloud", False, "refused", why, code=code)
        if view is None:
            return _in_doubt("the cloud's answer to the command was unreadable")
        degraded = DEGRADED_HEADER in reply.headers or isinstance(reply.body.get("degraded"), dict)
        hint = view.get("hint")
        unreachable = isinstance(hint, dict) and hint.get("code") == "car_unreachable"
        if view["status"] == "queued" and (unreachable or degraded):
            why = "the car is not reachable from the cloud" if unreachable else "cloud degraded"
            return _Fallback(why, queued=view)
        return await self._follow(action, view, deadline)

    async def _follow(
        self, action: Action, view: Mapping[str, Any], deadline: float
    ) -> CommandOutcome:
        """Read the command's state until it is final or the deadline passes."""
        loop = asyncio.get_running_loop()
        command_id = str(view["command_id"])
        failed = False
        while view["status"] not in _FINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return _in_doubt(
                    f"the cloud accepted the command but it was still {view['status']} after "
                    f"{self.policy.follow_deadline_s:g} s",
                    status=str(view["status"]), command_id=command_id,
                )  # fmt: skip
            await self._sleep(min(self.policy.poll_interval_s, remaining))
            budget = max(0.0, min(self.policy.cloud_timeout_s, deadline - loop.time()))
            if failed and not self.retry_budget.try_spend():
                continue  # a read after a failed one is a retry: only within the budget
            if not failed:
                self.retry_budget.on_request()
            failed = True
            with contextlib.suppress(_CloudFailure):  # a lost read changes nothing: read again
                reply = await self._send("GET", f"/v1/commands/{command_id}", None, budget_s=budget)
                failed = False
                read = _command_view(reply.body) if reply.status == 200 else None
                view = view if read is None else read
        return _final(action, view)

    async def _ble(self, vin: str, action: Action, fallback: _Fallback) -> CommandOutcome:
        why, queued = fallback.why, fallback.queued
        command_id = None if queued is None else str(queued["command_id"])

        def outcome(ok: bool, status: str, reason: str, **more: Any) -> CommandOutcome:
            if queued is not None and not ok:  # the cloud's copy may still run
                reason += f"; {_STAYS_QUEUED}"
                more["may_have_succeeded"] = True
            return CommandOutcome("ble", ok, status, f"{why}; {reason}", True,
                                  command_id=command_id, **more)  # fmt: skip

        try:
            entry = self.wallet.usable(vin, self._clock())
        except WalletCorrupt:
            entry = None  # an unreadable row holds no key we could use
            log.error("event=wallet_corrupt vin=%s", vin)
        if entry is None:
            return _nothing_sent(why, "the phone holds no valid key for this car", queued)
        for attempt in range(self.policy.busy_retries + 1):
            last = attempt == self.policy.busy_retries
            try:
                link = await self._reach_car(vin)
            except BleError:
                link = None
            if link is None:
                return _nothing_sent(why, "the car is not in Bluetooth range", queued)
            try:
                async with _closing(link):
                    result = await unlock_over_ble(link, entry.token, self._device, action, vin=vin)
            except CarBusy as busy:
                if last or busy.retry_after > self.policy.max_busy_wait_s:
                    return outcome(False, "busy", "the car is busy with other phones; try again")
                await self._sleep(busy.retry_after)
                continue
            except BleError as error:
                if error.may_have_succeeded:
                    return outcome(False, "unknown", f"the Bluetooth link failed: {_CHECK}",
                                   may_have_succeeded=True)  # fmt: skip
                if last:
                    return outcome(False, "failed", f"Bluetooth failed ({error.reason.value})")
                continue
            if result.code == MALFORMED:
                return outcome(False, "not_sent", "the car could not read the phone's Bluetooth "
                               "request (malformed), so nothing ran", code=result.code)  # fmt: skip
            if not result.granted:
                return outcome(False, "denied", f"the car refused over Bluetooth ({result.code})",
                               code=result.code)  # fmt: skip
            done = f"{_DONE[action]} over Bluetooth with your key valid until {entry.valid_until}"
            return outcome(True, "granted", done, code=result.code)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- HTTP ------------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, body: bytes | None, *, budget_s: float, now: int | None = None
    ) -> _Reply:
        """One request, signed when ``now`` is given. Raises _CloudFailure when the cloud did not
        answer usefully (the breaker counts those); any other answer is returned."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._quiet_until or not self.throttle.allow():
            raise _CloudFailure("refused locally: the cloud is shedding load", in_doubt=False)
        headers = {
            "Authorization": f"Bearer {self._session_token}",
            DEADLINE_HEADER: str(int(budget_s * 1000)),  # the cloud stops when we stop waiting
        }
        if now is not None:
            headers[HEADER] = sign_request(self._device, device_id=self.device_id, method=method,
                                           path=path, body=body or b"", timestamp=now)  # fmt: skip
        if body:
            headers["Content-Type"] = "application/json"
        limit = aiohttp.ClientTimeout(total=None, connect=budget_s)
        try:
            async with self._guard(), asyncio.timeout(budget_s):
                async with self._http.request(
                    method, self.base_url + path, data=body or None, headers=headers, timeout=limit
                ) as response:
                    reply = _Reply(response.status, response.headers, await _read_json(response))
                self._note_overload(reply, loop.time())
                if reply.status >= 500 or reply.status == 429:
                    code = _error_code(reply.body)
                    in_doubt = reply.status in (502, 504) or code == "outcome_unknown"
                    in_doubt |= code == "deadline_exceeded" and method != "GET"
                    raise _CloudFailure(f"answered HTTP {reply.status}", in_doubt=in_doubt)
        except CallNotPermitted:
            raise _CloudFailure("circuit breaker open", in_doubt=False) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            # Nothing was sent: the connection never opened.
            refused = isinstance(getattr(error, "os_error", None), ConnectionRefusedError)
            why = "connection refused" if refused else "cannot connect"
            if isinstance(error, TimeoutError):
                why = "connect timeout"
            raise _CloudFailure(why, in_doubt=False) from None
        except TimeoutError:
            raise _CloudFailure(f"gave no answer within {budget_s:g} s", in_doubt=True) from None
        except aiohttp.ClientError:
            raise _CloudFailure("dropped the connection", in_doubt=True) from None
        return reply

    def _note_overload(self, reply: _Reply, now: float) -> None:
        overloaded = reply.status in (429, 503)
        self.throttle.record(not overloaded)
        wait = reply.headers.get("Retry-After", "") if overloaded else ""
        if wait.isascii() and wait.isdigit():  # delta-seconds only; an HTTP date is ignored
            self._quiet_until = now + min(int(wait), self.policy.max_retry_after_s)

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext() if self.breaker is None else self.breaker.guard()


@contextlib.asynccontextmanager
async def _closing(link: Link) -> AsyncIterator[Link]:
    try:
        yield link
    finally:
        with contextlib.suppress(BleError):
            await link.close()


def _in_doubt(
    why: str, *, status: str = "unknown", command_id: str | None = None
) -> CommandOutcome:
    return CommandOutcome("cloud", False, status, f"{why}: {_CHECK}", may_have_succeeded=True,
                          command_id=command_id)  # fmt: skip


def _nothing_sent(why: str, reason: str, queued: Mapping[str, Any] | None) -> CommandOutcome:
    if queued is None:
        return CommandOutcome("none", False, "not_sent", f"{why}; {reason}, so nothing was sent")
    # The cloud holds the command for the car's next connection: it may yet run.
    return CommandOutcome(
        "cloud", False, "queued",
        f"{why} and {reason}; {_STAYS_QUEUED}",
        may_have_succeeded=True, command_id=str(queued["command_id"]),
    )  # fmt: skip


def _final(action: Action, view: Mapping[str, Any]) -> CommandOutcome:
    status, detail, command_id = (
        str(view["status"]),
        str(view.get("detail", "")),
        view["command_id"],
    )
    if status == "executed":
        return CommandOutcome("cloud", True, status, f"{_DONE[action]} through the cloud",
                              command_id=command_id)  # fmt: skip
    # "failed" may still mean the car moved (its detail says so); an expired command may have
    # run with its result lost on the way back.
    doubt = status == "expired" or detail.startswith("may have moved") or detail == "interrupted"
    reason = f"the command {status} ({detail})" if detail else f"the command {status}"
    return CommandOutcome("cloud", False, status, f"{reason}: {_CHECK}" if doubt else reason,
                          may_have_succeeded=doubt, command_id=command_id)  # fmt: skip


def _action(action: Action | str) -> Action:
    act = Action.parse(action) if isinstance(action, str) else Action(action)
    if act not in _DONE:
        raise ValueError(f"{act.name.lower()} is not a command")
    return act


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    """The answer's JSON body, or None: unreadable, or over the size cap (checked as it comes)."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(8192):
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _command_view(body: Any) -> Mapping[str, Any] | None:
    """The keyserver's Command object, if ``body`` is one."""
    if not isinstance(body, dict) or not isinstance(body.get("command_id"), str):
        return None
    if body.get("status") not in ("queued", "delivered", *_FINAL):
        return None
    return body


def _error_code(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _token_of(answer: object) -> bytes:
    if not isinstance(answer, Mapping):
        raise ValueError("a key answer is a JSON object")
    text = answer.get("token")
    if not isinstance(text, str) or not isinstance(answer.get("key_id"), str):
        raise ValueError("a key answer has a key_id and a token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the token is not base64url") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
