"""The cloud↔car channel, keyserver side: ``GET /v1/vehicles/{vin}/channel``, a WebSocket.

The car opens it with a vehicle proof on the upgrade request (device id = the VIN, empty body) and
holds it open. Frames are keycore.channel's (docs/protocol.md §17). The server says Hello; the car
answers Sync with the sequences it holds and gets what it lacks (trust update, revocation delta)
and its pending commands; then revocations and commands are pushed as they happen (the hub), time
requests are answered with signed time, and the car's results and audit batches are stored and
acknowledged. A malformed or unexpected frame closes the connection with a policy code; a store
failure closes it with "try again later"; neither ever reaches the car as anything else.

Each connection has one writer and a bounded outbox: a car that does not read is disconnected
(it reconnects and resyncs) rather than letting its backlog grow.

Upgrades are paced (keyserver.pacing): once the car has proved it is that car, an upgrade over
``channel_upgrades_per_s`` is refused 429 ``reconnect_paced`` with the car's slot in Retry-After
(and the code in ``PK-Refusal``, as a WebSocket client does not read a refused upgrade's body).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from aiohttp import WSMsgType, web

from keycore import sign_time
from keycore.channel import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_SUPERSEDED,
    CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED,
    MAX_AGENT_FRAME_BYTES,
    MAX_SERVER_FRAME_BYTES,
    RECONNECT_PACED,
    REFUSAL_HEADER,
    AgentFrame,
    Audit,
    AuditAck,
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
    decode_from_agent,
    encode,
)
from keycore.errors import InvalidFrame
from keycore.trust import MAX_SEQUENCE
from keyserver import auth, fields, openapi
from keyserver.admission import Criticality
from keyserver.clock import CLOCK
from keyserver.degraded import Behaviour
from keyserver.errors import SinceAhead, StoreUnavailable
from keyserver.http import ApiError
from keyserver.models import CommandRecord, CommandStatus
from keyserver.pacing import PACED_MESSAGE, PACING, PacedChannel, paced_headers
from keyserver.resources import CONFIG, HUB, KEYRING, METRICS, SERVICES, STORE
from keyserver.routes.commands import entitles
from keyserver.routing import Route

PATH = "/v1/vehicles/{vin}/channel"
MAX_OUTBOX = 256  # frames waiting for one car; more and the car is disconnected
log = logging.getLogger("keyserver.channel")

_RESULT_STATUS = {
    "executed": CommandStatus.EXECUTED,
    "failed": CommandStatus.FAILED,
    "expired": CommandStatus.EXPIRED,
}
_UNFINISHED = (CommandStatus.QUEUED, CommandStatus.DELIVERED)
WITHDRAWN = "withdrawn before delivery: its sender no longer holds a key that allows it"


class _Lacking(enum.Enum):
    """An outbox marker: what the car lacks, read from the store when it is the marker's turn
    (so a backlog of any size costs one slot, and is sent at the pace the car reads)."""

    REVOCATIONS = enum.auto()
    COMMANDS = enum.auto()


def setup(app: web.Application) -> None:
    """The upgrades' pacer (the route itself is in ``ROUTES``)."""
    app[PACING] = PacedChannel(app[CONFIG].channel_upgrades_per_s, app[METRICS].registry)


async def channel(request: web.Request) -> web.StreamResponse:
    """Authenticate the car, upgrade, and serve its connection until either side closes."""
    app = request.app
    config, store = app[CONFIG], app[STORE]
    vin = fields.path_vin(request)
    if request.body_exists:
        raise ApiError(400, "unexpected_body", "this request takes no body")
    await auth.require_vehicle_proof(request, store, vin, b"", max_skew=config.proof_max_skew_s)
    ws = web.WebSocketResponse(
        max_msg_size=MAX_AGENT_FRAME_BYTES, heartbeat=config.channel_heartbeat_s, compress=False
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(
            426, "upgrade_required", "this endpoint is a WebSocket",
            headers={"Upgrade": "websocket"},
        )  # fmt: skip
    paced = app[PACING].ask(vin)
    if paced.retry_after_s is not None:
        raise ApiError(
            429, RECONNECT_PACED, PACED_MESSAGE, headers=paced_headers(paced.retry_after_s)
        )
    await ws.prepare(request)
    await CarSession(app, vin, ws).run()
    return ws


class CarSession:
    """One car's connection: reads its frames in order, writes through one bounded outbox."""

    def __init__(self, app: web.Application, vin: str, ws: web.WebSocketResponse) -> None:
        self.app = app
        self._vin = vin
        self.ws = ws
        self.revocation_sequence = 0  # what the car holds, as far as this connection knows
        # the last sequence the car holds from the ledger itself: below revocation_sequence once
        # the car got a list signed during a store outage (keyserver.journal explains)
        self.ledger_sequence = 0
        self._metrics = app[METRICS]
        self._clock = app[CLOCK]  # a connection lives long: each frame reads the clock
        self._outbox: asyncio.Queue[bytes | _Lacking] = asyncio.Queue(MAX_OUTBOX)
        self._synced = False
        self._revocations_queued = False
        self._sent_commands: set[str] = set()
        self._closing: asyncio.Task[None] | None = None

    @property
    def vin(self) -> str:
        return self._vin

    async def run(self) -> None:
        hub = self.app[HUB]
        replaced = hub.attach(self)
        if replaced is not None:
            await replaced.close(CLOSE_SUPERSEDED, b"superseded by a newer connection")
        self._metrics.cars_connected.inc()
        writer = asyncio.create_task(self._write())
        try:
            sequence, _ = await self.app[STORE].revocations(self._vin, since=MAX_SEQUENCE)
            ring = self.app[KEYRING]
            self._send(Hello(self._clock(), sequence, ring.trust_sequence))
            await self._read()
        except StoreUnavailable as error:
            log.warning("channel store unavailable", extra={"fields": {"error": str(error)}})
            await self.close(CLOSE_TRY_LATER, b"store unavailable; reconnect later")
        except Exception:  # a bug: the connection ends, the process and the other cars do not
            log.exception("channel failed", extra={"fields": {"vin": self._vin}})
            await self.close(CLOSE_INTERNAL, b"internal error")
        finally:
            hub.detach(self)
            self._metrics.cars_connected.dec()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def close(self, code: int, message: bytes) -> None:
        if not self.ws.closed:
            self._metrics.channel_closes.labels(str(code)).inc()
        await self.ws.close(code=code, message=message)

    # what the hub pushes

    def push_revocations(self) -> None:
        if self._synced and not self._revocations_queued:
            self._revocations_queued = True
            self._queue(_Lacking.REVOCATIONS)

    def push_command(self, command_id: str, document: bytes) -> None:
        if self._synced and command_id not in self._sent_commands:
            self._sent_commands.add(command_id)
            self._send(CommandPush(command_id, document))

    def held_revocations(self) -> tuple[int, int] | None:
        return (self.ledger_sequence, self.revocation_sequence) if self._synced else None

    def push_revocation_list(self, sequence: int, document: bytes) -> None:
        if self._synced and sequence > self.revocation_sequence:
            self.revocation_sequence = sequence  # the lists the car lacks are cut from here on
            self._send(Revocations(document))

    # reading

    async def _read(self) -> None:
        hub = self.app[HUB]
        async for message in self.ws:
            if message.type is WSMsgType.ERROR:  # e.g. over the size limit: aiohttp closes
                self._metrics.channel_closes.labels("error").inc()
                return
            if message.type is not WSMsgType.BINARY:
                await self.close(CLOSE_UNSUPPORTED, b"binary frames only")
                return
            try:
                frame = decode_from_agent(message.data)
            except InvalidFrame as error:
                log.info(
                    "channel frame refused",
                    extra={"fields": {"vin": self._vin, "reason": error.reason.value}},
                )
                await self.close(CLOSE_POLICY, f"frame refused: {error.reason.value}".encode())
                return
            await self._handle(frame)
            self._metrics.channel_frames.labels("in", type(frame).__name__.lower()).inc()
            hub.frame_handled()

    async def _handle(self, frame: AgentFrame) -> None:
        store, vin = self.app[STORE], self._vin
        match frame:
            case Sync():
                self.revocation_sequence = frame.revocation_sequence
                self.ledger_sequence = frame.revocation_sequence
                ring = self.app[KEYRING]
                if frame.trust_sequence < ring.trust_sequence and ring.trust_update:
                    self._send(Trust(ring.trust_update))
                self._synced = True  # before reading what is pending: nothing falls in between
                self.push_revocations()
                # One slot, however many commands wait: a key holder's backlog must not overflow
                # the outbox and get the car dropped at every Sync (G7).
                self._queue(_Lacking.COMMANDS)
            case TimeRequest():
                signer = self.app[KEYRING].ring.active.signer
                answer = sign_time(signer, nonce=frame.nonce, now=self._clock())
                self._send(TimeAnswer(frame.nonce, answer))
            case Received():
                await store.set_command_status(
                    frame.command_id, CommandStatus.DELIVERED, vin=vin,
                    expected=(CommandStatus.QUEUED,), detail="", now=self._clock(),
                )  # fmt: skip
            case Results():
                for result in frame.results:
                    applied = await store.set_command_status(
                        result.command_id, _RESULT_STATUS[result.status], vin=vin,
                        expected=_UNFINISHED, detail=result.detail, now=self._clock(),
                    )  # fmt: skip
                    outcome = "applied" if applied else "repeated"
                    self._metrics.command_results.labels(outcome, result.status).inc()
                self._send(ResultsAck(frame.batch_id))
            case Audit():
                await store.add_audit_batch(vin, frame.batch_id, frame.events, now=self._clock())
                self._send(AuditAck(frame.batch_id))

    # writing

    def _fits(self, data: bytes, kind: str) -> bool:
        """Whether the car's socket reads a frame this large. One it would refuse ends the
        connection, and every frame behind it would wait forever: such a frame is left out (and
        counted), the others still go. The ledger's bound keeps this from happening (§12.1)."""
        if len(data) <= MAX_SERVER_FRAME_BYTES:
            return True
        self._metrics.channel_frames.labels("withheld", kind).inc()
        log.error(
            "channel frame too large for the car",
            extra={"fields": {"vin": self._vin, "type": kind, "bytes": len(data)}},
        )
        return False

    def _send(self, frame: ServerFrame) -> None:
        data = encode(frame)
        if not self._fits(data, type(frame).__name__.lower()):
            return
        if self._queue(data):
            self._metrics.channel_frames.labels("out", type(frame).__name__.lower()).inc()

    def _queue(self, item: bytes | _Lacking) -> bool:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            if self._closing is None:
                log.warning("channel outbox full", extra={"fields": {"vin": self._vin}})
                self._closing = asyncio.create_task(
                    self.close(CLOSE_TRY_LATER, b"too far behind; reconnect")
                )
            return False
        return True

    async def _write(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                if item is _Lacking.COMMANDS:
                    await self._send_pending_commands()
                    continue
                data: bytes | None = item if isinstance(item, bytes) else None
                if item is _Lacking.REVOCATIONS:
                    self._revocations_queued = False
                    data = await self._revocations()
                if data is not None:
                    await self.ws.send_bytes(data)
        except StoreUnavailable:
            await self.close(CLOSE_TRY_LATER, b"store unavailable; reconnect later")
        except (ConnectionError, RuntimeError):  # the socket went away: the reader sees it too
            return
        except Exception:
            log.exception("channel writer failed", extra={"fields": {"vin": self._vin}})
            await self.close(CLOSE_INTERNAL, b"internal error")

    async def _send_pending_commands(self) -> None:
        """The commands waiting for the car, oldest first, each sent as the car takes it. A
        command whose sender has since lost the right to it (key revoked, suspended, ended;
        ownership gone) is withdrawn, never sent: revocation means deny (G5)."""
        store, vin = self.app[STORE], self._vin
        try:
            pending = await store.pending_commands(vin, now=self._clock())
            fresh = [c for c in pending if c.command_id not in self._sent_commands]
            allowed = await self._still_allowed(fresh) if fresh else set()
        except StoreUnavailable:  # stay connected: revocations still reach the car
            return
        for command in fresh:
            if command.command_id in self._sent_commands:  # pushed by the hub meanwhile
                continue
            if command.command_id not in allowed:
                with contextlib.suppress(StoreUnavailable):
                    await store.set_command_status(
                        command.command_id, CommandStatus.FAILED, vin=vin,
                        expected=(CommandStatus.QUEUED,), detail=WITHDRAWN, now=self._clock(),
                    )  # fmt: skip
                continue
            self._sent_commands.add(command.command_id)
            await self.ws.send_bytes(encode(CommandPush(command.command_id, command.document)))
            self._metrics.channel_frames.labels("out", "commandpush").inc()

    async def _still_allowed(self, commands: list[CommandRecord]) -> set[str]:
        """The ids of ``commands`` whose sender may still ask for them now: the vehicle's owner,
        or an account holding a key that allows the action (the check of create_command)."""
        store = self.app[STORE]
        vehicle = await store.vehicle(self._vin)
        keys = await store.keys_of_vehicle(self._vin)
        now = self._clock()
        return {
            c.command_id
            for c in commands
            if (vehicle is not None and vehicle.owner_id == c.account_id)
            or any(k.account_id == c.account_id and entitles(k, c.action, now) for k in keys)
        }

    async def _revocations(self) -> bytes | None:
        """The list the car lacks (a delta from what it holds), or None if it lacks nothing.

        After a list signed during an outage the delta starts at the car's last ledger sequence
        and is sent once the ledger has passed what the car holds (keyserver.journal)."""
        try:
            sequence, document, complete = await self.app[SERVICES].issuer.revocation_list(
                self._vin, since=self.ledger_sequence, now=self._clock()
            )
        except SinceAhead:  # the car holds more than the ledger has: nothing to give it yet
            return None
        if document is None or sequence <= self.revocation_sequence:
            return None
        data = encode(Revocations(document))
        if not self._fits(data, "revocations"):  # the car stays where it is: nothing skipped
            return None
        self.revocation_sequence = self.ledger_sequence = sequence
        self._metrics.channel_frames.labels("out", "revocations").inc()
        if not complete:  # cut at MAX_LIST_ENTRIES: the rest follows in the next delta
            self.push_revocations()
        return data


# the route: the upgrade request (the frames are in docs/protocol.md §17)

_VIN = {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"}
_PROOF = "device_proof_required, bad_device_proof, stale_device_proof, replayed_device_proof"

ROUTES = (
    Route(
        "GET", PATH, channel, "openChannel", "channel",
        "The car's channel: a WebSocket the car holds open (docs/protocol.md §17)",
        description="The car signs the upgrade request with its own key (PK-Device-Proof, "
        "device id = the VIN, empty body). Binary CBOR frames follow: revocations, "
        "trust updates, signed time and remote commands to the car; command results and "
        "audit batches from it.",
        criticality=Criticality.CRITICAL_PLUS,  # revocations and commands reach cars here
        degraded=Behaviour.CHANNEL,
        security=[{"deviceProof": []}],
        parameters=[{"name": "vin", "in": "path", "required": True, "schema": _VIN}],
        responses={
            "101": {"description": "switching to the WebSocket protocol"},
            "400": openapi.error(
                "invalid_vin, bad_device_proof (malformed header), unexpected_body"
            ),
            "401": openapi.error(f"{_PROOF}: not signed by this vehicle's key, or stale"),
            "429": {
                **openapi.error(
                    "reconnect_paced: upgrades are admitted at channel_upgrades_per_s; come"
                    " back after Retry-After seconds (this car's slot, docs/protocol.md"
                    " §17.2). Or overloaded / deadline_exceeded (admission control)"
                ),
                "headers": {
                    "Retry-After": {
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                    REFUSAL_HEADER: {"schema": {"const": RECONNECT_PACED}},
                },
            },
            "426": {
                **openapi.error("upgrade_required: not a WebSocket upgrade request"),
                "headers": {"Upgrade": {"schema": {"const": "websocket"}}},
            },
        },
    ),
)  # fmt: skip
