"""The Redis store's records of the cloud↔car channel: remote commands (``command:{id}``, the
idempotency index ``cmdkey:{account}:{key}`` and the vehicle's ``commands:{vin}`` by expiry) and
the audit events cars upload (``audit:{vin}``, seq → event)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from keycore.channel import AuditEvent
from keyserver.errors import Conflict, StoreUnavailable
from keyserver.models import AUDIT_RETENTION_S, COMMAND_RETENTION_S, CommandRecord, CommandStatus
from keyserver.store.redis import lua
from keyserver.store.redis.keyspace import EXPIRY_SLACK, Keyspace, failures
from keyserver.store.redis.records import flat, record, text


class RedisChannelRecords:
    """The command and audit operations of ``RedisStore``, on its client and key names."""

    def __init__(self, client: Redis, keys: Keyspace) -> None:
        self._client = client
        self._keys = keys
        self._put_command = client.register_script(lua.PUT_COMMAND)
        self._set_command_status = client.register_script(lua.SET_COMMAND_STATUS)
        self._add_audit_batch = client.register_script(lua.ADD_AUDIT_BATCH)

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        keys = [
            self._keys("command", command.command_id),
            self._keys("cmdkey", command.account_id, command.idempotency_key),
            self._keys("commands", command.vin),
        ]
        expire_at = command.expires_at + COMMAND_RETENTION_S + EXPIRY_SLACK
        prune_below = command.issued_at - COMMAND_RETENTION_S
        args = [command.command_id, expire_at, command.expires_at, prune_below, *flat(command)]
        with failures("put_command", write=True):
            stored = await self._put_command(keys, args)
        if stored is None:
            raise Conflict(f"command {command.command_id} already exists")
        if text(stored) == command.command_id:
            return command, True
        existing = await self.command(text(stored))
        if existing is None:  # it expired a moment ago, with its idempotency key
            raise StoreUnavailable("redis put_command: raced an expiry", may_have_succeeded=False)
        return existing, False

    async def command(self, command_id: str) -> CommandRecord | None:
        with failures("command", write=False):
            raw = await self._client.hgetall(self._keys("command", command_id))
        return record(CommandRecord, raw)

    async def set_command_status(
        self,
        command_id: str,
        status: CommandStatus,
        *,
        vin: str,
        expected: Sequence[CommandStatus],
        detail: str,
        now: int,
    ) -> bool:
        args = [vin, status.value, detail, now, *(CommandStatus(s).value for s in expected)]
        with failures("set_command_status", write=True):
            changed = await self._set_command_status([self._keys("command", command_id)], args)
        return bool(changed)

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        with failures("pending_commands", write=False):
            ids = await self._client.zrangebyscore(self._keys("commands", vin), f"({now}", "+inf")
            pipe = self._client.pipeline(transaction=False)
            for command_id in ids:
                pipe.hgetall(self._keys("command", text(command_id)))
            raws = await pipe.execute() if ids else []
        pending = (CommandStatus.QUEUED, CommandStatus.DELIVERED)
        found = [c for c in (record(CommandRecord, raw) for raw in raws) if c is not None]
        return sorted(
            (c for c in found if c.vin == vin and c.status in pending and c.expires_at > now),
            key=lambda c: (c.issued_at, c.command_id),
        )

    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        args: list[str | int] = [AUDIT_RETENTION_S + EXPIRY_SLACK]
        for event in events:
            args += [event.seq, event.event]
        with failures("add_audit_batch", write=True):
            return int(await self._add_audit_batch([self._keys("audit", vin)], args))

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        with failures("audit_events", write=False):
            raw = await self._client.hgetall(self._keys("audit", vin))
        events = [AuditEvent(int(seq), text(event)) for seq, event in raw.items()]
        return sorted(events, key=lambda e: e.seq)
