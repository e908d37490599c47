"""The Redis store: the production adapter, each operation one transaction or one Lua script.

Key layout, all under the store's prefix ``P``::

    P account:{id}      hash    Account            P email:{email}     string  account id
    P session:{hex}     hash    Session (expires)  P device:{id}       hash    Device
    P devices:{acc}     zset    device ids by created_at
    P vehicle:{vin}     hash    Vehicle            P pairing:{vin}     hash    Pairing (expires)
    P owners:{vin}      list    ownership history, "since:until:owner_id" (until empty while open)
    P key:{id}          hash    KeyRecord          P keys:{vin}        zset    key ids by created_at
    P invitation:{id}   hash    Invitation (expires)
    P nonce:{scope}:{hex}       string  the nonce's expires_at (expires)
    P hit:{key}:{window start}  string  attempts in that window (expires)
    P revseq:{vin}      string  last sequence number; never deleted, so it never goes back
    P revlog:{vin}      zset    "{sequence}:" + CBOR entry, scored by sequence
    P revuntil:{vin}    zset    sequence numbers scored by the entry's ``until``
    P command:{id}      hash    CommandRecord (expires COMMAND_RETENTION_S after the command)
    P cmdkey:{account}:{idempotency key}  string  command id (expires with the command)
    P commands:{vin}    zset    command ids by expires_at
    P audit:{vin}       hash    seq -> audit event (expires AUDIT_RETENTION_S after the last batch)
    P car:{vin}         string  the instance the car is connected to (expires; redis_hub)
    P hub               pub/sub channel of the hub's notices between instances (redis_hub)

Records are hashes with one field per dataclass field (absent when None), so Lua can compare and
set a single field. Expiry only collects garbage: validity is always decided by comparing with
the caller's ``now``, and expiry is set so that clock skew cannot remove a record early.

The scripts are in ``keyserver.store.redis_lua``. The hot path, ``refresh_context`` (token
refresh), is one script for the session, device, key and nonce, and concurrent calls of it share
round trips (``keyserver.store.shared_trips``): redis-py's own cost per command outweighs it.

No hidden retries: one attempt per call, short socket and connect timeouts. Failures become
``StoreUnavailable``; ``may_have_succeeded`` is False unless a write reached the socket. Retries,
time limits and the circuit breaker are ``keyserver.store.guarded``'s business. The client (one
server, or the master behind Sentinel; optional ``WAIT`` for replicas) is in ``redis_client``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    BusyLoadingError,
    DataError,
    ExecAbortError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.typing import EncodableT

from keycore.channel import AuditEvent
from keyserver.errors import Conflict, StoreUnavailable
from keyserver.models import (
    AUDIT_RETENTION_S,
    COMMAND_RETENTION_S,
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
    RevocationKind,
    Session,
    Tenure,
    Vehicle,
)
from keyserver.store import redis_lua as lua
from keyserver.store.redis_client import NotSent, direct_client, sentinel_client, writing
from keyserver.store.redis_hub import RedisHub
from keyserver.store.redis_records import (
    fields_of as _fields,
)
from keyserver.store.redis_records import (
    flat as _flat,
)
from keyserver.store.redis_records import (
    from_values as _from_values,
)
from keyserver.store.redis_records import (
    present as _present,
)
from keyserver.store.redis_records import (
    record as _record,
)
from keyserver.store.redis_records import (
    revocation_entry as _entry,
)
from keyserver.store.redis_records import (
    text as _text,
)
from keyserver.store.shared_trips import SharedTrips

# Seconds a record outlives its expiry, and its least lifetime on Redis's clock: garbage
# collection must never run ahead of a caller whose clock is behind Redis's.
EXPIRY_SLACK = 60

_Record = TypeVar("_Record")


# the server refused the whole command: nothing was applied
_REFUSED = (NotSent, BusyLoadingError, ReadOnlyError, OutOfMemoryError, ExecAbortError, DataError)


@contextmanager
def _failures(operation: str, *, write: bool) -> Iterator[None]:
    try:
        if write:
            with writing():  # the pool WAITs for replicas when the store asks for it
                yield
        else:
            yield
    except (RedisError, OSError) as exc:
        raise _unavailable(operation, exc, write=write) from exc


def _unavailable(operation: str, exc: BaseException, *, write: bool) -> StoreUnavailable:
    sent = write and not isinstance(exc, _REFUSED)
    cause = type(exc.__cause__ if isinstance(exc, NotSent) else exc).__name__
    outcome = ("; may have been applied" if sent else "; not applied") if write else ""
    return StoreUnavailable(f"redis {operation} failed ({cause}){outcome}", may_have_succeeded=sent)


class RedisStore(RedisHub):
    """The keyserver's state in Redis; one client and one connection pool per instance. The
    channel hub's notices and car presence are ``RedisHub``'s (keyserver.store.redis_hub)."""

    def __init__(self, client: Redis, prefix: str, *, sentinel: Sentinel | None = None) -> None:
        self._client = client
        self._sentinel = sentinel
        self._prefix = prefix
        self._create_account = client.register_script(lua.CREATE_ACCOUNT)
        self._insert = client.register_script(lua.INSERT)
        self._compare_and_set = client.register_script(lua.COMPARE_AND_SET)
        self._set_owner = client.register_script(lua.SET_OWNER)
        self._try_pairing = client.register_script(lua.TRY_PAIRING)
        self._claim_nonce = client.register_script(lua.CLAIM_NONCE)
        self._refresh_contexts = SharedTrips(
            client, lua.REFRESH_CONTEXTS, keys=lua.REFRESH_KEYS, args=lua.REFRESH_ARGS
        )
        self._withdraw_keys = client.register_script(lua.WITHDRAW_KEYS)
        self._append_revocations = client.register_script(lua.APPEND_REVOCATIONS)
        self._renumber_revocations = client.register_script(lua.RENUMBER_REVOCATIONS)
        self._add_key = client.register_script(lua.ADD_KEY)
        self._prune_revocations = client.register_script(lua.PRUNE_REVOCATIONS)
        self._put_command = client.register_script(lua.PUT_COMMAND)
        self._set_command_status = client.register_script(lua.SET_COMMAND_STATUS)
        self._add_audit_batch = client.register_script(lua.ADD_AUDIT_BATCH)

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
        (``keyserver.store.redis_client`` says why and what it costs).
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

    def _key(self, kind: str, *parts: str | int) -> str:
        return ":".join((f"{self._prefix}{kind}", *map(str, parts)))

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

    # revocation ledger

    def _ledger(self, vin: str) -> list[str]:
        return [self._key(kind, vin) for kind in ("revseq", "revlog", "revuntil", "revsubj")]

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
        records = list(keys)
        allowed = [_present(s) for s in expected]
        args: list[str | bytes | int] = [
            _present(status), before, until, RevocationKind.HOLDER.value, vin, len(allowed),
            *allowed, int(status is KeyStatus.REVOKED),
        ]  # fmt: skip
        keys_ = [*self._ledger(vin), self._key("holders", vin)]
        for k in records:
            args += [k.key_id, b"" if k.holder is None else k.holder]
            keys_ += [self._key("key", k.key_id), self._key("livekey", vin, k.device_id)]
        with _failures("withdraw_keys", write=True):
            sequence, changed = await self._withdraw_keys(keys_, args)
        return int(sequence), [records[int(i) - 1].key_id for i in changed]

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        if not entries:
            with _failures("append_revocations", write=False):
                return int(await self._client.get(self._ledger(vin)[0]) or 0)
        args: list[bytes | str | int] = []
        for e in entries:
            args += [e.kind.value, e.subject, e.before, e.until]
        with _failures("append_revocations", write=True):
            return int(await self._append_revocations(self._ledger(vin), args))

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        with _failures("renumber_revocations", write=True):
            return int(await self._renumber_revocations(self._ledger(vin), [since, above]))

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        sequence, log = self._ledger(vin)[:2]
        pipe = self._client.pipeline(transaction=True)
        pipe.get(sequence)
        pipe.zrangebyscore(log, f"({since}", "+inf")
        with _failures("revocations", write=False):
            last, members = await pipe.execute()
        return int(last or 0), [_entry(member) for member in members]

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        with _failures("prune_revocations", write=True):
            return int(await self._prune_revocations(self._ledger(vin)[1:], [before]))

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        keys = [
            *self._ledger(key.vin),
            self._key("holders", key.vin),
            self._key("livekey", key.vin, key.device_id),
            self._key("key", key.key_id),
            self._key("keys", key.vin),
        ]
        args: list[EncodableT] = [
            holder, counted_until, limit, now, RevocationKind.HOLDER.value, key.key_id,
            key.created_at,
        ]  # fmt: skip
        for name, value in _fields(key).items():
            args += [name, value]
        with _failures("add_key", write=True):
            return KeyAdded(_text(await self._add_key(keys, args)))

    # remote commands and audit events

    async def put_command(self, command: CommandRecord) -> tuple[CommandRecord, bool]:
        keys = [
            self._key("command", command.command_id),
            self._key("cmdkey", command.account_id, command.idempotency_key),
            self._key("commands", command.vin),
        ]
        expire_at = command.expires_at + COMMAND_RETENTION_S + EXPIRY_SLACK
        prune_below = command.issued_at - COMMAND_RETENTION_S
        args = [command.command_id, expire_at, command.expires_at, prune_below, *_flat(command)]
        with _failures("put_command", write=True):
            stored = await self._put_command(keys, args)
        if stored is None:
            raise Conflict(f"command {command.command_id} already exists")
        if _text(stored) == command.command_id:
            return command, True
        existing = await self.command(_text(stored))
        if existing is None:  # it expired a moment ago, with its idempotency key
            raise StoreUnavailable("redis put_command: raced an expiry", may_have_succeeded=False)
        return existing, False

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self._hash(CommandRecord, self._key("command", command_id), "command")

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
        with _failures("set_command_status", write=True):
            changed = await self._set_command_status([self._key("command", command_id)], args)
        return bool(changed)

    async def pending_commands(self, vin: str, *, now: int) -> list[CommandRecord]:
        with _failures("pending_commands", write=False):
            ids = await self._client.zrangebyscore(self._key("commands", vin), f"({now}", "+inf")
            pipe = self._client.pipeline(transaction=False)
            for command_id in ids:
                pipe.hgetall(self._key("command", _text(command_id)))
            raws = await pipe.execute() if ids else []
        pending = (CommandStatus.QUEUED, CommandStatus.DELIVERED)
        found = [c for c in (_record(CommandRecord, raw) for raw in raws) if c is not None]
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
        with _failures("add_audit_batch", write=True):
            return int(await self._add_audit_batch([self._key("audit", vin)], args))

    async def audit_events(self, vin: str) -> list[AuditEvent]:
        with _failures("audit_events", write=False):
            raw = await self._client.hgetall(self._key("audit", vin))
        events = [AuditEvent(int(seq), _text(event)) for seq, event in raw.items()]
        return sorted(events, key=lambda e: e.seq)
