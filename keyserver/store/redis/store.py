"""The Redis store: the production adapter, each operation one transaction or one Lua script.

The hot path, ``refresh_context`` (token refresh), is one script for the session, device, key and
nonce, and concurrent calls of it share round trips (``shared_trips``): redis-py's own cost per
command outweighs it. The revocation ledger's operations are ``RedisLedger``'s (``ledger``), the
channel's commands and audit events ``RedisChannelRecords``'s (``channel``), the hub's notices and
car presence ``RedisHub``'s (``hub``); ``RedisStore`` holds them, on its one client.

No hidden retries: one attempt per call, short socket and connect timeouts. Failures become
``StoreUnavailable``; ``may_have_succeeded`` is False unless a write reached the socket. Retries,
time limits and the circuit breaker are ``keyserver.store.guarded``'s business. The client (one
server, or the master behind Sentinel; optional ``WAIT`` for replicas) is in ``client``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from keycore.channel import AuditEvent
from keyserver.errors import Conflict
from keyserver.models import (
    AUDIT_RETENTION_S,
    Account,
    CommandRecord,
    CommandStatus,
    Device,
    Invitation,
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    NonceClaim,
    Pairing,
    PairingResult,
    RefreshContext,
    RevocationEntry,
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store.redis import lua
from keyserver.store.redis.channel import RedisChannelRecords
from keyserver.store.redis.client import direct_client, sentinel_client
from keyserver.store.redis.hub import RedisHub
from keyserver.store.redis.keyspace import EXPIRY_SLACK, Keyspace
from keyserver.store.redis.keyspace import failures as _failures
from keyserver.store.redis.keyspace import unavailable as _unavailable
from keyserver.store.redis.ledger import RedisLedger
from keyserver.store.redis.records import fields_of as _fields
from keyserver.store.redis.records import flat as _flat
from keyserver.store.redis.records import from_values as _from_values
from keyserver.store.redis.records import present as _present
from keyserver.store.redis.records import record as _record
from keyserver.store.redis.records import text as _text
from keyserver.store.redis.shared_trips import SharedTrips

__all__ = ["EXPIRY_SLACK", "RedisStore"]

_Record = TypeVar("_Record")


class RedisStore:
    """The keyserver's state in Redis; one client and one connection pool per instance, shared
    by the parts it holds: ``ledger``, ``channel_records`` and ``hub`` (module doc)."""

    def __init__(self, client: Redis, prefix: str, *, sentinel: Sentinel | None = None) -> None:
        self._client = client
        self._sentinel = sentinel
        self._prefix = prefix
        self._key = Keyspace(prefix)
        self.ledger = RedisLedger(client, self._key)
        self.channel_records = RedisChannelRecords(client, self._key)
        self.hub = RedisHub(client, prefix)
        self._create_account = client.register_script(lua.CREATE_ACCOUNT)
        self._insert = client.register_script(lua.INSERT)
        self._compare_and_set = client.register_script(lua.COMPARE_AND_SET)
        self._set_owner = client.register_script(lua.SET_OWNER)
        self._try_pairing = client.register_script(lua.TRY_PAIRING)
        self._claim_nonce = client.register_script(lua.CLAIM_NONCE)
        self._refresh_contexts = SharedTrips(
            client, lua.REFRESH_CONTEXTS, keys=lua.REFRESH_KEYS, args=lua.REFRESH_ARGS
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "pk:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
        wait_replicas: int = 0,
        wait_timeout_s: float = 0.1,
    ) -> Self:
        """A store for ``url``; connections open on first use, so Redis may be down now.

        With ``wait_replicas`` a write is acknowledged once that many replicas have it
        (``keyserver.store.redis.client`` says why and what it costs).
        """
        client = direct_client(
            url,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
        )
        return cls(client, prefix)

    @classmethod
    async def connect_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        prefix: str = "pk:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
        wait_replicas: int = 0,
        wait_timeout_s: float = 0.1,
    ) -> Self:
        """A store on the master the Sentinels name for ``service_name``, following failovers:
        one client and one pool for the whole store, never one per call."""
        if not sentinels:
            raise ValueError("at least one Sentinel address is needed")
        client, sentinel = sentinel_client(
            sentinels,
            service_name,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
        )
        return cls(client, prefix, sentinel=sentinel)

    async def close(self) -> None:
        try:
            await self._client.aclose(close_connection_pool=True)
        finally:
            if self._sentinel is not None:
                await self._sentinel.aclose()

    async def _hash(self, cls: type[_Record], key: str, operation: str) -> _Record | None:
        with _failures(operation, write=False):
            raw = await self._client.hgetall(key)
        return _record(cls, raw)

    async def _put_expiring(
        self, key: str, record: object, expires_at: int, operation: str
    ) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=_fields(record))
        pipe.expire(key, EXPIRY_SLACK)
        pipe.expireat(key, expires_at + EXPIRY_SLACK, gt=True)
        with _failures(operation, write=True):
            await pipe.execute()

    async def _listing(self, cls: type[_Record], index: str, kind: str, op: str) -> list[_Record]:
        with _failures(op, write=False):
            ids = await self._client.zrange(index, 0, -1)
            pipe = self._client.pipeline(transaction=False)
            for record_id in ids:
                pipe.hgetall(self._key(kind, _text(record_id)))
            raws = await pipe.execute() if ids else []
        return [r for r in (_record(cls, raw) for raw in raws) if r is not None]

    async def ping(self) -> None:
        with _failures("ping", write=False):
            await self._client.ping()

    # accounts and sessions

    async def create_account(self, account: Account) -> None:
        keys = [self._key("account", account.account_id), self._key("email", account.email)]
        with _failures("create_account", write=True):
            created = await self._create_account(keys, [account.account_id, *_flat(account)])
        if not created:
            raise Conflict("an account with this id or e-mail address exists")

    async def account(self, account_id: str) -> Account | None:
        return await self._hash(Account, self._key("account", account_id), "account")

    async def account_by_email(self, email: str) -> Account | None:
        with _failures("account_by_email", write=False):
            account_id = await self._client.get(self._key("email", email))
        if account_id is None:
            return None
        return await self.account(_text(account_id))

    async def put_session(self, session: Session) -> None:
        key = self._key("session", session.token_hash.hex())
        await self._put_expiring(key, session, session.expires_at, "put_session")

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        found = await self._hash(Session, self._key("session", token_hash.hex()), "session")
        return found if found is not None and now < found.expires_at else None

    async def delete_session(self, token_hash: bytes) -> None:
        with _failures("delete_session", write=True):
            await self._client.delete(self._key("session", token_hash.hex()))

    # devices

    async def add_device(self, device: Device) -> None:
        keys = [self._key("device", device.device_id), self._key("devices", device.account_id)]
        with _failures("add_device", write=True):
            args = [device.created_at, device.device_id, *_flat(device)]
            added = await self._insert(keys, args)
        if not added:
            raise Conflict("a device with this id exists")

    async def device(self, device_id: str) -> Device | None:
        return await self._hash(Device, self._key("device", device_id), "device")

    async def devices_of(self, account_id: str) -> list[Device]:
        index = self._key("devices", account_id)
        return await self._listing(Device, index, "device", "devices_of")

    # single use and rate limits

    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        key = self._key("nonce", scope, nonce.hex())
        ttl = max(expires_at - now, 0) + EXPIRY_SLACK  # relative: immune to clock skew
        with _failures("claim_nonce", write=True):
            return bool(await self._claim_nonce([key], [now, expires_at, ttl]))

    async def refresh_context(
        self,
        token_hash: bytes,
        *,
        device_id: str | None,
        key_id: str | None,
        now: int,
        claim: NonceClaim | None = None,
    ) -> RefreshContext:
        # bytes throughout: redis-py passes them on as they are
        prefix = self._prefix
        flags = ("d" if device_id is not None else "") + ("k" if key_id is not None else "")
        nonce_key, public_key, expiry = f"{prefix}nonce", b"", " "
        if claim is not None:
            flags += "c"
            nonce_key = f"{prefix}nonce:{claim.scope}:{claim.nonce.hex()}"
            public_key = claim.public_key
            ttl = max(claim.expires_at - now, 0) + EXPIRY_SLACK  # as in claim_nonce
            expiry = f"{claim.expires_at} {ttl}"
        keys = [
            f"{prefix}session:{token_hash.hex()}".encode(),
            f"{prefix}device:{device_id or ''}".encode(),
            f"{prefix}key:{key_id or ''}".encode(),
            nonce_key.encode(),
        ]
        try:
            session, device, key, fresh = await self._refresh_contexts(
                keys, [f"{now} {flags} {expiry}".encode(), public_key]
            )
        except (RedisError, OSError) as exc:
            raise _unavailable("refresh_context", exc, write=claim is not None) from exc
        found = _from_values(Session, session)
        return RefreshContext(
            session=found if found is not None and now < found.expires_at else None,
            device=_from_values(Device, device),
            key=_from_values(KeyRecord, key),
            nonce_fresh=None if fresh < 0 else bool(fresh),
        )

    async def hit(self, key: str, *, now: int, window: int, limit: int) -> bool:
        start = now - now % window
        counter = self._key("hit", key, start)
        pipe = self._client.pipeline(transaction=True)
        pipe.incr(counter)
        pipe.expire(counter, start + window - now + EXPIRY_SLACK)
        with _failures("hit", write=True):
            count, _ = await pipe.execute()
        return int(count) <= limit

    # vehicles and pairing

    async def add_vehicle(self, vehicle: Vehicle) -> None:
        with _failures("add_vehicle", write=True):
            added = await self._insert(
                [self._key("vehicle", vehicle.vin)], [0, "", *_flat(vehicle)]
            )
        if not added:
            raise Conflict("a vehicle with this VIN exists")

    async def vehicle(self, vin: str) -> Vehicle | None:
        return await self._hash(Vehicle, self._key("vehicle", vin), "vehicle")

    async def set_owner(
        self, vin: str, *, owner_id: str | None, expected: str | None, now: int
    ) -> bool:
        keys = [self._key("vehicle", vin), self._key("owners", vin)]
        args: list[str | int] = [
            _present(owner_id), _present(expected), now, now - AUDIT_RETENTION_S
        ]  # fmt: skip
        with _failures("set_owner", write=True):
            return bool(await self._set_owner(keys, args))

    async def ownership(self, vin: str) -> list[Tenure]:
        with _failures("ownership", write=False):
            raw = await self._client.lrange(self._key("owners", vin), 0, -1)
        tenures = []
        for entry in raw:
            since, until, owner_id = _text(entry).split(":", 2)
            tenures.append(Tenure(owner_id, int(since), int(until) if until else None))
        return tenures

    async def put_pairing(self, pairing: Pairing) -> None:
        key = self._key("pairing", pairing.vin)
        await self._put_expiring(key, pairing, pairing.expires_at, "put_pairing")

    async def try_pairing(self, vin: str, code_hash: bytes, *, now: int) -> PairingResult:
        with _failures("try_pairing", write=True):
            result = await self._try_pairing([self._key("pairing", vin)], [code_hash, now])
        return PairingResult(_text(result))

    # keys and invitations

    async def put_key(self, key: KeyRecord) -> None:
        record = self._key("key", key.key_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(record)
        pipe.hset(record, mapping=_fields(key))
        pipe.zadd(self._key("keys", key.vin), {key.key_id: key.created_at})
        with _failures("put_key", write=True):
            await pipe.execute()

    async def key(self, key_id: str) -> KeyRecord | None:
        return await self._hash(KeyRecord, self._key("key", key_id), "key")

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        keys = await self._listing(KeyRecord, self._key("keys", vin), "key", "keys_of_vehicle")
        return [k for k in keys if k.vin == vin]  # a key replaced onto another vehicle moved

    async def set_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> bool:
        args = ["status", _present(status), *(_present(s) for s in expected)]
        with _failures("set_key_status", write=True):
            return bool(await self._compare_and_set([self._key("key", key_id)], args))

    async def put_invitation(self, invitation: Invitation) -> None:
        key = self._key("invitation", invitation.invitation_id)
        await self._put_expiring(key, invitation, invitation.expires_at, "put_invitation")

    async def take_invitation(self, invitation_id: str, *, now: int) -> Invitation | None:
        key = self._key("invitation", invitation_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.delete(key)
        with _failures("take_invitation", write=True):
            raw, _ = await pipe.execute()
        taken = _record(Invitation, raw)
        return taken if taken is not None and now < taken.expires_at else None

    # revocation ledger: RedisLedger's

    async def withdraw_keys(
        self,
        vin: str,
        keys: Sequence[KeyWithdrawal],
        status: KeyStatus,
        *,
        expected: Sequence[KeyStatus],
        before: int,
        until: int,
    ) -> tuple[int, list[str]]:
        return await self.ledger.withdraw_keys(
            vin, keys, status, expected=expected, before=before, until=until
        )

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        return await self.ledger.append_revocations(vin, entries)

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        return await self.ledger.renumber_revocations(vin, since=since, above=above)

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        return await self.ledger.revocations(vin, since=since)

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        return await self.ledger.prune_revocations(vin, before=before)

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        return await self.ledger.add_key(
            key, holder=holder, counted_until=counted_until, limit=limit, now=now
        )

    # remote commands and audit events: RedisChannelRecords'

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        return await self.channel_records.put_command(command)

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self.channel_records.command(command_id)

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
        return await self.channel_records.set_command_status(
            command_id, status, vin=vin, expected=expected, detail=detail, now=now
        )

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        return await self.channel_records.pending_commands(vin, now=now)

    async def add_audit_batch(
        self, vin: str, batch_id: str, events: Sequence[AuditEvent], *, now: int
    ) -> int:
        return await self.channel_records.add_audit_batch(vin, batch_id, events, now=now)

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        return await self.channel_records.audit_events(vin)
