"""The reference phone client: proximity first. At the car, a command goes over Bluetooth with
the wallet's key; the cloud is for a car out of range (remote commands) and for background work
(token refresh) — and for a press whose Bluetooth path failed before anything was sent. A
command is never sent on both paths once it may have run on one. A person standing at the car
never waits on the cloud (G8: the car is the data plane).

The policy (``PhoneClient.command``), by what the Bluetooth path came to first
(``phone.proximity``: range is what the phone's radio finds, the car's advertisement):

    Bluetooth path came to                          then
    granted / refused by the car                    that is the answer; the cloud is not asked
    request sent, no Result (may have run)          "may have succeeded: check the car"; the
                                                    cloud is never asked (never twice)
    out of range (no advertisement in the scan)     the cloud: a remote command (table below)
    nothing sent: busy, a Result saying nothing     the cloud (fell_back): nothing can have run
      ran (busy, malformed, late), a link failure
      before the request went out
    no usable key in the wallet                     a key that lapsed offline is renewed first
                                                    (then Bluetooth); else the cloud, and an
                                                    answer that says what to do

The cloud path, by what the cloud came to:

    final: executed / failed / expired              the cloud's result
    refused before acting: connection refused,      nothing was sent (path none); near the car
      connect timeout, breaker open, 429, 500,      Bluetooth was tried already
      503 (not outcome_unknown), 401, 202 not_sent
    202 queued + ``car_unreachable`` hint, or       queued: may yet run when the car connects,
      degraded (``PK-Degraded`` / ``degraded``)     with the Bluetooth hint; never sent again
    may have acted: answer lost or timed out,       may have succeeded: check the car
      502, 504, 503 outcome_unknown, unreadable
      2xx, 202 may_be_queued, not final in time
    other 4xx (not entitled, unknown vehicle, ...)  refused

Against overload (G6): every request carries its deadline (``PK-Deadline-Ms``); an adaptive
throttle (SRE, K = 2) refuses cloud requests locally while the cloud answers 429/503 — a local
refusal is a "refused before acting", like a 429; one request per 5 s always goes out, so a
phone that asks rarely is never locked out once the cloud is back (resilience.overload, issue 14)
— and after a Retry-After the cloud is not asked
again until it has passed. Re-reading a command after a failed read spends from a retry budget.
A 429 ``deadline_exceeded`` to a write means the cloud may have acted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from keycore import cose
from keycore.encoding import b64url_decode, b64url_encode
from keycore.request_proof import HEADER, sign_request
from keycore.roles import Action
from keycore.token import check_vin
from phone.errors import PhoneError
from phone.outcomes import (
    DEGRADED_HEADER,
    DONE,
    FINAL,
    CommandOutcome,
    Fallback,
    after_bluetooth,
    at_car_outcome,
    command_view,
    error_code,
    final,
    in_doubt,
    when,
)
from phone.proximity import AtCar, BleTries, ReachCar, command_at_car
from phone.wallet import KeyWallet, WalletCorrupt, WalletEntry, read_token
from resilience.breaker import CallNotPermitted, CircuitBreaker
from resilience.overload import DEADLINE_HEADER, AdaptiveThrottle, RetryBudget

__all__ = [
    "DEGRADED_HEADER", "ClientPolicy", "CommandOutcome", "PhoneClient", "ReachCar",
    "RefreshOutcome",
]  # fmt: skip
log = logging.getLogger(__name__)

DAY = 86_400
MAX_ANSWER_BYTES = 64 * 1024  # a keyserver answer is a small JSON object


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
class RefreshOutcome:
    vin: str
    refreshed: bool
    reason: str
    expires: int  # of the token the wallet holds now


class _CloudFailure(PhoneError):
    """The cloud did not do the request. ``in_doubt``: it may have acted all the same."""

    def __init__(self, why: str, *, in_doubt: bool, code: str | None = None) -> None:
        super().__init__(why)
        self.why, self.in_doubt, self.code = why, in_doubt, code


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or None


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
        body = json.dumps({"token": b64url_encode(entry.token)}).encode()
        try:
            reply = await self._send(
                "POST", path, body, now=now, budget_s=self.policy.cloud_timeout_s
            )
        except _CloudFailure as failure:
            return kept(failure.why)
        if reply.status != 200:
            return kept(f"HTTP {reply.status} {error_code(reply.body) or ''}".rstrip())
        try:
            fresh = self.remember(reply.body, now=now, vin=entry.vin)
        except ValueError:
            return kept("the keyserver's answer holds no usable token for this car")
        log.info("event=token_refreshed vin=%s expires=%d", fresh.vin, fresh.expires)
        return RefreshOutcome(fresh.vin, True, f"valid until {fresh.valid_until}", fresh.expires)

    # -- commands --------------------------------------------------------------------------

    async def command(self, vin: str, action: Action | str) -> CommandOutcome:
        """Do ``action`` on the car: over Bluetooth when it is in range, through the cloud when
        it is not (or when Bluetooth failed before anything was sent). Raises ValueError for a
        bad VIN or action, nothing else."""
        check_vin(vin)
        act = _action(action)
        entry, no_key = await self._key_for(vin)
        if entry is None:
            near = AtCar("not_sent", no_key)
        else:
            near = await command_at_car(self._reach_car, entry.token, self._device, vin, act,
                                        tries=self._tries, sleep=self._sleep)  # fmt: skip
        if not near.cloud_may_run:
            outcome = at_car_outcome(near, act, entry)
        else:
            cloud = await self._cloud_command(vin, act)
            outcome = after_bluetooth(near, cloud, entry)
        log.info(
            "event=phone_command vin=%s action=%s path=%s status=%s fell_back=%s "
            "may_have_succeeded=%s command_id=%s",
            vin, act.name.lower(), outcome.path, outcome.status, outcome.fell_back,
            outcome.may_have_succeeded, outcome.command_id,
        )  # fmt: skip
        return outcome

    async def over_ble(self, vin: str, action: Action | str) -> CommandOutcome:
        """Do ``action`` over BLE only, never the cloud: for a user who checked the car after an
        outcome that may have succeeded, and asks again knowingly."""
        check_vin(vin)
        act = _action(action)
        entry, no_key = await self._key_for(vin)
        if entry is None:
            return CommandOutcome("none", False, "not_sent", f"{no_key}, so nothing was sent")
        near = await command_at_car(self._reach_car, entry.token, self._device, vin, act,
                                    tries=self._tries, sleep=self._sleep)  # fmt: skip
        if near.cloud_may_run:
            return CommandOutcome("none", False, "not_sent", f"{near.why}, so nothing was sent")
        return at_car_outcome(near, act, entry)

    async def _key_for(self, vin: str) -> tuple[WalletEntry | None, str]:
        """The wallet's usable token for ``vin``, renewing one that lapsed while the phone was
        offline; else None and what the person should do about it."""
        now = self._clock()
        try:
            entry = self.wallet.usable(vin, now)
            held = self.wallet.get(vin) if entry is None else entry
        except WalletCorrupt:
            log.error("event=wallet_corrupt vin=%s", vin)  # an unreadable row holds no key
            return None, "the phone's key store is damaged: sign in again to fetch your key"
        if held is None:
            return None, (
                "this phone holds no key for this car yet: open the app online once to fetch "
                "it (or ask the owner to share one)"
            )
        if entry is not None:
            return entry, ""
        if now < held.not_before:
            return None, f"your key for this car is not valid yet (it starts {when(held)})"
        renewed = await self._refresh(held, int(now))  # it lapsed while the phone was offline
        if renewed.refreshed:
            entry = self.wallet.usable(vin, self._clock())
            if entry is not None:
                return entry, ""
        why = renewed.reason.removeprefix("kept the old token: ")
        if why.startswith("HTTP "):  # the keyserver answered, and said no
            return None, (
                f"your key expired on {held.valid_until} and the keyserver would not renew it "
                f"({why}): ask the car's owner"
            )
        return None, (
            f"your key expired on {held.valid_until} while the phone was offline and could not "
            f"be renewed ({why}): connect the phone to the internet once to renew it"
        )

    @property
    def _tries(self) -> BleTries:
        return BleTries(self.policy.busy_retries, self.policy.max_busy_wait_s)

    async def _cloud_command(self, vin: str, action: Action) -> CommandOutcome | Fallback:
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
                return in_doubt(f"the cloud {failure.why} after the command was sent")
            return Fallback(f"cloud unreachable ({failure.why})")
        if reply.status == 401:
            return Fallback("the cloud refused the session (sign in again)")
        if reply.status == 202 and isinstance(reply.body, dict):
            status, command_id = reply.body.get("status"), reply.body.get("command_id")
            if status == "not_sent":  # the store write certainly failed: nothing will run
                return Fallback("the cloud could not record the command (degraded)")
            if status == "may_be_queued":
                return in_doubt(
                    "the cloud may have queued the command (degraded)",
                    status="queued", command_id=command_id if isinstance(command_id, str) else None,
                )  # fmt: skip
        view = command_view(reply.body)
        if reply.status not in (200, 202):
            code = error_code(reply.body)
            why = f"the cloud refused the command (HTTP {reply.status}{f' {code}' if code else ''})"
            return CommandOutcome("cloud", False, "refused", why, code=code)
        if view is None:
            return in_doubt("the cloud's answer to the command was unreadable")
        degraded = DEGRADED_HEADER in reply.headers or isinstance(reply.body.get("degraded"), dict)
        hint = view.get("hint")
        unreachable = isinstance(hint, dict) and hint.get("code") == "car_unreachable"
        if view["status"] == "queued" and (unreachable or degraded):
            why = "the car is not reachable from the cloud" if unreachable else "cloud degraded"
            return Fallback(why, queued=view)
        return await self._follow(action, view, deadline)

    async def _follow(
        self, action: Action, view: Mapping[str, Any], deadline: float
    ) -> CommandOutcome:
        """Read the command's state until it is final or the deadline passes."""
        loop = asyncio.get_running_loop()
        command_id = str(view["command_id"])
        failed = False
        while view["status"] not in FINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return in_doubt(
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
                read = command_view(reply.body) if reply.status == 200 else None
                view = view if read is None else read
        return final(action, view)

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
                    code = error_code(reply.body)
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


def _action(action: Action | str) -> Action:
    act = Action.parse(action) if isinstance(action, str) else Action(action)
    if act not in DONE:
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


def _token_of(answer: object) -> bytes:
    if not isinstance(answer, Mapping):
        raise ValueError("a key answer is a JSON object")
    text = answer.get("token")
    if not isinstance(text, str) or not isinstance(answer.get("key_id"), str):
        raise ValueError("a key answer has a key_id and a token")
    try:
        return b64url_decode(text)
    except ValueError:
        raise ValueError("the token is not base64url") from None
