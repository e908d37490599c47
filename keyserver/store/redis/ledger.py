"""The Redis store's revocation ledger and the holders it counts, one Lua script per write (the
rules are the Store contract's; the keys, ``revseq`` to ``livekey``, in the package doc)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.typing import EncodableT

from keyserver.models import (
    KeyAdded,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    RevocationEntry,
    RevocationKind,
)
from keyserver.store.redis import lua
from keyserver.store.redis.keyspace import Keyspace, failures
from keyserver.store.redis.records import fields_of, present, revocation_entry, text


class RedisLedger:
    """The ledger operations of ``RedisStore``, on its client and key names."""

    def __init__(self, client: Redis, keys: Keyspace) -> None:
        self._client = client
        self._keys = keys
        self._withdraw_keys = client.register_script(lua.WITHDRAW_KEYS)
        self._append_revocations = client.register_script(lua.APPEND_REVOCATIONS)
        self._renumber_revocations = client.register_script(lua.RENUMBER_REVOCATIONS)
        self._add_key = client.register_script(lua.ADD_KEY)
        self._prune_revocations = client.register_script(lua.PRUNE_REVOCATIONS)

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
        allowed = [present(s) for s in expected]
        args: list[str | bytes | int] = [
            present(status), before, until, RevocationKind.HOLDER.value, vin, len(allowed),
            *allowed, int(status is KeyStatus.REVOKED),
        ]  # fmt: skip
        keys_ = [*self._keys.ledger(vin), self._keys("holders", vin)]
        for k in records:
            args += [k.key_id, b"" if k.holder is None else k.holder]
            keys_ += [self._keys("key", k.key_id), self._keys("livekey", vin, k.device_id)]
        with failures("withdraw_keys", write=True):
            sequence, changed = await self._withdraw_keys(keys_, args)
        return int(sequence), [records[int(i) - 1].key_id for i in changed]

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        if not entries:
            with failures("append_revocations", write=False):
                return int(await self._client.get(self._keys.ledger(vin)[0]) or 0)
        args: list[bytes | str | int] = []
        for e in entries:
            args += [e.kind.value, e.subject, e.before, e.until]
        with failures("append_revocations", write=True):
            return int(await self._append_revocations(self._keys.ledger(vin), args))

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        with failures("renumber_revocations", write=True):
            return int(await self._renumber_revocations(self._keys.ledger(vin), [since, above]))

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        sequence, log = self._keys.ledger(vin)[:2]
        pipe = self._client.pipeline(transaction=True)
        pipe.get(sequence)
        pipe.zrangebyscore(log, f"({since}", "+inf")
        with failures("revocations", write=False):
            last, members = await pipe.execute()
        return int(last or 0), [revocation_entry(member) for member in members]

    async def prune_revocations(self, vin: str, *, before: int) -> int:
        with failures("prune_revocations", write=True):
            return int(await self._prune_revocations(self._keys.ledger(vin)[1:], [before]))

    async def add_key(
        self, key: KeyRecord, *, holder: bytes, counted_until: int, limit: int, now: int
    ) -> KeyAdded:
        keys = [
            *self._keys.ledger(key.vin),
            self._keys("holders", key.vin),
            self._keys("livekey", key.vin, key.device_id),
            self._keys("key", key.key_id),
            self._keys("keys", key.vin),
        ]
        args: list[EncodableT] = [
            holder, counted_until, limit, now, RevocationKind.HOLDER.value, key.key_id,
            key.created_at,
        ]  # fmt: skip
        for name, value in fields_of(key).items():
            args += [name, value]
        with failures("add_key", write=True):
            return KeyAdded(text(await self._add_key(keys, args)))
