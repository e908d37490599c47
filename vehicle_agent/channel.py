"""The cloud↔car channel, car side: one WebSocket to the keyserver, kept up for as long as it runs.

``CloudLink.run()`` connects with a vehicle proof, syncs (revocations, trust, time), and then
applies what the keyserver pushes, through ``Vehicle``: revocation deltas, trust updates, signed
time for the car's own nonces, and remote commands. Frames are keycore.channel's
(docs/protocol.md §17).

A remote command runs at most once (vehicle_agent.remote_commands: verified, its id recorded
durably BEFORE the actuator moves, an id ever seen never run again). Outcomes are durable too and
are reported until the keyserver acknowledges them, after a reconnect or a restart if need be;
audit events go up in batches and are marked sent on acknowledgement. A kill -9 at any point
loses no outcome and repeats no movement.

Reconnection follows ``vehicle_agent.backoff``: tenacity full-jitter backoff, bounded, honouring
Retry-After; a timeout on each attempt; and a cloud-link circuit breaker (resilience.breaker) that
stops opening sockets to a cloud that keeps failing, probing it once per wait. A paced refusal
(429 ``reconnect_paced``, docs/protocol.md §17.2) is a slot, not a failure: the car comes back
at it, and neither the breaker nor the throttle counts it. No 429 counts against the breaker: it
is an answer from a live keyserver, and overload is the throttle's business. The link never
blocks an unlock: ``Vehicle.unlock`` decides from local state and shares no lock or await with
this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from keycore import InvalidRevocationList, InvalidSignedTime, InvalidTrustUpdate, Reason
from keycore.channel import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    MAX_AUDIT_EVENTS,
    MAX_EVENT_CHARS,
    MAX_SERVER_FRAME_BYTES,
    RECONNECT_PACED,
    REFUSAL_HEADER,
    AgentFrame,
    Audit,
    AuditAck,
    AuditEvent,
    CommandPush,
    Hello,
    Received,
    Results,
    ResultsAck,
    Revocations,
    ServerFrame,
    Sync,
    TimeAnswer,
    TimeRequest,
    Trust,
    decode_from_server,
    encode,
)
from keycore.errors import InvalidFrame
from keycore.request_proof import HEADER, sign_request
from resilience.breaker import CircuitBreaker
from resilience.waiting import PredicateWaiters
from vehicle_agent.backoff import ConnectThrottle, ReconnectPolicy, connect_retrying
from vehicle_agent.errors import LinkError, LinkPaced
from vehicle_agent.link_stats import LinkState, LinkStats
from vehicle_agent.remote_commands import SUPERSEDED, RemoteCommands
from vehicle_agent.vehicle import Vehicle

__all__ = ["SUPERSEDED", "CloudLink", "LinkState", "LinkStats"]

log = logging.getLogger("vehicle_agent.channel")


class CloudLink:
    """The car's end of the channel. ``run()`` until cancelled (or ``stop()``)."""

    def __init__(
        self,
        vehicle: Vehicle,
        *,
        policy: ReconnectPolicy | None = None,
        url: str | None = None,
        http: aiohttp.ClientSession | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_state: Callable[[LinkState], None] | None = None,
        breaker: CircuitBreaker | None = None,
        throttle: ConnectThrottle | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.policy = policy or ReconnectPolicy()
        self.stats = LinkStats()
        self._base = (url or vehicle.identity.keyserver_url).rstrip("/")
        self._path = f"/v1/vehicles/{vehicle.vin}/channel"
        self._http = http
        self._wall = wall
        self._sleep = sleep
        self._offset = 0.0  # server time − wall clock, learnt from Hello: for proof timestamps
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._commands: asyncio.Queue[CommandPush] = asyncio.Queue()
        self.remote_commands = RemoteCommands(vehicle, self.stats)
        self._results_batch: tuple[str, list[str], list[str]] | None = None
        self._audit_batch: tuple[str, int] | None = None
        self._flush = asyncio.Event()
        self._waiters = PredicateWaiters()
        self._task: asyncio.Task[None] | None = None
        self._on_state = on_state  # e.g. the fleet simulator's reconnect timeline
        self.breaker = breaker or CircuitBreaker("cloud-link", self.policy.breaker)
        self.throttle = throttle or ConnectThrottle()  # SRE adaptive throttling on refusals

    @property
    def state(self) -> LinkState:
        return self.stats.state

    # running

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"cloud-link-{self.vehicle.vin}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Connect, serve, reconnect, forever. Network failures never escape."""
        http = self._http or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        executor = asyncio.create_task(self._execute_commands())
        drops = 0
        try:
            while True:
                ws = await self._connect(http)
                if ws is None:  # a whole cycle of attempts failed: rest, then start again
                    await self._sleep(self.policy.rest())
                    continue
                started = asyncio.get_running_loop().time()
                await self._serve(ws)
                lasted = asyncio.get_running_loop().time() - started
                drops = 0 if lasted >= self.policy.stable_after_s else drops + 1
                await self._sleep(self.policy.after_drop(drops))
        finally:
            executor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await executor
            if self._http is None:
                await http.close()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after every frame and state change."""
        await self._waiters.wait_for(predicate)

    def flush(self) -> None:
        """Upload the audit outbox and unreported results now, not at the next interval."""
        self._flush.set()

    # connecting

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse | None:
        """One cycle of attempts: the socket, or None once the cycle failed. A paced refusal
        ends the wait at its slot and starts the cycle afresh: no attempt is spent on it."""
        while True:
            retrying = connect_retrying(self.policy, self._sleep)
            try:
                async for attempt in retrying:
                    with attempt:
                        return await self._open(http)
            except LinkPaced as paced:
                self.stats.paced += 1
                await self._sleep(self.policy.paced_wait(paced.slot_s))
                continue
            except LinkError as error:
                log.warning("keyserver unreachable", extra={"fields": {"error": str(error)}})
            self._set_state(LinkState.OFFLINE)
            return None

    async def _open(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        try:
            self.throttle.admit()  # an overloaded keyserver is not asked again at full rate
        except LinkError as error:
            self.stats.last_error = str(error)
            raise
        permit = self.breaker.try_acquire()
        if permit is None:  # the cloud failed recently: no socket until the breaker's wait ends
            self.stats.last_error = "cloud-link breaker open"
            raise LinkError(self.stats.last_error, retry_after=self.breaker.retry_after_s())
        started = time.monotonic()
        try:
            ws = await self._upgrade(http)
        except LinkError as error:
            if error.status == 429:  # a live keyserver's answer, with a slot or a Retry-After
                permit.release()
            else:
                permit.failure(error, time.monotonic() - started)
            raise
        except BaseException:  # cancelled: neither success nor failure
            permit.release()
            raise
        permit.success(time.monotonic() - started)
        self.throttle.record(True)
        return ws

    async def _upgrade(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        self.stats.attempts += 1
        self._set_state(LinkState.CONNECTING)
        identity = self.vehicle.identity
        proof = sign_request(
            identity.vehicle_key,
            device_id=identity.vin,
            method="GET",
            path=self._path,
            body=b"",
            timestamp=int(self._wall() + self._offset),
        )
        try:
            async with asyncio.timeout(self.policy.attempt_timeout_s):
                return await http.ws_connect(
                    self._base + self._path,
                    headers={HEADER: proof},
                    max_msg_size=MAX_SERVER_FRAME_BYTES,
                    heartbeat=self.policy.heartbeat_s,
                )
        except aiohttp.WSServerHandshakeError as error:
            retry_after = _retry_after(error)
            if _paced(error) and retry_after is not None:
                raise LinkPaced(retry_after) from None  # a slot: not an overload signal
            self.throttle.record_status(error.status)
            self.stats.last_error = f"upgrade refused: {error.status}"
            raise LinkError(
                self.stats.last_error, retry_after=retry_after, status=error.status
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            self.stats.last_error = f"cannot connect: {type(error).__name__}"
            raise LinkError(self.stats.last_error) from None

    # serving one connection

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        closed_with: int | None = None  # our code when the car closes; else the server's
        self.stats.connects += 1
        self._set_state(LinkState.ONLINE)
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.ERROR:
                    break
                if message.type is not aiohttp.WSMsgType.BINARY:
                    closed_with = CLOSE_UNSUPPORTED
                    await ws.close(code=closed_with, message=b"binary frames only")
                    break
                try:
                    frame = decode_from_server(message.data)
                except InvalidFrame as error:
                    self._note_refusal("frame", error.reason.value)
                    closed_with = CLOSE_POLICY
                    await ws.close(code=closed_with, message=b"frame refused")
                    break
                try:
                    await self._handle(frame)
                except (ConnectionError, RuntimeError):  # the socket closed under a send
                    break
                except Exception:  # a bug: this connection ends, the car carries on
                    log.exception("channel frame handling failed")
                    closed_with = CLOSE_INTERNAL
                    await ws.close(code=closed_with, message=b"internal error")
                    break
                self._notify()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            if not ws.closed:
                await ws.close()
            self._ws = None
            self._results_batch = self._audit_batch = None  # unacknowledged: sent again later
            self.stats.close_codes.append(closed_with or ws.close_code)
            self.stats.disconnects += 1
            self._set_state(LinkState.OFFLINE)

    async def _handle(self, frame: ServerFrame) -> None:
        vehicle = self.vehicle
        match frame:
            case Hello():
                self._offset = frame.server_time - self._wall()
                if vehicle.clock.reset:  # fresh signed time first: frames are answered in order
                    await self._send(TimeRequest(vehicle.time_nonce()))
                # outcomes before Sync, so the keyserver has them when it picks what is pending
                await self._report_results()
                await self._upload_audit()
                await self._send(self._sync())
            case TimeAnswer():
                try:
                    vehicle.accept_time(frame.answer, frame.nonce)
                except InvalidSignedTime as error:
                    self._note_refusal("time", error.reason.value)
                except ValueError:
                    self._note_refusal("time", "unknown_nonce")
            case Revocations():
                try:
                    if vehicle.apply_revocations(frame.document):
                        self.stats.revocations_applied += 1
                except InvalidRevocationList as error:
                    if error.reason is Reason.GAP:  # ask again from what the car holds
                        await self._send(self._sync())
                    else:
                        self._note_refusal("revocations", error.reason.value)
            case Trust():
                try:
                    vehicle.apply_trust_update(frame.document)
                except InvalidTrustUpdate as error:
                    self._note_refusal("trust", error.reason.value)
            case CommandPush():
                await self._send(Received(frame.command_id))
                self._commands.put_nowait(frame)
            case ResultsAck():
                batch = self._results_batch
                if batch is not None and batch[0] == frame.batch_id:
                    self.remote_commands.acknowledged(batch[1], batch[2])
                    self._results_batch = None
                    await self._report_results()
            case AuditAck():
                audit = self._audit_batch
                if audit is not None and audit[0] == frame.batch_id:
                    vehicle.state.mark_audit_sent(audit[1])
                    self._audit_batch = None
                    await self._upload_audit()

    def _sync(self) -> Sync:
        return Sync(self.vehicle.revocations.sequence, self.vehicle.trust.sequence)

    async def _send(self, frame: AgentFrame) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.send_bytes(encode(frame))

    # remote commands, at most once (vehicle_agent.remote_commands)

    async def _execute_commands(self) -> None:
        """One command at a time, in the order received; lives across reconnections."""
        while True:
            frame = await self._commands.get()
            try:
                await self.remote_commands.run(frame)
            except Exception:  # the state stays as it was left: never run, or reported later
                log.exception("command failed", extra={"fields": {"command": frame.command_id}})
            self._notify()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._report_results()
                await self._upload_audit()

    # reporting: one batch of each kind in flight, the next one on its acknowledgement

    async def _report_results(self) -> None:
        if self._ws is None or self._results_batch is not None:
            return
        durable, refusals = self.remote_commands.unreported()
        if not durable and not refusals:
            return
        batch_id = secrets.token_urlsafe(8)
        ids = [r.command_id for r in durable], [r.command_id for r in refusals]
        self._results_batch = (batch_id, *ids)
        await self._send(Results(batch_id, (*durable, *refusals)))

    async def _upload_audit(self) -> None:
        if self._ws is None or self._audit_batch is not None:
            return
        pending = self.vehicle.state.pending_audit(limit=MAX_AUDIT_EVENTS)
        if not pending:
            return
        batch_id = f"{pending[0][0]}-{pending[-1][0]}"
        self._audit_batch = (batch_id, pending[-1][0])
        events = tuple(AuditEvent(seq, _event_text(event)) for seq, event in pending)
        await self._send(Audit(batch_id, events))

    async def _flush_periodically(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.policy.flush_interval_s):
                    await self._flush.wait()
            self._flush.clear()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._report_results()
                await self._upload_audit()

    # bookkeeping

    def _note_refusal(self, what: str, reason: str) -> None:
        log.warning("channel refused", extra={"fields": {"what": what, "reason": reason}})
        self.vehicle.state.add_audit({"kind": "channel_refused", "what": what, "reason": reason})

    def _set_state(self, state: LinkState) -> None:
        if self.stats.state is not state:
            if self.stats.state is LinkState.ONLINE:
                self.stats.offline_since = time.monotonic()
            self.stats.state = state
            if self._on_state is not None:
                self._on_state(state)
            self._notify()

    def _notify(self) -> None:
        self._waiters.notify()


def _retry_after(error: aiohttp.WSServerHandshakeError) -> float | None:
    """Retry-After as delta-seconds (ASCII digits only; an HTTP date or anything else is None).
    Its size is bounded here; how long the car accepts to wait is the policy's cap."""
    raw = "" if error.headers is None else error.headers.get("Retry-After", "")
    return float(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None


def _paced(error: aiohttp.WSServerHandshakeError) -> bool:
    code = "" if error.headers is None else error.headers.get(REFUSAL_HEADER, "")
    return error.status == 429 and code == RECONNECT_PACED


def _event_text(event: dict[str, Any]) -> str:
    text = json.dumps(event, separators=(",", ":"), sort_keys=True)
    if len(text) <= MAX_EVENT_CHARS:
        return text
    return json.dumps({"kind": "oversized", "was": str(event.get("kind", "?"))[:64]})
